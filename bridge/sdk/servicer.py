"""The model's gRPC service: ``Describe``, ``Predict`` and ``Stream``.

``Predict`` runs one prediction per call. ``Stream`` (which ``Describe``
advertises) runs many on one call: the bridge starts and cancels them with
its requests, and each response carries the news of every prediction
that has some since the last write, so that what the model's predictions
yield during one write goes out as one message whichever prediction
yielded it (see :mod:`bridge.sdk.outbox`). A :class:`~bridge.sdk.batch.
BatchPredictor`'s step is one message that way.

Each prediction keeps ``Predict``'s guarantees on ``Stream``: it ends on
its own (an ``End`` with the status ``Predict`` would have ended with), a
cancel reaches its generator only, and the call ending (the bridge gone)
cancels every prediction still on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from bridge._proto.v1 import predictor_pb2 as pb
from bridge._proto.v1 import predictor_pb2_grpc

from ..backends import wire
from .batch import Batcher
from .failure import error_message, fail
from .outbox import MESSAGE_BYTES, Board, News, Outbox, drain_generator, messages

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Servicer"]

log = logging.getLogger("bridge.sdk")


class Status(Exception):
    """A prediction's end with a status other than the model's own error."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _end(error: BaseException | None) -> pb.End:
    """The ``End`` of a prediction that ended with *error* (None: succeeded)."""
    if error is None:
        return pb.End()
    if isinstance(error, Status):
        return pb.End(code=error.code.value[0], message=str(error))
    return pb.End(code=grpc.StatusCode.UNKNOWN.value[0], message=error_message(error))


class Servicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(
        self, model: Model, executor: concurrent.futures.Executor, multiplexed: bool = True
    ) -> None:
        self._model = model
        self._executor = executor
        self._multiplexed = multiplexed
        #: Until setup() has returned: predictions are refused (UNAVAILABLE,
        #: wire.LOADING), which the bridge waits out.
        self.loading = True
        #: Why setup() failed, if it did: predictions are refused with it
        #: (FAILED_PRECONDITION), and Describe says it.
        self.setup_error = ""
        #: Predictions running at once, at most the model's concurrency (a
        #: bridge that honours Describe never makes one wait here).
        limit = model.info.concurrency
        self._slots = asyncio.Semaphore(limit) if limit else None
        #: A batching model's side of its step loop (run by serve_async).
        self.batcher = Batcher(model.batch) if model.batch is not None else None

    async def Describe(self, request: Any, context: Any) -> pb.DescribeResponse:
        response = wire.model_info_to_pb(self._model.info)
        response.multiplexed = self._multiplexed
        response.setup_error = self.setup_error
        return response

    @property
    def model_name(self) -> str:
        return self._model.info.name

    def refusal(self) -> tuple[grpc.StatusCode, str] | None:
        """Why a prediction is refused now, if it is: setup failed, or runs."""
        if self.setup_error:
            return grpc.StatusCode.FAILED_PRECONDITION, wire.SETUP_FAILED + self.setup_error
        if self.loading:
            return grpc.StatusCode.UNAVAILABLE, wire.LOADING
        return None

    # -- one prediction ---------------------------------------------------

    async def _produce(self, prediction_id: str, input: dict[str, Any], outbox: Outbox) -> None:
        """Everything the model produces for one prediction, whatever kind of
        callable it is, into *outbox*; its end (or its exception) last."""
        try:
            if self.batcher is not None:
                await self.batcher.predict(prediction_id, input, outbox)
                return
            func = self._model.predict
            if (
                inspect.isgeneratorfunction(func)
                or inspect.isasyncgenfunction(func)
                or inspect.iscoroutinefunction(func)
            ):
                result = func(**input)
            else:
                # A plain function may block: call it off the event loop.
                call = functools.partial(func, **input)
                result = await asyncio.wrap_future(self._executor.submit(call))
            if inspect.isasyncgen(result):
                try:
                    async for item in result:
                        await outbox.put(item)
                finally:
                    await result.aclose()
            elif inspect.isgenerator(result):
                try:
                    await asyncio.wrap_future(
                        self._executor.submit(drain_generator, result, outbox)
                    )
                finally:
                    outbox.cancel()
            else:
                await outbox.put(await result if inspect.isawaitable(result) else result)
        except Exception as exc:
            fail(prediction_id, exc, outbox)
        else:
            outbox.end()

    async def _run(self, prediction_id: str, input: dict[str, Any], outbox: Outbox) -> None:
        async with self._slot():
            await self._produce(prediction_id, input, outbox)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._slots if self._slots is not None else contextlib.nullcontext()

    def _input(self, request: pb.PredictRequest) -> dict[str, Any]:
        return self._model.coerce_input(wire.request_input(request))

    # -- Predict ----------------------------------------------------------

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> None:
        if refused := self.refusal():
            log.info("prediction %s refused: %s", request.id, refused[1])
            await context.abort(*refused)
        input = self._input(request)
        log.info("prediction %s started", request.id)
        # Headers now tell the bridge the model is running.
        await context.send_initial_metadata(())
        board = Board(asyncio.get_running_loop())
        outbox = Outbox(board)
        # The producer is this call's child: a cancelled call (or a failed
        # write) cancels it, which closes the model's generator.
        error: BaseException | None = None
        async with asyncio.TaskGroup() as tasks:
            producer = tasks.create_task(self._run(request.id, input, outbox))
            ended = False
            while not ended:
                for news in await board.take():
                    built, ended, error = _build(news)
                    for message, _ in built:
                        await context.write(message)
                    if ended and not news.ended:  # its output cannot be sent
                        producer.cancel()
        if error is not None:
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(error_message(error))

    # -- Stream -----------------------------------------------------------

    async def Stream(
        self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> None:
        async with asyncio.TaskGroup() as tasks:
            call = _StreamCall(self, context, tasks)
            reader = tasks.create_task(call.read(requests))
            await call.write(reader)


#: The most a message may be: what a bridge's gRPC channel receives by
#: default. A prediction whose one output is larger fails alone (on
#: Predict, the bridge's refusal of that message would fail it).
MAX_MESSAGE = 4 * 1024 * 1024 - 1024


class _StreamCall:
    """One ``Stream`` call: its predictions, their starts and cancels (read
    from the bridge) and their news (written to it)."""

    def __init__(
        self, servicer: Servicer, context: grpc.aio.ServicerContext, tasks: asyncio.TaskGroup
    ) -> None:
        self.servicer = servicer
        self.context = context
        self.tasks = tasks
        self.board = Board(asyncio.get_running_loop())
        #: The predictions whose end is not written yet, by key.
        self.open: dict[int, Outbox] = {}
        #: Their tasks, while they run.
        self.running: dict[int, asyncio.Task[None]] = {}

    async def read(self, requests: AsyncIterator[pb.StreamRequest]) -> None:
        """Start and cancel what the bridge asks, until it half-closes."""
        try:
            async for request in requests:
                for start in request.start:
                    self.start(start.key, start.request)
                for key in request.cancel:
                    self.stop(key, Status(grpc.StatusCode.CANCELLED, "cancelled"))
        finally:
            self.board.wake()  # the writer checks whether it is done

    def start(self, key: int, request: pb.PredictRequest) -> None:
        if key in self.open:
            log.warning("prediction %s refused: key %d is in use on this call", request.id, key)
            return
        outbox = self.open[key] = Outbox(self.board, key)
        servicer = self.servicer
        if refused := servicer.refusal():
            log.info("prediction %s refused: %s", request.id, refused[1])
            outbox.end(Status(*refused))
            return
        try:
            input = servicer._input(request)
        except Exception as exc:  # this prediction's input: it fails alone
            outbox.end(exc)
            return
        log.info("prediction %s started (on a Stream call)", request.id)
        outbox.start()
        task = self.tasks.create_task(servicer._run(request.id, input, outbox))
        self.running[key] = task

        def ended(task: asyncio.Task[None]) -> None:
            if self.running.get(key) is task:
                del self.running[key]

        task.add_done_callback(ended)

    def stop(self, key: int, why: Status) -> None:
        """End prediction *key* (cancelling the model's work) with *why*."""
        task = self.running.pop(key, None)
        if task is not None:
            task.cancel()
        if (outbox := self.open.get(key)) is not None:
            outbox.end(why)

    async def write(self, reader: asyncio.Task[None]) -> None:
        """Each time the last write completed, all the news as one message
        (or a few of :data:`MESSAGE_BYTES`), until the bridge has
        half-closed and every prediction's end is written."""
        while not (reader.done() and not self.open):
            response = pb.StreamResponse()
            size = 0
            for news in await self.board.take():
                key = news.outbox.key
                if key not in self.open:  # its end is written
                    continue
                update = response.updates.add(key=key, started=news.started)
                built, ended, error = _build(news)
                if ended and not news.ended:  # its output cannot be sent: it ends
                    self.stop(key, Status(grpc.StatusCode.CANCELLED, "cancelled"))
                for message, weight in built:
                    if size + weight > MESSAGE_BYTES and size:
                        await self.context.write(response)
                        response, size = pb.StreamResponse(), 0
                        update = response.updates.add(key=key)
                    update.responses.append(message)
                    size += weight
                if ended:
                    update.end.CopyFrom(_end(error))
                    del self.open[key]
            if response.updates:
                await self.context.write(response)


def _build(news: News) -> tuple[list[tuple[pb.PredictResponse, int]], bool, BaseException | None]:
    """The messages of *news*, whether its prediction ended and how. An
    output that cannot be sent (not JSON, or larger than a message may
    be) ends that prediction alone, after what came before it."""
    built: list[tuple[pb.PredictResponse, int]] = []
    try:
        for message, weight in messages(news.items):
            if weight >= MESSAGE_BYTES and (whole := message.ByteSize()) > MAX_MESSAGE:
                raise _too_large(whole)
            built.append((message, weight))
    except Exception as exc:
        log.warning("an output cannot be sent to the bridge: %s", exc)
        return built, True, exc
    return built, news.ended, news.error


def _too_large(size: int) -> Status:
    return Status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"an output of {size} bytes: more than a message may carry ({MAX_MESSAGE} bytes)",
    )
