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
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = [
    "CLEANUP_TIMEOUT",
    "Backend",
    "Call",
    "LogLine",
    "Metadata",
    "MetricsUpdate",
    "ModelInfo",
    "OutputChunks",
    "PredictInput",
    "Started",
    "StreamItem",
]

#: The longest a cancelled call may take to end (its cleanup waits at most
#: this long for the backend's side to confirm).
CLEANUP_TIMEOUT = 5.0


#: gRPC metadata: (key, value) pairs, keys lowercase, values text.
Metadata = tuple[tuple[str, str], ...]


class PredictInput(NamedTuple):
    """What a ``Predict`` call asks: a prediction and its (valid) input,
    as the JSON the prediction keeps (decoded by the backend, off the
    event loop if it is large: see :attr:`size`)."""

    id: str
    input_json: bytes
    #: gRPC metadata sent with the call: the model's own, then the
    #: request headers it forwards (lowercase names).
    metadata: Metadata = ()

    @property
    def size(self) -> int:
        """Bytes of the input: whether decoding it is worth a thread."""
        return len(self.input_json)


@dataclass(frozen=True)
class Started:
    """The backend accepted the call and started predicting."""


@dataclass(frozen=True)
class OutputChunks:
    """One or more output chunks: ``str`` for text, any JSON value otherwise."""

    chunks: list[Any]


@dataclass(frozen=True)
class LogLine:
    line: str


@dataclass(frozen=True)
class MetricsUpdate:
    values: dict[str, float]


StreamItem = Started | OutputChunks | LogLine | MetricsUpdate


@dataclass(frozen=True)
class ModelInfo:
    """What ``Describe`` says about a model."""

    name: str
    version: str
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] = field(default_factory=dict)
    #: Predictions the backend runs at once; 0: not said (no limit).
    concurrency: int = 0
    #: Why the model's setup failed, if it did (it then serves nothing).
    setup_error: str = ""


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

    def predict(self, target: str, asked: PredictInput) -> AbstractAsyncContextManager[Call]:
        """Start a ``Predict`` call of *asked* at *target* (encoding it as
        the backend's wire has it); leaving the block cancels it if it is
        running (the model sees the cancel)."""
        ...

    async def describe(self, target: str, metadata: Metadata = ()) -> ModelInfo:
        """What model the backend at *target* serves (*metadata*: the
        model's, sent with the call)."""
        ...

    async def check_health(self, target: str, metadata: Metadata = ()) -> str:
        """Its ``grpc.health.v1`` status name (``SERVING``,
        ``NOT_SERVING``, ``UNKNOWN``), or ``UNAVAILABLE``."""
        ...

    def lost_connections(self, target: str) -> int:
        """How many times the connection to *target* was lost so far (its
        process restarted, say): when this changes, the backend may
        describe itself differently."""
        ...
