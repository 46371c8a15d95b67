"""Admission control: how many predictions run at once, and who waits.

A prediction needs a slot under the global limit and under its model's
limit. One that cannot start at once waits in a single FIFO queue (a model
at its own limit does not hold up another model behind it); when the queue
is full, a create is refused with :class:`Overloaded` (429) before anything
starts. All of it is plain bookkeeping on the Trio thread: no locks.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import trio

from ..errors import Overloaded

__all__ = ["Admission", "Ticket"]


class Ticket:
    """One prediction's place: running, or waiting for :meth:`wait`."""

    def __init__(self, admission: Admission, model: str, limit: Callable[[], float]) -> None:
        self._admission = admission
        self.model = model
        #: The model's limit, asked each time (its backend may say it later).
        self.limit = limit
        self.running = False
        self.released = False
        self._admitted = trio.Event()

    async def wait(self) -> None:
        """Return once this prediction may run."""
        await self._admitted.wait()

    def _admit(self) -> None:
        self.running = True
        self._admitted.set()

    def release(self) -> None:
        """Give the slot (or the place in the queue) back; idempotent."""
        if not self.released:
            self.released = True
            self._admission._release(self)


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self.max_running = max_running
        self.max_queued = max_queued
        self.running = 0
        self._running_by_model: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[Ticket] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def admit(self, model: str, limit: Callable[[], float] = lambda: math.inf) -> Ticket:
        """A ticket that runs now or waits in the queue; raises
        :class:`Overloaded` if it can do neither."""
        ticket = Ticket(self, model, limit)
        if self._can_run(ticket):
            self._start(ticket)
        elif len(self._queue) < self.max_queued:
            self._queue.append(ticket)
        else:
            raise Overloaded(
                f"{self.running} predictions running and {len(self._queue)} waiting; "
                "try again later"
            )
        return ticket

    def _can_run(self, ticket: Ticket) -> bool:
        return (
            self.running < self.max_running
            and self._running_by_model[ticket.model] < ticket.limit()
        )

    def _start(self, ticket: Ticket) -> None:
        self.running += 1
        self._running_by_model[ticket.model] += 1
        ticket._admit()

    def _release(self, ticket: Ticket) -> None:
        if not ticket.running:
            self._queue.remove(ticket)
            return
        self.running -= 1
        self._running_by_model[ticket.model] -= 1
        for waiting in list(self._queue):  # first come, first served
            if self._can_run(waiting):
                self._queue.remove(waiting)
                self._start(waiting)
