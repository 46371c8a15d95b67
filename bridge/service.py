"""The bridge's core: models, and the registry of predictions, each running
as a Trio task (what the task does is :mod:`bridge.runner`).

:class:`Bridge` owns every prediction. Each runs as a task in the nursery
the bridge is given (app lifetime, see :func:`bridge.server.serve`), so a
prediction outlives the HTTP request that created it, as on Replicate. A
task records its own failure on its prediction and never lets an exception
escape into the shared nursery, where it would cancel every other
prediction.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
import trio

from . import protocol, runner, strictjson
from .admission import Admission, Ticket
from .config import Settings
from .errors import (
    BackendTimeout,
    BackendUnavailable,
    BridgeError,
    NotFound,
    PredictionError,
    ShuttingDown,
)
from .events import EventLog, MemoryEventLog
from .grpc_loop import CLEANUP_TIMEOUT, GrpcLoop
from .models import ModelEntry
from .predictions import Prediction
from .retention import Retention
from .validation import validate_input, validate_stream, validate_webhook
from .webhooks import WebhookPolicy, WebhookSender

__all__ = ["INLINE_BYTES", "Bridge", "Observer", "Page"]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: A list cursor: ``b<seq>`` (older than that) or ``a<seq>`` (newer).
_CURSOR = re.compile(r"([ab])([0-9]{1,18})")

SHUTDOWN_ERROR = "the bridge shut down before the prediction finished; retry it"


class Observer:
    """What the bridge tells its metrics about predictions (no-ops here)."""

    def admitted(self, prediction: Prediction, waited: float) -> None:
        """*prediction* got a slot after *waited* seconds in the queue."""

    def output(self, prediction: Prediction, chunks: int, gap: float | None) -> None:
        """*chunks* arrived, *gap* seconds after the previous ones (None: first)."""

    def finished(self, prediction: Prediction) -> None:
        """*prediction*'s task has ended; its status is final."""


class Page:
    """One page of a listing: its results, encoded, and the cursors around it."""

    def __init__(self, results: list[bytes], next: str | None, previous: str | None) -> None:
        self.results = results
        self.next = next
        self.previous = previous


#: Work on a request or a prediction larger than this (parsing and
#: validating a body, encoding a prediction) runs in a worker thread, so
#: it never stalls the event loop for other requests; smaller work is
#: cheaper done at once.
INLINE_BYTES = 64 * 1024
#: Worker threads doing such work at once; more wait their turn. One: a
#: thread that computes holds the GIL, and every other thread it makes
#: wait (the event loop, the gRPC loop) waits up to the switch interval
#: (5 ms) each time; two made /health slower, not the work faster.
BIG_WORK_THREADS = 1


