"""What the bridge needs of its model backends: the interface.

:class:`~bridge.backends.grpc_loop.GrpcLoop` implements it over gRPC (every call on
one asyncio loop); a fake in the tests implements it in Trio, so that
deadlines, admission and the supervisor run under Trio's autojump clock,
and the same contract tests run against both (tests/test_backend.py).
Errors are the bridge's own (:class:`~bridge.errors.PredictionError` and
its kinds), never a transport's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bridge._proto.v1 import predictor_pb2

from .protocol import ModelInfo, StreamItem

__all__ = ["CLEANUP_TIMEOUT", "Backend", "Call"]

#: The longest a cancelled call may take to end (its cleanup waits at most
#: this long for the backend's side to confirm).
CLEANUP_TIMEOUT = 5.0


class Call(Protocol):
    """One running ``Predict`` call. Read it one way: ``async for batch in
    call`` (lists of items; raises the call's error at the end), or
    :meth:`deliver` and :meth:`wait_end`."""

    @property
    def stopped(self) -> bool:
        """Whether a delivered call has ended (wait_end returns at once)."""
        ...

    def deliver(self, handle: Callable[[list[StreamItem]], None]) -> None:
        """From now on, call ``handle(batch)`` with each batch as it arrives
        (and now, with what has arrived). What it raises ends the call."""
        ...

    async def wait_end(self) -> None:
        """Wait until a delivered call ends: return when it succeeded, raise
        its error (or what the handler raised) when not."""
        ...

    def __aiter__(self) -> AsyncIterator[list[StreamItem]]: ...


class Backend(Protocol):
    """Every call to every model backend. The caller's Trio deadline is the
    call's deadline."""

    @property
    def active_calls(self) -> int:
        """Calls started and not yet ended."""
        ...

    def predict(
        self, target: str, request: predictor_pb2.PredictRequest
    ) -> AbstractAsyncContextManager[Call]:
        """Start a ``Predict`` call of *request* at *target*; leaving the
        block cancels it if it is running (the model sees the cancel)."""
        ...

    async def describe(self, target: str) -> ModelInfo:
        """What model the backend at *target* serves."""
        ...

    async def check_health(self, target: str) -> str:
        """Its ``grpc.health.v1`` status name (``SERVING``,
        ``NOT_SERVING``, ``UNKNOWN``), or ``UNAVAILABLE``."""
        ...
