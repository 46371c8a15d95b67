"""The owner of every prediction's task, and how a stopped one ends.

Each prediction runs as a task in the supervisor's nursery (the app's
lifetime), so it outlives the HTTP request that created it, as on
Replicate. The task runs in a cancel scope the supervisor keeps by
prediction id, the run handle, with the reason it was stopped for; the
prediction record holds no handle.

How a prediction is stopped
---------------------------

Six things stop a prediction before it ends by itself, and each goes
through its run handle with a reason (:data:`Reason`):

* a cancel through the API (the cancel route):
  :meth:`bridge.core.service.Bridge.cancel_and_wait`, ``Canceled``;
* the request that owns it going away (the streaming create, OpenAI's
  routes: :func:`bridge._compat.quart_trio.when_request_ends`), ``Canceled``;
* its ``Cancel-After`` deadline, the handle's deadline: ``Canceled``;
* another bridge sharing the store asking (its command, served by
  :meth:`bridge.core.store.PredictionStore.serve_cancels`), ``Canceled``,
  or the store failing it (``Failed``);
* the store letting go of it (a lost lease, a write Redis refused):
  ``Canceled`` here, and the store's own ending replaces what the task
  records (:meth:`bridge.core.events.HeldEventLog.replace_tail`);
* shutdown (:meth:`Supervisor.close`): ``Shutdown``.

A handle keeps the strongest reason it was given: ``Shutdown`` over
``Failed`` over ``Canceled``, and of two failures the first. Stopping only
asks: the task, the prediction's only writer, then cancels the gRPC call
(the backend sees CANCELLED), and as it leaves records the end with
:func:`end_stopped`, the one place a reason becomes the record's
transition (canceled, or failed with a detail) and so its ``done``
reason. A task that ended by itself records its own end, whatever was
asked meanwhile. Whoever waits for the end (a cancel through the API)
waits at most :data:`STOP_SECONDS`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..backends.interface import CLEANUP_TIMEOUT
from .predictions import Prediction

__all__ = [
    "CANCELED",
    "SHUTDOWN",
    "SHUTDOWN_ERROR",
    "STOP_SECONDS",
    "Canceled",
    "Failed",
    "Reason",
    "Shutdown",
    "Supervisor",
    "end_stopped",
]

#: A stopped prediction's error when the bridge shut down.
SHUTDOWN_ERROR = "the bridge shut down before the prediction finished; retry it"

#: The longest a stopped task takes to record its end: cancelling its gRPC
#: call is confirmed within CLEANUP_TIMEOUT, and a second more covers the
#: rest (its store's bookkeeping).
STOP_SECONDS = CLEANUP_TIMEOUT + 1


@dataclass(frozen=True)
class Canceled:
    """Asked to stop: by its creator, its request going, its deadline."""


@dataclass(frozen=True)
class Failed:
    """To end as failed, with *detail* as its error."""

    detail: str


@dataclass(frozen=True)
class Shutdown:
    """The bridge is shutting down."""


Reason = Canceled | Failed | Shutdown
CANCELED = Canceled()
SHUTDOWN = Shutdown()
_RANK = {Canceled: 0, Failed: 1, Shutdown: 2}


def end_stopped(prediction: Prediction, reason: Reason) -> None:
    """Record the end of *prediction*, stopped for *reason*."""
    match reason:
        case Failed(detail):
            prediction.fail(detail)
        case Shutdown():
            prediction.fail(SHUTDOWN_ERROR)
        case _:
            prediction.cancel()


class _Handle:
    """A running prediction's cancel scope, and why it was stopped."""

    __slots__ = ("prediction", "reason", "scope")

    def __init__(self, prediction: Prediction, scope: trio.CancelScope) -> None:
        self.prediction = prediction
        self.scope = scope
        self.reason: Reason = CANCELED  # what a deadline, which gives none, means

    def stop(self, reason: Reason) -> None:
        if _RANK[type(reason)] > _RANK[type(self.reason)]:
            self.reason = reason
        self.scope.cancel()


class Supervisor:
    """Starts, stops, drains and closes prediction tasks."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        #: The run handles of the predictions whose tasks are alive, by id.
        self._handles: dict[str, _Handle] = {}
        self._idle = trio.Event()
        self._closed = trio.Event()

    @property
    def active(self) -> int:
        """Prediction tasks alive (running or queued)."""
        return len(self._handles)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def running(self) -> list[Prediction]:
        """The predictions whose tasks are alive."""
        return [handle.prediction for handle in self._handles.values()]

    def start(
        self,
        prediction: Prediction,
        run: Callable[[], Awaitable[object]],
        *,
        deadline: float = math.inf,
    ) -> None:
        """Run ``run()`` as *prediction*'s task, stopped at *deadline*
        (Trio's clock) wherever it is then, or by :meth:`cancel`. *run*
        must record its own end and raise nothing (an exception here would
        cancel every other prediction)."""
        handle = _Handle(prediction, trio.CancelScope(deadline=deadline))
        if self.closed:
            # Started by a create that was under way when close() came: it
            # ends at once, as those close() stopped did.
            handle.stop(SHUTDOWN)
        self._handles[prediction.id] = handle
        self._nursery.start_soon(self._supervise, handle, run)

    async def _supervise(self, handle: _Handle, run: Callable[[], Awaitable[object]]) -> None:
        try:
            with handle.scope:
                await run()
        finally:
            del self._handles[handle.prediction.id]
            if not self._handles:
                self._idle.set()
                self._idle = trio.Event()

    def cancel(self, prediction_id: str, reason: Reason = CANCELED) -> bool:
        """Stop the task of the prediction *prediction_id* for *reason*;
        False if it has none here (it ended, or another process runs it)."""
        handle = self._handles.get(prediction_id)
        if handle is None:
            return False
        handle.stop(reason)
        return True

    def reason(self, prediction_id: str) -> Reason:
        """Why the task of *prediction_id* was stopped (``Canceled`` if it
        was not, or by its deadline)."""
        handle = self._handles.get(prediction_id)
        return CANCELED if handle is None else handle.reason

    async def drain(self, seconds: float) -> None:
        """Wait up to *seconds* for every task to end."""
        with trio.move_on_after(seconds):
            while self._handles:
                await self._idle.wait()

    def close(self) -> None:
        """Stop every task, for ``Shutdown``; from now on :attr:`closed` is
        true (and a task started now stops at once)."""
        self._closed.set()
        for handle in self._handles.values():
            handle.stop(SHUTDOWN)

    async def wait_closed(self) -> None:
        await self._closed.wait()
