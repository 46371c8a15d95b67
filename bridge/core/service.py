"""The bridge's core: models, and creating, finding and ending
predictions.

:class:`Bridge` validates and creates predictions, keeps them in its store
(:mod:`bridge.core.store`), and runs each as a task its supervisor owns
(:mod:`bridge.core.supervisor`; what the task does is :mod:`bridge.core.runner`). A
task records its own end on its prediction and never lets an exception
escape into the shared nursery, where it would cancel every other
prediction.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, TypeVar

import trio

from .. import strictjson
from ..backends.interface import Backend
from ..config import Settings
from ..errors import (
    BridgeError,
    ShuttingDown,
)
from ..offload import Offload
from ..validation import validate_input, validate_stream
from . import runner
from .admission import Admission, Ticket
from .catalog import Catalog
from .models import ModelEntry
from .observer import Observer
from .predictions import Prediction, clock
from .store import MemoryStore, Page, PredictionStore
from .supervisor import CANCELED, STOP_SECONDS, Failed, Supervisor, end_stopped

__all__ = ["Bridge", "Observer", "Page"]  # Page: bridge.core.store's, re-exported

T = TypeVar("T")

log = logging.getLogger(__name__)


class Bridge:
    """Creates, runs and finds predictions."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        nursery: trio.Nursery,
        store: PredictionStore | None = None,
        offload: Offload | None = None,
        observer: Observer | None = None,
        backends: Mapping[str, Backend] | None = None,
    ) -> None:
        self.settings = settings
        #: Work on many bytes, off the event loop (see bridge.offload).
        self.offload = offload or Offload()
        #: Every prediction it may show (the in-memory store by default).
        self.store: PredictionStore = store if store is not None else MemoryStore(settings)
        #: The owner of the predictions' tasks.
        self.supervisor = Supervisor(nursery)
        # Another bridge sharing the store asks this one, where it runs.
        self.store.serve_cancels(self._cancel_for_store)
        #: Every bridge.v1 backend (the gRPC loop, or the tests' fake);
        #: *backends* are other models' (bridged services), by model name.
        self.backend = backend
        self._nursery = nursery
        #: The models, and what their backends say they are.
        self.catalog = Catalog(settings, backend, nursery, backends)
        self.admission = Admission(settings.max_running, settings.max_queued)
        #: When this bridge started: what deployments report as their
        #: release's creation (their configuration is this process's).
        self.started_at = time.time()
        #: Told what the predictions do (the metrics; by default, no one).
        self.observer = observer or Observer()
        self.draining = False
        #: Where the bridge is reached, for URLs outside any request
        #: (webhooks); set by serve() once it knows its port.
        self.base_url = settings.public_url or f"http://{settings.host}:{settings.port}"

    @property
    def active(self) -> int:
        """Prediction tasks alive (running or queued)."""
        return self.supervisor.active

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (the bridge is shutting down)."""
        return self.supervisor.closed

    # -- predictions -----------------------------------------------------

    async def create(
        self,
        entry: ModelEntry,
        input: Any,
        *,
        version: str | None = None,
        stream: bool = False,
        cancel_after: float | None = None,
        owner: str | None = None,
        input_size: int = 0,
        forwarded: tuple[tuple[str, str], ...] = (),
    ) -> Prediction:
        """Validate *input* against the model's schema (and that the model
        streams, if a *stream* was asked for) and start a prediction of
        *entry*; it is cancelled *cancel_after* seconds from now wherever
        it is then, queued or running. An input of more than
        :data:`bridge.offload.INLINE_BYTES` (*input_size*: the body's
        bytes) is checked in a worker thread. The request's own options
        (a webhook, the shape of ``stream``) are the route's to check, after
        :meth:`check_open` and before this. *forwarded* (header, value)
        pairs go to the backend as gRPC metadata, after the model's own.

        If the backend cannot describe the model right now, the prediction is
        still created; it validates and fails (or runs) once the backend
        answers, so a backend that is briefly away costs no request.

        (Every check comes before anything is created, in the order a
        request's errors are reported: one sequence, read top to bottom.)
        """
        self.check_open()
        info = await self.catalog.info(entry)
        schema = info.input_schema if info is not None else {}
        input_json = await self.offload(input_size, _checked_input, schema, input)
        validate_stream(stream, entry.streams)
        prediction = Prediction(
            model=entry.name,
            version=version or (info.version if info else ""),
            input=input_json,
            streams=entry.streams,
            owner=owner,
            events=self.store.new_log(),
        )
        ticket = self.admission.admit(entry.name, entry.limit)
        try:
            await self.store.add(prediction)
        except BaseException:
            ticket.release()
            raise
        log.info(
            "prediction %s created for %s",
            prediction.id,
            entry.name,
            extra={"prediction_id": prediction.id, "model": entry.name},
        )
        entry.run_count += 1
        # The task's scope covers the queue and the run: a Cancel-After
        # deadline ends it wherever it is, as a cancel does.
        self.supervisor.start(
            prediction,
            partial(self._run, prediction, entry, ticket, info is not None, forwarded),
            deadline=trio.current_time() + cancel_after if cancel_after is not None else math.inf,
        )
        return prediction

    def check_open(self) -> None:
        """Raise :class:`ShuttingDown` (503) once the bridge is draining:
        the first check of a create."""
        if self.draining:
            raise ShuttingDown("the bridge is shutting down; retry the prediction")

    def cancel(self, prediction: Prediction) -> bool:
        """Ask *prediction*'s task to stop, if it runs here (idempotent; an
        ended prediction stays as it is); False if it does not. The task is
        the only writer of its prediction: it cancels the gRPC call (the
        backend sees CANCELLED), then records ``canceled``, and its streams
        get ``done``."""
        return self.supervisor.cancel(prediction.id)

    async def cancel_and_wait(self, prediction: Prediction) -> Prediction:
        """Cancel, wherever it runs (here, or in another bridge sharing the
        store), and return the prediction once its task recorded the end
        (which takes as long as cancelling the gRPC call: milliseconds)."""
        if not self.cancel(prediction) and not prediction.done:
            await self.store.cancel_elsewhere(prediction)
        with trio.move_on_after(STOP_SECONDS):
            await prediction.events.wait_closed()
        return prediction

    def _cancel_for_store(self, prediction_id: str, error: str | None) -> None:
        """What another bridge sharing the store asks (see
        :meth:`~bridge.core.store.PredictionStore.serve_cancels`)."""
        self.supervisor.cancel(prediction_id, CANCELED if error is None else Failed(error))

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        """The prediction, if *owner* may see it (with auth on, only the
        token that created it may; to anyone else it does not exist)."""
        return await self.store.get(prediction_id, owner)

    async def _run(
        self,
        prediction: Prediction,
        entry: ModelEntry,
        ticket: Ticket,
        validated: bool,
        forwarded: tuple[tuple[str, str], ...] = (),
    ) -> None:
        # Cancelled (a cancel, Cancel-After, shutdown) through the
        # supervisor's scope around this task: the finally records it.
        try:
            await ticket.wait()  # queued until a slot is free
            self.observer.admitted(prediction, clock() - prediction.created_clock)
            await runner.run(
                prediction,
                entry,
                describe=self.catalog.describe,
                observer=self.observer,
                store=self.store,
                max_output_bytes=self.settings.max_output_bytes,
                validated=validated,
                metadata=entry.metadata + forwarded,
                offload=self.offload,
            )
        # This task is its prediction's only writer: whatever ends it is
        # recorded here, once.
        except BridgeError as exc:
            if not prediction.done:  # else its store ended it meanwhile
                prediction.fail(exc.detail)
        except Exception:
            log.exception(
                "prediction %s: bridge error", prediction.id, extra={"prediction_id": prediction.id}
            )
            if not prediction.done:  # a bug may strike after the end, too
                prediction.fail("internal error in the bridge")
        finally:
            ticket.release()
            if not prediction.done:  # stopped: see bridge.core.supervisor
                end_stopped(prediction, self.supervisor.reason(prediction.id))
            self.store.ended(prediction)
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

    async def watch_targets(self) -> None:
        """Check the health of the targets of models with several (see
        :meth:`bridge.core.catalog.Catalog.watch_targets`) until the bridge
        is closed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.catalog.watch_targets)
            await self.supervisor.wait_closed()
            nursery.cancel_scope.cancel()

    async def drain(self, seconds: float) -> None:
        """Stop taking predictions; wait up to *seconds* for running ones."""
        self.draining = True
        await self.supervisor.drain(seconds)

    def close(self) -> None:
        """Cancel every running prediction (they record why)."""
        self.supervisor.close()


def _checked_input(schema: dict[str, Any], input: Any) -> bytes:
    """*input* checked against *schema* (an empty one: only that it is an
    object), as the JSON a prediction keeps."""
    validate_input(schema, input)
    return strictjson.dumps(input, separators=(",", ":")).encode()
