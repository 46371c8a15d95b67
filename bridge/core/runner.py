"""A prediction's run loop: from the backend's messages to its event log.

:func:`run` is what a prediction's task does once it has a running slot:
call the backend (retrying one that cannot be reached, within
``start_timeout_seconds``), apply the deadlines and the output cap, and
append what arrives to the prediction, a batch at a time: the messages
are handed over in the wake-up that brings them (no hop through the
prediction's task), and the outputs among them become one append, which
wakes the prediction's readers once. Errors are raised, never recorded
here: the task that owns the prediction (:mod:`bridge.core.service`) records how
it ended, once.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from ..backends.interface import (
    Backend,
    LogLine,
    MetricsUpdate,
    ModelInfo,
    OutputChunks,
    PredictInput,
    Started,
    StreamItem,
)
from ..backoff import delays
from ..config import ModelSettings
from ..errors import (
    BackendLoading,
    BackendProtocolError,
    BackendSetupFailed,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
)
from ..validation import validate_input
from .events import EVENT_COST, OutputBatch, log_cost
from .models import ModelEntry
from .observer import Observer
from .predictions import Prediction, clock
from .store import PredictionStore

#: The most metrics a model may report for one prediction, and the longest
#: name of one: metrics are kept with a prediction's metadata (7 days).
MAX_METRICS = 64
MAX_METRIC_NAME = 64

__all__ = ["run"]


Describe = Callable[[ModelEntry], Awaitable[ModelInfo]]
#: Runs work that handles so many bytes (``offload(size, work)``), in a
#: worker thread if that is large (see :meth:`bridge.core.service.Bridge.offload`).
Offload = Callable[[int, Callable[[], Any]], Awaitable[Any]]


async def _inline(size: int, work: Callable[[], Any]) -> Any:
    return work()


def _check_input(schema: dict[str, Any], prediction: Prediction) -> None:
    validate_input(schema, prediction.input)


async def run(
    prediction: Prediction,
    entry: ModelEntry,
    *,
    describe: Describe,
    observer: Observer,
    store: PredictionStore,
    max_output_bytes: int,
    validated: bool,
    offload: Offload = _inline,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    """Run *prediction* under its total deadline (also the gRPC deadline);
    what it appends is charged to *store*, where *max_output_bytes* is
    the server's cap, unless the model has its own. Its input is checked
    (if not *validated* yet) through *offload*; the backend encodes it,
    and sends *metadata* with the call."""
    total = entry.settings.total_seconds
    sink = _Sink(prediction, observer, store, entry.settings.max_output_bytes or max_output_bytes)
    expired = False
    with trio.move_on_after(total or math.inf) as scope:
        try:
            await _start(prediction, entry, describe, sink, validated, offload, metadata)
        except BackendTimeout:
            if not total:
                raise
            expired = True  # the gRPC side of the same deadline
    if expired or scope.cancelled_caught:
        raise DeadlineExceeded(
            f"deadline exceeded: the prediction ran longer than total_seconds ({total:g} s)"
        )


async def _start(
    prediction: Prediction,
    entry: ModelEntry,
    describe: Describe,
    sink: _Sink,
    validated: bool,
    offload: Offload,
    metadata: tuple[tuple[str, str], ...],
) -> None:
    """Call the backend, retrying one that cannot be reached until the
    model's start_timeout_seconds; once it started, no retry."""
    size = prediction.input_size
    give_up_at = trio.current_time() + entry.settings.start_timeout_seconds
    loaded_by = trio.current_time() + entry.settings.load_timeout_seconds
    waits = delays(0.1, 1.0)
    # Why the backend could not be reached last time, if it said: a better
    # reason to give up with than the timeout (a TLS handshake that fails,
    # say).
    unavailable: BackendUnavailable | None = None
    while True:
        try:
            if not validated:
                with trio.move_on_at(give_up_at):
                    await describe(entry)
                info = entry.info
                if info is None:
                    if unavailable is not None:
                        raise _with_hint(unavailable, entry)
                    raise BackendUnavailable("model backend unavailable: Describe timed out")
                await offload(size, partial(_check_input, info.input_schema, prediction))
                prediction.version = prediction.version or info.version
                validated = True
            asked = PredictInput(prediction.id, prediction.input_json, metadata)
            await _stream(prediction, entry, sink, asked)
            return
        except BackendUnavailable as exc:
            # A model still loading is waited for longer than one that
            # cannot be reached; either way the prediction stays starting.
            loading = isinstance(exc, BackendLoading)
            left = (loaded_by if loading else give_up_at) - trio.current_time()
            if prediction.started_at is not None:
                raise
            if isinstance(exc, BackendSetupFailed) and not entry.any_up():
                raise  # no other target to try: why, as its backend said
            if left <= 0:
                if loading:
                    seconds = entry.settings.load_timeout_seconds
                    raise BackendUnavailable(
                        f"{exc}: still loading after load_timeout_seconds ({seconds:g} s)"
                    ) from exc
                raise
            unavailable = exc
        await trio.sleep(min(next(waits), left))


def _with_hint(error: BackendUnavailable, entry: ModelEntry) -> BackendUnavailable:
    """*error*, with what to check if the backend hung up on the connection
    before it could say anything: the usual cause is TLS on one side only."""
    if not str(error).endswith("Socket closed"):
        return error
    settings = entry.settings
    if not settings.tls:
        hint = "if the backend serves TLS, set tls = true for this model"
    elif settings.client_cert is None:
        hint = "if the backend asks for a client certificate, set client_cert and client_key"
    else:
        return error
    return BackendUnavailable(f"{error} ({hint})")