class Bridge:
    """Creates, runs and finds predictions."""

    def __init__(
        self,
        settings: Settings,
        grpc_loop: GrpcLoop,
        nursery: trio.Nursery,
        webhooks: WebhookSender | None = None,
        webhook_policy: WebhookPolicy | None = None,
        new_log: Callable[[], EventLog] = MemoryEventLog,
    ) -> None:
        self.settings = settings
        #: Makes each prediction's event log.
        self.new_log = new_log
        self.grpc = grpc_loop
        self.webhooks = webhooks
        self.webhook_policy = webhook_policy or WebhookPolicy()
        self._nursery = nursery
        self.models = {name: ModelEntry(m) for name, m in settings.models.items()}
        self.predictions: dict[str, Prediction] = {}
        self._seq = itertools.count(1)
        self._webhook_scopes: set[trio.CancelScope] = set()
        self.retention = Retention(
            self.predictions,
            max_bytes=settings.max_retained_bytes,
            seconds=settings.retention_seconds,
            count=settings.retention_count,
            metadata_seconds=settings.metadata_retention_seconds,
            metadata_count=settings.metadata_retention_count,
            retry_after=settings.retry_after_seconds,
        )
        self.admission = Admission(settings.max_running, settings.max_queued)
        #: The predictions whose tasks are alive (running or queued).
        self._running: set[Prediction] = set()
        self._closed = trio.Event()
        self._idle = trio.Event()
        #: When this bridge started: what deployments report as their
        #: release's creation (their configuration is this process's).
        self.started_at = time.time()
        self.observer = Observer()
        self._big_work = trio.CapacityLimiter(BIG_WORK_THREADS)
        self.draining = False
        #: Where the bridge is reached, for URLs outside any request
        #: (webhooks); set by serve() once it knows its port.
        self.base_url = settings.public_url or f"http://{settings.host}:{settings.port}"

    @property
    def active(self) -> int:
        """Prediction tasks alive (running or queued)."""
        return len(self._running)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (the bridge is shutting down)."""
        return self._closed.is_set()

    async def offload(self, size: int, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)``: at once if *size* (the bytes it handles) is at
        most :data:`INLINE_BYTES`, else in a worker thread (at most
        :data:`BIG_WORK_THREADS` at once). *work* must touch nothing the
        event loop changes meanwhile."""
        if size <= INLINE_BYTES:
            return work(*args)
        return await trio.to_thread.run_sync(work, *args, limiter=self._big_work)

    async def encode(self, prediction: Prediction, base_url: str, **replace: Any) -> bytes:
        """*prediction* as Replicate's JSON (with *replace*'s fields
        replaced), encoded; a large one in a worker thread."""
        build = prediction.json_later(base_url)
        return await self.offload(prediction.kept_bytes, _encode, build, replace)

    # -- models ----------------------------------------------------------

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"model {name} is not served here") from None

    def deployment(self, name: str) -> ModelEntry:
        """The model a configured deployment serves."""
        try:
            return self.models[self.settings.deployments[name].model]
        except KeyError:
            raise NotFound(f"deployment {name} is not configured here") from None

    async def describe(self, entry: ModelEntry) -> protocol.ModelInfo:
        """Ask the model's backend what it is (and remember the answer).

        Raises :class:`PredictionError` if the backend cannot say.
        """
        info = await self.grpc.describe(entry.next_target())
        if info.name and info.name != entry.name:
            log.warning("backend of %s says it serves %s", entry.name, info.name)
        entry.info = info
        return info

    async def try_describe(self, entry: ModelEntry) -> protocol.ModelInfo | None:
        """Describe within the configured timeout; None if the backend is
        away (unreachable or slow). A backend that answers wrongly (a schema
        that is not JSON, no bridge.v1, a Describe that raised) raises its
        :class:`PredictionError` (502)."""
        if entry.info is not None:
            return entry.info
        with trio.move_on_after(self.settings.describe_timeout_seconds):
            try:
                return await self.describe(entry)
            except (BackendUnavailable, BackendTimeout) as exc:
                log.info("cannot describe %s yet: %s", entry.name, exc)
        return None

    async def known_info(self, entry: ModelEntry) -> protocol.ModelInfo | None:
        """:meth:`try_describe`, with a backend that answers wrongly logged
        and taken as away: for listings, which one bad backend must not
        break."""
        try:
            return await self.try_describe(entry)
        except PredictionError as exc:
            log.warning("cannot describe %s: %s", entry.name, exc)
            return None

    async def resolve_version(self, ref: str) -> tuple[ModelEntry, str | None]:
        """The model and version id for a ``version`` field: a version id,
        ``owner/name:id`` or ``owner/name``."""
        name, colon, version = ref.partition(":")
        if "/" in name:
            entry = self.model(name)
            if colon:
                info = await self.try_describe(entry)
                if info is not None and info.version != version:
                    raise NotFound(f"version {version} of {entry.name} is not served here")
            return entry, version or None
        for entry in self.models.values():
            info = await self.known_info(entry)
            if info is not None and info.version == ref:
                return entry, ref
        raise NotFound(f"version {ref} is not served here")

    # -- predictions -----------------------------------------------------

    async def create(
        self,
        entry: ModelEntry,
        input: Any,
        *,
        version: str | None = None,
        webhook: Any = None,
        webhook_events_filter: Any = None,
        stream: Any = None,
        cancel_after: float | None = None,
        owner: str | None = None,
        input_size: int = 0,
        base_url: str | None = None,
    ) -> Prediction:
        """Validate *input* (and the webhook, and *stream*) and start a
        prediction of *entry*; it is cancelled *cancel_after* seconds from
        now wherever it is then, queued or running. An input of more than
        :data:`INLINE_BYTES` (*input_size*: the body's bytes) is checked in
        a worker thread. Its webhooks carry URLs under *base_url* (where the
        creating request reached the bridge; else :attr:`base_url`).

        If the backend cannot describe the model right now, the prediction is
        still created; it validates and fails (or runs) once the backend
        answers, so a backend that is briefly away costs no request.
        """
        if self.draining:
            raise ShuttingDown(
                "the bridge is shutting down; retry the prediction",
                self.settings.retry_after_seconds,
            )
        events = validate_webhook(webhook, webhook_events_filter)
        if webhook is not None:
            await self.webhook_policy.check(webhook)
        info = await self.try_describe(entry)
        schema = info.input_schema if info is not None else {}
        input_json = await self.offload(input_size, _checked_input, schema, input)
        validate_stream(stream, entry.streams)
        prediction = Prediction(
            model=entry.name,
            version=version or (info.version if info else ""),
            input=input_json,
            streams=entry.streams,
            seq=next(self._seq),
            owner=owner,
            events=self.new_log(),
        )
        if cancel_after is not None:
            # The task's scope covers the queue and the run: the deadline
            # ends it wherever it is, as a cancel does.
            prediction.cancel_scope.deadline = trio.current_time() + cancel_after
        ticket = self.admission.admit(
            entry.name, entry.settings.max_running, self.settings.retry_after_seconds
        )
        self.retention.prune()
        try:
            self.retention.admit(prediction)
        except BridgeError:
            ticket.release()
            raise
        self.predictions[prediction.id] = prediction
        log.info(
            "prediction %s created for %s",
            prediction.id,
            entry.name,
            extra={"prediction_id": prediction.id, "model": entry.name},
        )
        entry.run_count += 1
        self._running.add(prediction)
        self._nursery.start_soon(self._run, prediction, entry, ticket, info is not None)
        if webhook and self.webhooks is not None:
            self._nursery.start_soon(
                self._follow_webhook, prediction, webhook, events, base_url or self.base_url
            )
        return prediction

    def cancel(self, prediction: Prediction) -> None:
        """Ask *prediction*'s task to stop (idempotent; an ended prediction
        stays as it is). The task is the only writer of its prediction: it
        cancels the gRPC call (the backend sees CANCELLED), then records
        ``canceled``, and its streams get ``done``."""
        prediction.cancel_scope.cancel()

    async def cancel_and_wait(self, prediction: Prediction) -> Prediction:
        """Cancel, and return the prediction once its task recorded the end
        (which takes as long as cancelling the gRPC call: milliseconds)."""
        self.cancel(prediction)
        with trio.move_on_after(CLEANUP_TIMEOUT + 1):
            await prediction.events.wait_closed()
        return prediction

    def _matching(self, owner: str | None, *, newest_first: bool) -> Iterator[Prediction]:
        """The predictions *owner* may see (all, for None), newest or oldest
        first: the registry is in creation order."""
        predictions = self.predictions.values()
        for prediction in reversed(predictions) if newest_first else predictions:
            if owner is None or prediction.owner == owner:
                yield prediction

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Awaitable[bytes]],
    ) -> Page:
        """Predictions newest first, each as *encode* makes it: at most
        ``page_size`` of them, and no more than ``max_page_bytes`` of
        encodings (but at least one).

        Cursors are ``b<seq>`` (older than that) or ``a<seq>`` (newer than
        that); raises ValueError for any other. Encoding yields to other
        tasks between predictions, so a page of large ones stalls no one.
        """
        self.retention.prune()
        # The registry is in creation order (seq order): walked from either
        # end, never sorted. Each walk is taken whole before the first await
        # (creates and retention change the registry meanwhile).
        newer_first = True
        if not cursor:
            walk = self._matching(owner, newest_first=True)
        else:
            # Parsed once, and only cursors this server could have given out
            # (int() of thousands of digits costs quadratic time, per
            # prediction compared).
            match = _CURSOR.fullmatch(cursor)
            if match is None:
                raise ValueError(
                    f"cursor {cursor[:40]!r} is not one this server gave out: use the "
                    "next or previous URL of a page"
                )
            seq = int(match[2])
            if match[1] == "b":
                walk = (p for p in self._matching(owner, newest_first=True) if p.seq < seq)
            else:
                # Newer than the cursor: the ones next to it first.
                walk = (p for p in self._matching(owner, newest_first=False) if p.seq > seq)
                newer_first = False
        candidates = list(itertools.islice(walk, self.settings.page_size))
        taken: list[tuple[Prediction, bytes]] = []
        size = 0
        for prediction in candidates:
            encoded = await encode(prediction)
            if taken and size + len(encoded) > self.settings.max_page_bytes:
                break
            taken.append((prediction, encoded))
            size += len(encoded)
            await trio.lowlevel.checkpoint()
        if not taken:
            return Page([], None, None)
        if not newer_first:
            taken.reverse()
        first, last = taken[0][0], taken[-1][0]
        oldest = next(self._matching(owner, newest_first=False), None)
        newest = next(self._matching(owner, newest_first=True), None)
        older = oldest is not None and oldest.seq < last.seq
        newer = newest is not None and newest.seq > first.seq
        return Page(
            [encoded for _, encoded in taken],
            f"b{last.seq}" if older else None,
            f"a{first.seq}" if newer else None,
        )

    async def _follow_webhook(
        self, prediction: Prediction, url: str, events: frozenset[str], base_url: str
    ) -> None:
        assert self.webhooks is not None

        async def render(p: Prediction) -> bytes:
            return await self.encode(p, base_url)

        with trio.CancelScope() as scope:
            self._webhook_scopes.add(scope)
            if self.closing:
                scope.deadline = trio.current_time() + self.settings.shutdown_timeout_seconds
            try:
                await self.webhooks.follow(prediction, url, events, render)
            finally:
                self._webhook_scopes.discard(scope)

    def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        """The prediction, if *owner* may see it (with auth on, only the
        token that created it may; to anyone else it does not exist)."""
        self.retention.prune()
        prediction = self.predictions.get(prediction_id)
        if prediction is None or (owner is not None and prediction.owner != owner):
            raise NotFound(f"prediction {prediction_id} not found")
        return prediction

    async def _run(
        self, prediction: Prediction, entry: ModelEntry, ticket: Ticket, validated: bool
    ) -> None:
        try:
            with prediction.cancel_scope:
                await ticket.wait()  # queued until a slot is free
                self.observer.admitted(prediction, time.time() - prediction.created_at)
                await runner.run(
                    prediction,
                    entry,
                    grpc=self.grpc,
                    describe=self.describe,
                    observer=self.observer,
                    retention=self.retention,
                    max_output_bytes=self.settings.max_output_bytes,
                    validated=validated,
                    offload=self.offload,
                )
        # This task is its prediction's only writer: whatever ends it is
        # recorded here, once.
        except BridgeError as exc:
            prediction.fail(exc.detail)
        except Exception:
            log.exception(
                "prediction %s: bridge error", prediction.id, extra={"prediction_id": prediction.id}
            )
            if not prediction.done:  # a bug may strike after the end, too
                prediction.fail("internal error in the bridge")
        finally:
            ticket.release()
            if not prediction.done:  # cancelled
                if self.closing:
                    prediction.fail(SHUTDOWN_ERROR)
                else:
                    prediction.cancel()
            self.retention.ended(prediction)
            self._running.discard(prediction)
            if not self._running:
                self._idle.set()
                self._idle = trio.Event()
            log.info(
                "prediction %s %s",
                prediction.id,
                prediction.status,
                extra={
                    "prediction_id": prediction.id,
                    "model": entry.name,
                    "status": str(prediction.status),
                    "error": prediction.error,
                },
            )
            self.observer.finished(prediction)

    async def keep_alive(self) -> None:
        """Every third of ``keepalive_seconds``, nudge the readers of every
        running prediction, so that an idle one writes its ``: ping`` in
        time (see :func:`bridge.stream.sse_body`). Returns once the bridge
        is closed."""
        while not self._closed.is_set():
            with trio.move_on_after(self.settings.keepalive_seconds / 3):
                await self._closed.wait()
            for prediction in list(self._running):
                prediction.events.nudge()

    async def drain(self, seconds: float) -> None:
        """Stop taking predictions; wait up to *seconds* for running ones."""
        self.draining = True
        with trio.move_on_after(seconds):
            while self.active:
                await self._idle.wait()

    def close(self) -> None:
        """Cancel every running prediction (they record why); pending
        webhooks get the shutdown grace to be delivered."""
        self._closed.set()
        for prediction in self.predictions.values():
            self.cancel(prediction)
        deadline = trio.current_time() + self.settings.shutdown_timeout_seconds
        for scope in self._webhook_scopes:
            scope.deadline = min(scope.deadline, deadline)


def _encode(build: Callable[[], dict[str, Any]], replace: dict[str, Any]) -> bytes:
    # msgspec: 5x json.dumps on large outputs. It would write NaN as null,
    # but nothing kept can be NaN: input, output and metrics are checked
    # as strict JSON where they come in.
    return msgspec.json.encode(build() | replace)


def _checked_input(schema: dict[str, Any], input: Any) -> bytes:
    """*input* checked against *schema* (an empty one: only that it is an
    object), as the JSON a prediction keeps."""
    validate_input(schema, input)
    return strictjson.dumps(input, separators=(",", ":")).encode()
