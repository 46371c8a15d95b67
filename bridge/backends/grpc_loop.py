"""The gRPC adapter: one asyncio event loop that owns every grpc.aio call.

grpcio has no Trio support, and a thread per stream does not scale (measured
at 1,000 streams: ~1,000 threads and seconds of delay). So one asyncio event
loop runs every grpc.aio call; every channel is created on it. Which loop:

* The servers (``serve``, ``run-demo``) run Trio as a *guest* on it
  (:func:`run`, ``trio.lowlevel.start_guest_run``): Trio and grpc.aio share
  one thread, so the GIL is never passed back and forth between a Trio
  thread and a gRPC thread (measured at 1,000 paced streams: 20% less CPU
  per chunk, and a lower gap p99, than with two threads).
* Under a plain ``trio.run`` (the tests, a program embedding the bridge),
  :func:`open_grpc_loop` starts a thread of its own that runs the loop.

Either way a Trio task asks the loop to start a call and receives the
call's messages through a :class:`PredictStream`:

* the asyncio side (the *pump*) appends each message to its stream's deque
  and marks the stream ready; the first stream marked since the last
  wake-up asks for one (``TrioToken.run_sync_soon`` from a loop thread;
  ``loop.call_soon`` when Trio is the loop's guest, since a guest's
  synchronous Trio calls are safe on the host between ticks), which wakes
  every ready stream: one wake-up per loop iteration for all the streams
  that have news, never one per message or per stream, and the loop never
  blocks. A stream delivered to a handler (:meth:`PredictStream.deliver`)
  is handed its messages in that wake-up; as a guest, Trio itself wakes
  only when a task of its must run;
* a credit window (an ``asyncio.Semaphore``) bounds the messages in flight;
  the Trio side hands credits back in batches;
* Trio cancellation becomes ``task.cancel()`` on the loop, which cancels the
  RPC (the backend sees CANCELLED); the Trio side then waits, shielded and
  briefly, for the pump to finish, so no call outlives its owner. The same
  holds for the unary calls (``Describe``, health checks), which go through
  the same two hand-offs: into the loop with ``GrpcLoop._call_soon``
  (``call_soon`` as a guest, ``call_soon_threadsafe`` from Trio's thread),
  back with the hub's ``schedule``.
* With a loop thread, the hub's and each stream's ready flags are written
  by both threads: each store and each deque append is atomic under the
  GIL, and the order of the writes (append, then check the flag; clear the
  flag, then drain) loses no wake-up
  (``test_no_wake_up_is_lost_between_the_two_threads`` stresses it).
* Every wait on the loop is bounded (:data:`CLEANUP_TIMEOUT`): starting
  it, stopping it, and the end of a cancelled call. A wedged loop thread
  is logged and left behind (it is a daemon thread), never waited on
  forever.

``grpc.RpcError`` never leaves this module: :func:`map_rpc_error` is the one
place where gRPC status codes become the bridge's errors. Deadlines are
never passed in: the adapter turns the caller's Trio deadline
(``trio.current_effective_deadline()``) into the gRPC timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import grpc
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge._proto.v1 import predictor_pb2, predictor_pb2_grpc
from bridge.errors import (
    BackendProtocolError,
    BackendUnavailable,
    PredictionError,
)

from ..offload import Offload
from . import wire
from .interface import CLEANUP_TIMEOUT, Metadata, PredictInput
from .mux import MANY_ADDRESSES, Batches, Lane, Muxes
from .reconnects import Reconnects
from .status import UNDECODABLE, map_rpc_error, map_status, status_code

__all__ = [
    "Call",
    "GrpcLoop",
    "Messages",
    "PredictStream",
    "map_rpc_error",
    "map_status",
    "open_grpc_loop",
    "run",
    "status_code",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


#: Channel options: reconnect fast after a backend restart (grpc's default
#: backoff grows to two minutes, long after the backend is back).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_BALANCED = ("grpc.service_config", json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
))  # fmt: skip


def _grpc_timeout() -> float | None:
    deadline = trio.current_effective_deadline()
    return None if math.isinf(deadline) else max(0.0, deadline - trio.current_time())


#: A call's items, read on the loop: they end when the call succeeds, and
#: raise its PredictionError (or a grpc.RpcError) when it fails. Closing
#: the iterator cancels the call.
Messages = AsyncGenerator[wire.StreamItem, None]
#: Starts a call: given the target's channel and the gRPC timeout.
Call = Callable[[grpc.aio.Channel, float | None], Messages]


@dataclass
class _End:
    error: PredictionError | None


class PredictStream(Batches):
    """The Trio end of one ``Predict`` call.

    Two ways to read it:

    * ``async for batch in stream`` yields lists of
      :data:`~bridge.backends.wire.StreamItem`; the loop ends when the call
      succeeds and raises a :class:`~bridge.errors.PredictionError` if it
      fails.
    * :meth:`deliver` hands each batch to a synchronous function in the
      wake-up that brings it, with no hop through the owner's task (the
      hot path: one task switch less per message), and :meth:`wait_end`
      waits for the end. What that function raises ends the call in its
      owner, as the call's own errors do.
    """

    def __init__(self, hub: _WakeHub, window: int, call_soon: Callable[..., object]) -> None:
        self._hub = hub
        self._window = window
        self._items: collections.deque[wire.StreamItem | _End] = collections.deque()
        self._waiters = trio.lowlevel.ParkingLot()
        self._ready = False  # in the hub's ready list; written by both threads, see _push
        self._consumed = 0
        self._ended = False
        self._handle: Callable[[list[wire.StreamItem]], None] | None = None
        #: How a delivered call stopped: EndOfChannel, its PredictionError,
        #: or what the handler raised; None while it goes on.
        self._stop: Exception | None = None
        # Asyncio side, touched only on the loop.
        self._task: asyncio.Task[PredictionError | None] | None = None
        self._credits: asyncio.Semaphore | None = None
        #: How Trio schedules a callback on the loop (GrpcLoop._call_soon):
        #: in order, so what it schedules runs after the call's start.
        self._call_soon = call_soon

    # -- asyncio side ---------------------------------------------------

    def _push(self, item: wire.StreamItem | _End) -> None:
        self._items.append(item)
        # The append happens before this read, and Trio clears the flag
        # before it wakes the consumer: either this stream is in the hub's
        # ready list (and will be woken after the append), or we put it
        # there. Never a wake-up lost.
        if not self._ready:
            self._ready = True
            self._hub.mark(self)

    async def _pump(self, messages: Messages) -> PredictionError | None:
        """On the loop: hand the call's items over, one credit each, until
        it ends; its error, if it failed."""
        assert self._credits is not None
        credits = self._credits
        # Closed here, at once, even when cancelled: its finally cancels
        # the RPC (an async generator left to the loop's finalizer would
        # cancel it only some time later).
        async with contextlib.aclosing(messages) as items:
            try:
                async for item in items:
                    self._push(item)
                    await credits.acquire()
            except PredictionError as exc:
                return exc
            except grpc.RpcError as exc:
                return map_rpc_error(exc)
            except ValueError as exc:
                return BackendProtocolError(f"model backend sent {exc}")
            except grpc.aio.BaseError as exc:  # grpc refused the call (its metadata, say)
                return BackendProtocolError(f"the call could not be made: {exc}")
        return None

    def _start(
        self, loop: asyncio.AbstractEventLoop, messages: Messages, ended: Callable[[], None]
    ) -> None:
        """On the loop: start reading *messages*; *ended* is called on the
        loop when the call has ended, before Trio can learn it."""
        self._credits = asyncio.Semaphore(self._window)
        self._task = loop.create_task(self._pump(messages))

        def done(task: asyncio.Task[PredictionError | None]) -> None:
            ended()
            error: PredictionError | None
            if task.cancelled():
                error = None
            elif (exc := task.exception()) is not None:  # a bug: the call still ends
                log.error("the Predict call failed", exc_info=exc)
                error = BackendProtocolError(f"the bridge failed reading the backend: {exc!r}")
            else:
                error = task.result()
            self._push(_End(error))

        self._task.add_done_callback(done)

    def _return_credits(self, count: int) -> None:
        assert self._credits is not None
        for _ in range(count):
            self._credits.release()

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- Trio side ------------------------------------------------------

    def _wake(self) -> None:
        self._ready = False
        if self._handle is None:
            self._waiters.unpark_all()
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        """Deliver what arrived to the handler, here and now (on the Trio
        thread, synchronously, in the hub's wake-up): the owner's task is
        woken only at the end."""
        assert self._handle is not None
        try:
            while self._items:
                self._handle(self._take())
        except Exception as exc:  # the end (EndOfChannel or the call's error), or the handler's
            self._handle = None
            self._stop = exc
            self._waiters.unpark_all()

    def _give_back_credits(self) -> None:
        if self._consumed and not self._ended:
            count, self._consumed = self._consumed, 0
            with contextlib.suppress(RuntimeError):  # loop closed
                self._call_soon(self._return_credits, count)

    async def receive_batch(self) -> list[wire.StreamItem]:
        """Every message that has arrived, waiting for at least one.

        Raises ``trio.EndOfChannel`` after a successful end of the call and
        :class:`PredictionError` after a failed one.
        """
        if self._ended:
            raise trio.EndOfChannel
        if self._items:
            await trio.lowlevel.checkpoint()
        while not self._items:
            await self._waiters.park()
        return self._take()

    def deliver(self, handle: Callable[[list[wire.StreamItem]], None]) -> None:
        """From now on, call ``handle(batch)`` with each batch as it
        arrives, in the wake-up that brings it (and now, with what has
        already arrived); :meth:`wait_end` reports the end."""
        self._handle = handle
        if self._items:
            self._hand_over()

    @property
    def stopped(self) -> bool:
        """Whether a delivered call has ended (wait_end returns at once)."""
        return self._stop is not None

    async def wait_end(self) -> None:
        """Wait until a delivered call ends: return when it succeeded, raise
        its :class:`PredictionError`, or what the handler raised."""
        while self._stop is None:
            await self._waiters.park()
        if not isinstance(self._stop, trio.EndOfChannel):
            raise self._stop

    def _take(self) -> list[wire.StreamItem]:
        """What has arrived, up to the end; raises at the end as
        :meth:`receive_batch` does."""
        batch: list[wire.StreamItem] = []
        while self._items:
            item = self._items[0]
            if isinstance(item, _End):
                if batch:
                    break  # deliver what came before the end first
                self._items.popleft()
                self._ended = True
                if item.error is not None:
                    raise item.error
                raise trio.EndOfChannel
            batch.append(self._items.popleft())  # type: ignore[arg-type]
        # Credits go back in batches of half a window, never one by one: the
        # pump blocks only once a whole window is out, and by then half of
        # it has been consumed here.
        self._consumed += len(batch)
        if self._consumed >= self._window // 2:
            self._give_back_credits()
        return batch

    async def _close(self) -> None:
        """In Trio, as its owner leaves: deliver nothing more, and cancel the
        call if it is running, waiting (shielded, at most CLEANUP_TIMEOUT)
        for the loop to confirm its end."""
        self._handle = None
        if self._ended:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._call_soon(self._cancel)
        with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            await self._wait_ended()

    async def _wait_ended(self) -> None:
        """Drop whatever arrives until the pump reports its end."""
        while not self._ended:
            while self._items:
                if isinstance(self._items.popleft(), _End):
                    self._ended = True
            if not self._ended:
                await self._waiters.park()


class _Wakes(Protocol):
    def _wake(self) -> None: ...


class _WakeHub:
    """Wakes every stream the loop marked ready since the last wake-up: one
    wake-up per loop iteration for all of them."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        #: How the wake-up is scheduled: in Trio through its token (a loop
        #: thread), or on the loop itself when Trio is its guest (see
        #: GrpcLoop._start).
        self.schedule: Callable[[Callable[[], object]], object] = token.run_sync_soon
        self._ready: collections.deque[_Wakes] = collections.deque()
        self._pending = False  # written by both threads; see mark and _wake_all

    def mark(self, stream: _Wakes) -> None:
        """On the loop: *stream* has news."""
        self._ready.append(stream)
        # As in PredictStream._push: Trio clears the flag before it drains
        # the list, so a stream appended is either seen by the pending
        # wake-up or schedules a new one.
        if not self._pending:
            self._pending = True
            with contextlib.suppress(trio.RunFinishedError):
                self.schedule(self._wake_all)

    def _wake_all(self) -> None:
        self._pending = False
        ready = self._ready
        while ready:
            ready.popleft()._wake()


class GrpcLoop:
    """The asyncio loop (Trio's host, or a thread of its own) and the
    channels on it (one per target)."""

    def __init__(self, window: int = 64, offload: Offload | None = None) -> None:
        self.window = window
        #: How a large input is encoded: off the event loop (bridge.offload).
        self.offload = offload or Offload()
        #: gRPC calls (Predict, Describe, health) not yet ended on the loop
        #: thread; written only there.
        self._calls = 0
        self._token = trio.lowlevel.current_trio_token()
        self._hub = _WakeHub(self._token)
        #: The Stream calls of the targets whose Describe said multiplexed.
        self._muxes = Muxes(self._hub.mark, lambda *args: self._call_soon(*args), window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._reconnects = Reconnects()
        #: TLS credentials of the targets that use TLS (see secure).
        self._credentials: dict[str, grpc.ChannelCredentials] = {}
        self._thread: threading.Thread | None = None
        #: Schedules a callback on the loop from Trio: from another thread,
        #: call_soon_threadsafe (which wakes the loop); from a guest run's
        #: tick, which runs on the loop itself, plain call_soon (no syscall).
        self._call_soon: Callable[..., object] = lambda *args: None
        self._started = trio.Event()
        self._stopped = trio.Event()

    @property
    def active_calls(self) -> int:
        """Calls not yet ended: Predict, Describe and health calls, and
        predictions on Stream calls."""
        return self._calls + self._muxes.running

    # -- lifetime ---------------------------------------------------------

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._token.run_sync_soon(self._started.set)
        try:
            loop.run_forever()
            loop.run_until_complete(self._close_channels())
            _end_loop(loop)
        finally:
            loop.close()
            asyncio.set_event_loop(None)
            self._token.run_sync_soon(self._stopped.set)

    async def _close_channels(self) -> None:
        self._reconnects.stop()
        # Closing a channel cancels the calls still on it.
        for channel in self._channels.values():
            await channel.close(grace=None)

    async def _start(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is _guest_host:
            # Trio is a guest on this loop (see run): the calls run here.
            self._loop = running
            self._call_soon = running.call_soon
            # Trio's synchronous calls are safe here between its ticks: the
            # loop wakes delivered streams itself, and Trio only when one of
            # its tasks must run (start_guest_run's design: no pass through
            # Trio's I/O thread per message).
            self._hub.schedule = running.call_soon
            return
        # A daemon thread: if it ever wedges, it cannot keep the process alive.
        self._thread = threading.Thread(
            target=self._thread_main, name="grpc-asyncio-loop", daemon=True
        )
        self._thread.start()
        with trio.fail_after(CLEANUP_TIMEOUT):
            await self._started.wait()
        assert self._loop is not None
        self._call_soon = self._loop.call_soon_threadsafe

    async def _stop(self, seconds: float) -> None:
        """Close every channel and stop the loop thread if there is one,
        waiting up to *seconds*."""
        assert self._loop is not None
        if self._thread is None:  # the host's loop: it ends with the guest run
            with trio.move_on_after(seconds):
                await self._run(self._close_channels)
                return
            log.error("the gRPC channels did not close within %g s; leaving them", seconds)
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        with trio.move_on_after(seconds):
            await self._stopped.wait()
            # Setting _stopped was the thread's last act: it is returning
            # now, so this join is immediate (and a worker thread for it
            # would outlive us in Trio's thread cache).
            self._thread.join(timeout=1.0)
            return
        log.error("the gRPC loop thread did not stop within %g s; leaving it", seconds)

    def secure(
        self,
        target: str,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
    ) -> None:
        """Use TLS to *target* (before its first call): its certificate
        checked against *root_certificates* (PEM; None: the system's), and
        with *private_key* and *certificate_chain* this side's shown (mutual
        TLS)."""
        self._credentials[target] = grpc.ssl_channel_credentials(
            root_certificates, private_key, certificate_chain
        )

    def _channel(self, target: str) -> grpc.aio.Channel:
        """The channel for *target*; on the loop only (grpc.aio objects
        belong to the loop that made them)."""
        channel = self._channels.get(target)
        if channel is None:
            credentials = self._credentials.get(target)
            options = _CHANNEL_OPTIONS + [_BALANCED] * target.startswith(MANY_ADDRESSES)
            if credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            self._channels[target] = channel
            self._reconnects.watch(target, channel)
        return channel

    def lost_connections(self, target: str) -> int:
        """How many times the connection to *target* was lost so far."""
        return self._reconnects.lost(target)

    # -- calls ------------------------------------------------------------

    async def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run the call ``make()`` on the loop. Trio cancellation
        cancels it there, and returns only once it has ended (within
        CLEANUP_TIMEOUT): the call never outlives its caller.

        The same two hand-offs as a stream's: into the loop with
        ``_call_soon``, back with the hub's ``schedule``."""
        assert self._loop is not None
        loop = self._loop
        ended = trio.Event()
        # How the call ended, kept on the loop as it ends.
        values: list[T] = []
        errors: list[BaseException] = []
        tasks: list[asyncio.Task[T]] = []

        def done(task: asyncio.Task[T]) -> None:  # on the loop, however the task ended
            # Even a task cancelled before its first step ends here (a
            # finally in the coroutine would never run).
            self._calls -= 1
            if task.cancelled():
                errors.append(asyncio.CancelledError())
            elif (exc := task.exception()) is not None:
                errors.append(exc)
            else:
                values.append(task.result())
            with contextlib.suppress(trio.RunFinishedError):
                self._hub.schedule(ended.set)

        def start() -> None:  # on the loop
            self._calls += 1
            task: asyncio.Task[T] = loop.create_task(make())
            task.add_done_callback(done)
            tasks.append(task)

        def cancel() -> None:  # on the loop: cancels the task, and the call
            if tasks:
                tasks[0].cancel()

        self._call_soon(start)
        try:
            await ended.wait()
        finally:
            if not ended.is_set():
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._call_soon(cancel)
                with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                    await ended.wait()
        if errors:
            if isinstance(errors[0], asyncio.CancelledError):  # by the loop, closing
                raise BackendUnavailable("model backend unavailable: the call was cancelled")
            raise errors[0]
        return values[0]

    async def describe(self, target: str, metadata: Metadata = ()) -> wire.ModelInfo:
        """Ask the backend at *target* what model it serves."""
        timeout = _grpc_timeout()

        async def call() -> predictor_pb2.DescribeResponse:
            stub = predictor_pb2_grpc.PredictorStub(self._channel(target))
            response: predictor_pb2.DescribeResponse = await stub.Describe(
                predictor_pb2.DescribeRequest(), timeout=timeout, metadata=metadata or None
            )
            return response

        try:
            response = await self._run(call)
            info = wire.model_info_from_pb(response)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc) from exc
        except ValueError as exc:
            raise BackendProtocolError(f"model backend sent {exc}") from exc
        self._muxes.said(target, response.multiplexed)
        return info

    async def check_health(self, target: str, metadata: Metadata = (), *, service: str = "") -> str:
        """The backend's ``grpc.health.v1`` status name for *service* (one
        it does not know: for the server, ``""``), or ``UNAVAILABLE``."""
        timeout = _grpc_timeout()

        async def call() -> Any:
            stub = health_pb2_grpc.HealthStub(self._channel(target))
            request = health_pb2.HealthCheckRequest(service=service)
            return await stub.Check(request, timeout=timeout, metadata=metadata or None)

        try:
            response = await self._run(call)
        except grpc.RpcError as exc:
            if service and exc.code() is grpc.StatusCode.NOT_FOUND:
                return await self.check_health(target, metadata)
            error = map_rpc_error(exc)
            # A backend that answers, but not with a health service, is up
            # in an unknown state; one that cannot be reached is not.
            return "UNKNOWN" if isinstance(error, BackendProtocolError) else "UNAVAILABLE"
        try:
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        except ValueError:  # a status this grpcio does not know
            return "UNKNOWN"

    async def run_on(
        self, target: str, make: Callable[[grpc.aio.Channel], Coroutine[Any, Any, T]]
    ) -> T:
        """Run ``make(channel)`` on the loop with *target*'s channel (a
        call that is not a stream of predictions: reflection, say); Trio
        cancellation cancels it there. Its grpc.RpcError is the caller's
        to map."""
        return await self._run(lambda: make(self._channel(target)))

    @contextlib.asynccontextmanager
    async def predict(
        self, target: str, asked: PredictInput
    ) -> AsyncIterator[PredictStream | Lane]:
        """Start a ``Predict`` call of *asked*, decoded and encoded as a
        bridge.v1 ``PredictRequest`` (in a worker thread if it is large);
        leaving the block cancels it if running. A caller cancelled already
        starts nothing (nor a Stream call, nor a worker thread)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        request = await self.offload(asked.size, _request, asked)
        mux = self._muxes.get(target, asked.metadata, request, self._channel)
        if mux is not None:
            async with mux.open(request) as lane:
                yield lane
            return
        call = partial(_predict, request, asked.metadata or None)
        async with self.open_stream(target, call) as stream:
            yield stream

    @contextlib.asynccontextmanager
    async def open_stream(self, target: str, call: Call) -> AsyncIterator[PredictStream]:
        """Start ``call(channel, timeout)`` on the loop, with *target*'s
        channel and the caller's deadline, its items read through the
        stream; leaving the block cancels it if running."""
        assert self._loop is not None
        loop = self._loop
        stream = PredictStream(self._hub, self.window, self._call_soon)
        timeout = _grpc_timeout()

        def start() -> None:  # on the loop
            self._calls += 1
            stream._start(loop, call(self._channel(target), timeout), ended)

        def ended() -> None:  # on the loop, before Trio can learn the call ended
            self._calls -= 1

        self._call_soon(start)
        try:
            yield stream
        finally:
            await stream._close()


def _request(asked: PredictInput) -> predictor_pb2.PredictRequest:
    return wire.predict_request(asked.id, json.loads(asked.input_json))


async def _predict(
    request: predictor_pb2.PredictRequest,
    metadata: tuple[tuple[str, str], ...] | None,
    channel: grpc.aio.Channel,
    seconds: float | None,
) -> Messages:
    """On the loop: the bridge.v1 ``Predict`` call, as the stream's items."""
    stub = predictor_pb2_grpc.PredictorStub(channel)
    call = stub.Predict(request, timeout=seconds, metadata=metadata)
    try:
        await call.initial_metadata()
        if not call.done() or await call.code() is grpc.StatusCode.OK:
            yield wire.Started()
        async for response in call:
            if response is None:  # grpc.aio could not decode it (and logged why)
                raise BackendProtocolError(UNDECODABLE)
            yield wire.stream_item_from_pb(response)
    finally:
        call.cancel()  # explicit; a no-op once the call has ended


@contextlib.asynccontextmanager
async def open_grpc_loop(
    window: int = 64, stop_timeout: float = CLEANUP_TIMEOUT, offload: Offload | None = None
) -> AsyncIterator[GrpcLoop]:
    """Start the loop thread, or use the loop Trio is a guest of; close
    every channel (and stop the thread) on exit, waiting at most
    *stop_timeout* seconds."""
    grpc_loop = GrpcLoop(window, offload)
    await grpc_loop._start()
    try:
        yield grpc_loop
    finally:
        with trio.CancelScope(shield=True):
            await grpc_loop._stop(stop_timeout)


def _end_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on *loop*, and let it finish (waiting at most
    :data:`CLEANUP_TIMEOUT` for tasks that ignore their cancel)."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=CLEANUP_TIMEOUT))
    loop.run_until_complete(loop.shutdown_asyncgens())


#: The asyncio loop :func:`run` hosts Trio on, while it does: the loop a
#: GrpcLoop opened inside that run uses (not any loop that happens to be
#: running in the thread, such as one blocked in a plain trio.run).
_guest_host: asyncio.AbstractEventLoop | None = None


def run(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``trio.run(async_fn, *args)``, with Trio a guest on a new asyncio
    event loop in this thread: every :class:`GrpcLoop` opened inside runs
    its gRPC calls on that loop, in the same thread as Trio."""
    global _guest_host
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    done: asyncio.Future[Any] = loop.create_future()
    _guest_host = loop
    try:
        trio.lowlevel.start_guest_run(
            async_fn,
            *args,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=done.set_result,
        )
        result = loop.run_until_complete(done)
        _end_loop(loop)
    finally:
        _guest_host = None
        loop.close()
        asyncio.set_event_loop(None)
    return result.unwrap()  # type: ignore[no-any-return]