async def _stream(
    prediction: Prediction,
    entry: ModelEntry,
    sink: _Sink,
    asked: PredictInput,
) -> None:
    # The target with the fewest calls in flight (see ModelEntry.take_target).
    target = entry.take_target()
    try:
        await _call(prediction, entry.backend, sink, target, asked, entry.settings)
    except BackendUnavailable as exc:
        # Taken out at once: the retry goes to another, if there is one.
        refusing = isinstance(exc, (BackendLoading, BackendSetupFailed))
        entry.mark(target, "NOT_SERVING" if refusing else "UNAVAILABLE")
        raise
    finally:
        entry.give_back(target)


async def _call(
    prediction: Prediction,
    backend: Backend,
    sink: _Sink,
    target: str,
    asked: PredictInput,
    config: ModelSettings,
) -> None:
    first, idle = config.first_output_seconds or math.inf, config.idle_seconds or math.inf
    async with backend.predict(target, asked) as stream:
        # The messages go to the sink in the wake-up that brings them (no
        # hop through this task per message); this task waits for the end.
        sink.arm(first, idle)
        stream.deliver(sink.take)
        while True:
            with trio.CancelScope(deadline=sink.deadline()) as sink.waited:
                await stream.wait_end()
            if not sink.waited.cancelled_caught:
                break
            # Past the deadline, unless the end came in the same moment (the
            # call's own outcome wins: the next wait_end returns it at once).
            if trio.current_time() >= sink.deadline() and not stream.stopped:
                raise sink.overdue()
    if not prediction.done:  # else its store ended it meanwhile
        prediction.succeed()


class _Sink:
    """Where a prediction's output and logs go: charged to the retention
    ledger (which may refuse them), then appended and observed."""

    def __init__(
        self, prediction: Prediction, observer: Observer, store: PredictionStore, cap: int
    ) -> None:
        self.prediction = prediction
        self.observer = observer
        self.store = store
        self.cap = cap
        # The deadlines between messages: first_output_seconds until the
        # first output, idle_seconds after each batch once there was
        # output, from when the last batch arrived (Trio's clock).
        self.first = self.idle = math.inf
        self.last_batch_at = 0.0
        #: The scope the owner waits in, under deadline().
        self.waited: trio.CancelScope | None = None

    def arm(self, first: float, idle: float) -> None:
        self.first, self.idle = first, idle
        self.last_batch_at = trio.current_time()

    def deadline(self) -> float:
        return self.last_batch_at + (self.idle if self.prediction.output_count else self.first)

    def overdue(self) -> DeadlineExceeded:
        """The error for a deadline() that passed."""
        if self.prediction.output_count:
            name, seconds, what = "idle_seconds", self.idle, "between outputs"
        else:
            name, seconds, what = "first_output_seconds", self.first, "before the first output"
        return DeadlineExceeded(f"deadline exceeded: no output for {name} ({seconds:g} s) {what}")

    def take(self, batch: list[StreamItem]) -> None:
        """One batch of the backend's messages; consecutive outputs are
        appended as one. The owner's deadline is brought forward here if
        it must be (idle_seconds shorter than first_output_seconds), never
        moved on: once it passes, the owner moves it on to what the last
        batch allows (one deadline update per idle period, not per batch)."""
        self.last_batch_at = trio.current_time()
        prediction = self.prediction
        if prediction.done:  # its store ended it (its cancel is on its way)
            return
        chunks: list[Any] = []
        try:
            for item in batch:
                if isinstance(item, OutputChunks):
                    chunks += item.chunks
                    continue
                if chunks:
                    self.output(chunks)
                    chunks = []
                if isinstance(item, LogLine):
                    self.log(item.line)
                elif isinstance(item, MetricsUpdate):
                    self.metrics(item.values)
                elif isinstance(item, Started) and not prediction.started_at:
                    prediction.start()
            if chunks:
                self.output(chunks)
        finally:
            # Once per batch, even one cut short (over the cap, say).
            self.store.changed(prediction)
        waited = self.waited
        if waited is not None and waited.deadline > self.deadline():
            waited.deadline = self.deadline()

    def output(self, chunks: list[Any]) -> None:
        prediction = self.prediction
        batch = OutputBatch(chunks)
        self.store.charge(prediction, batch.cost, self.cap)
        now = clock()
        last = prediction.last_output_clock
        prediction.add_output(batch)
        prediction.last_output_clock = now
        self.observer.output(prediction, batch.count, None if last is None else now - last)

    def log(self, line: str) -> None:
        self.store.charge(self.prediction, log_cost(line), self.cap)
        self.prediction.add_log(line)

    def metrics(self, values: dict[str, float]) -> None:
        """Keep the model's metrics: new names are charged like output, and
        at most :data:`MAX_METRICS` names of at most
        :data:`MAX_METRIC_NAME` characters are kept (they outlive the data,
        with the prediction's metadata)."""
        prediction = self.prediction
        new = [name for name in values if name not in prediction.metrics]
        if any(len(name) > MAX_METRIC_NAME for name in new):
            raise BackendProtocolError(
                f"model backend sent a metric name longer than {MAX_METRIC_NAME} characters"
            )
        if len(prediction.metrics) + len(new) > MAX_METRICS:
            raise BackendProtocolError(f"model backend sent more than {MAX_METRICS} metrics")
        cost = sum(len(n) + EVENT_COST for n in new)
        self.store.charge(prediction, cost, self.cap)
        prediction.add_metrics(values, cost)
