"""The owner of every prediction's task.

Each prediction runs as a task in the supervisor's nursery (the app's
lifetime), so it outlives the HTTP request that created it, as on
Replicate. The task runs in a cancel scope the supervisor keeps by
prediction id: the run handle. Cancel, ``Cancel-After`` deadlines and
shutdown all go through it; the prediction record holds no handle.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import trio

from .predictions import Prediction

__all__ = ["Supervisor"]


class Supervisor:
    """Starts, cancels, drains and closes prediction tasks."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        #: The predictions whose tasks are alive, by id, with their run handles.
        self._scopes: dict[str, tuple[Prediction, trio.CancelScope]] = {}
        self._idle = trio.Event()
        self._closed = trio.Event()
        #: Why a task was cancelled, when it is to end as failed.
        self._errors: dict[str, str] = {}

    @property
    def active(self) -> int:
        """Prediction tasks alive (running or queued)."""
        return len(self._scopes)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def running(self) -> list[Prediction]:
        """The predictions whose tasks are alive."""
        return [prediction for prediction, _ in self._scopes.values()]

    def start(
        self,
        prediction: Prediction,
        run: Callable[[], Awaitable[object]],
        *,
        deadline: float = math.inf,
    ) -> None:
        """Run ``run()`` as *prediction*'s task, cancelled at *deadline*
        (Trio's clock) wherever it is then, or by :meth:`cancel`. *run*
        must record its own end and raise nothing (an exception here would
        cancel every other prediction)."""
        scope = trio.CancelScope(deadline=deadline)
        if self.closed:
            # Started by a create that was under way when close() came: it
            # ends at once, as those close() cancelled did.
            scope.cancel()
        self._scopes[prediction.id] = (prediction, scope)
        self._nursery.start_soon(self._supervise, prediction, scope, run)

    async def _supervise(
        self, prediction: Prediction, scope: trio.CancelScope, run: Callable[[], Awaitable[object]]
    ) -> None:
        try:
            with scope:
                await run()
        finally:
            del self._scopes[prediction.id]
            self._errors.pop(prediction.id, None)
            if not self._scopes:
                self._idle.set()
                self._idle = trio.Event()

    def cancel(self, prediction_id: str, error: str | None = None) -> bool:
        """Cancel the task of the prediction *prediction_id* (to end as
        failed with *error*, if given: see :meth:`error`); False if it has
        none here (it ended, or another process runs it)."""
        running = self._scopes.get(prediction_id)
        if running is None:
            return False
        if error is not None:
            self._errors.setdefault(prediction_id, error)
        running[1].cancel()
        return True

    def error(self, prediction_id: str) -> str | None:
        """The error a task was cancelled with, if any."""
        return self._errors.get(prediction_id)

    async def drain(self, seconds: float) -> None:
        """Wait up to *seconds* for every task to end."""
        with trio.move_on_after(seconds):
            while self._scopes:
                await self._idle.wait()

    def close(self) -> None:
        """Cancel every task; from now on :attr:`closed` is true (the tasks
        record why they ended accordingly)."""
        self._closed.set()
        for _, scope in self._scopes.values():
            scope.cancel()

    async def wait_closed(self) -> None:
        await self._closed.wait()
