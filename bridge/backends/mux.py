"""Many predictions on one ``Stream`` call: bridge.v1's multiplexed transport.

A backend whose ``Describe`` says ``multiplexed`` gets its predictions on
one long ``Stream`` call per target (and per set of call metadata)
instead of one ``Predict`` call each. Each response of that call carries
the news of every prediction that has some (a batching engine's step is one
message), so the bridge pays one gRPC message, one hand-over to Trio and
one wake-up per step, not one per prediction per token.

The two sides, as for a ``Predict`` call (:mod:`bridge.backends.grpc_loop`):

* on the asyncio loop, a :class:`Mux` writes the starts and cancels that
  Trio asked for since its last write as one request (or a few of
  :data:`MAX_REQUEST`), and reads responses
  into a deque, one credit each (a window of messages bounds what is in
  flight), marking itself ready on the loop's wake hub;
* in Trio's wake-up, it hands each prediction's news to that prediction's
  :class:`Lane` (a :class:`~bridge.backends.interface.Call`), which hands it
  to its owner's handler then and there.

Per prediction, what ``Predict`` guarantees holds: its own end (the
status in its ``End``, mapped as a call's status is), its own cancel (sent
when its owner leaves the block; its lane is dropped at once, what comes
for it later is ignored), its own deadline (the owner's Trio deadline when
it started: past it the lane ends with ``BackendTimeout`` and is
cancelled), and an update for it that the bridge cannot read (a metric
that is not a number, say) fails it alone; a message that is not
protobuf at all ends the call. The call ending, however it ends, ends
every prediction on it with
``BackendUnavailable`` (so that those that had not started are retried),
and the next prediction opens a new call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import trio

from bridge._proto.v1 import predictor_pb2 as pb
from bridge._proto.v1 import predictor_pb2_grpc

from ..errors import BackendProtocolError, BackendTimeout, BackendUnavailable, PredictionError
from . import wire
from .interface import Metadata
from .status import map_status, status_code

__all__ = ["MANY_ADDRESSES", "MAX_START", "Batches", "Lane", "Mux", "Muxes"]

log = logging.getLogger(__name__)

#: A prediction whose request is larger goes to Predict (a request to
#: the backend carries at most 4 MiB by default).
MAX_START = 2 * 1024 * 1024

#: What a Stream's prediction ends with when the call ends under it.
ENDED_UNDER = "model backend unavailable: the Stream call ended ({})"


class Batches:
    """``async for batch in call``: a call's :meth:`receive_batch` until it
    ends (what it raises at a failed end is raised)."""

    async def receive_batch(self) -> list[wire.StreamItem]:
        raise NotImplementedError

    def __aiter__(self) -> Batches:
        return self

    async def __anext__(self) -> list[wire.StreamItem]:
        try:
            return await self.receive_batch()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class Lane(Batches):
    """The Trio end of one prediction on a ``Stream`` call: a
    :class:`~bridge.backends.interface.Call`."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._batch: list[wire.StreamItem] = []  # what came before deliver()
        self._handle: Callable[[list[wire.StreamItem]], None] | None = None
        #: How it stopped: EndOfChannel, its PredictionError, or what the
        #: handler raised; None while it goes on.
        self._stop: Exception | None = None
        self._waiters = trio.lowlevel.ParkingLot()

    # -- from the mux, in the wake-up -----------------------------------

    def feed(self, items: list[wire.StreamItem]) -> None:
        if self._stop is not None:
            return
        if self._handle is None:
            self._batch += items
            self._waiters.unpark_all()
            return
        try:
            self._handle(items)
        except Exception as exc:
            self._halt(exc)

    def finish(self, error: PredictionError | None) -> None:
        """Its end (the mux has dropped it: no cancel goes to the backend)."""
        self._halt(error if error is not None else trio.EndOfChannel())

    def _halt(self, stop: Exception) -> None:
        if self._stop is None:
            self._stop = stop
            self._handle = None
        self._waiters.unpark_all()

    # -- the Call interface ---------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._stop is not None

    def deliver(self, handle: Callable[[list[wire.StreamItem]], None]) -> None:
        batch, self._batch = self._batch, []
        if self._stop is None:
            self._handle = handle
            if batch:
                self.feed(batch)
        elif batch:  # it ended before its owner asked: what came first still goes
            try:
                handle(batch)
            except Exception as exc:
                self._stop = exc

    async def _park(self) -> None:
        """Wait for news, at most until the lane's deadline: past it the
        lane ends with BackendTimeout (even for an owner shielded from
        its own cancel, as a gRPC deadline would)."""
        if trio.current_time() >= self._deadline:
            self._halt(BackendTimeout("model backend timed out: deadline exceeded"))
            return
        with trio.CancelScope(deadline=self._deadline):
            await self._waiters.park()

    async def wait_end(self) -> None:
        while self._stop is None:
            await self._park()
        if not isinstance(self._stop, trio.EndOfChannel):
            raise self._stop

    async def receive_batch(self) -> list[wire.StreamItem]:
        while not self._batch and self._stop is None:
            await self._park()
        if self._batch:
            batch, self._batch = self._batch, []
            await trio.lowlevel.checkpoint()
            return batch
        assert self._stop is not None
        raise self._stop


@dataclass
class _Ended:
    """The call's end, after its last response."""

    why: str
    #: The backend does not implement Stream (its Describe lied).
    unimplemented: bool = False


class Mux:
    """One ``Stream`` call and the predictions on it.

    *mark* marks it ready on the loop's wake hub (its ``_wake`` then runs
    in Trio); *call_soon* runs a callback on the loop, from Trio;
    *unimplemented* is called in Trio if the backend turns out not to
    implement ``Stream``."""

    def __init__(
        self,
        mark: Callable[[Mux], None],
        call_soon: Callable[..., object],
        window: int,
        unimplemented: Callable[[], None] = lambda: None,
    ) -> None:
        self._mark = mark
        self._call_soon = call_soon
        self._window = window
        self._unimplemented = unimplemented
        # Trio side.
        self._lanes: dict[int, Lane] = {}
        self._next_key = 1
        self._consumed = 0
        #: The call ended (Trio has learnt it): open a new Mux.
        self.ended = False
        # Both: the loop appends, Trio drains (see PredictStream._push).
        self._inbox: collections.deque[pb.StreamResponse | _Ended] = collections.deque()
        self._ready = False
        # Loop side.
        self._call: grpc.aio.StreamStreamCall | None = None
        self._starts: list[pb.Start] = []
        self._cancels: list[int] = []
        self._asked = asyncio.Event()
        self._credits = asyncio.Semaphore(window)

    @property
    def running(self) -> int:
        """Predictions open on it."""
        return len(self._lanes)

    # -- asyncio side ---------------------------------------------------

    def begin(self, channel: grpc.aio.Channel, metadata: Metadata) -> None:
        """On the loop: open the call, and read and write it until it ends."""
        stub = predictor_pb2_grpc.PredictorStub(channel)
        self._call = stub.Stream(metadata=metadata or None)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write())
        reader = loop.create_task(self._read())

        def done(task: asyncio.Task[_Ended]) -> None:
            writer.cancel()
            if task.cancelled():
                end = _Ended("cancelled")
            elif (exc := task.exception()) is not None:  # grpc refused the call, say
                end = _Ended(f"{type(exc).__name__}: {exc}")
            else:
                end = task.result()
            self._push(end)

        reader.add_done_callback(done)

    def _push(self, item: pb.StreamResponse | _Ended) -> None:
        self._inbox.append(item)
        if not self._ready:
            self._ready = True
            self._mark(self)

    async def _read(self) -> _Ended:
        """Every response into the inbox; why the call ended."""
        assert self._call is not None
        try:
            while True:
                response = await self._call.read()
                if response is grpc.aio.EOF:
                    return _Ended("the backend closed it")
                if response is None:  # grpc.aio could not decode it (and logged why)
                    return _Ended("it sent a message that cannot be decoded")
                self._push(response)
                await self._credits.acquire()
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
            if code is grpc.StatusCode.UNIMPLEMENTED:
                why = "the backend does not implement it: its predictions go to Predict now"
                return _Ended(why, unimplemented=True)
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            return _Ended(f"{getattr(code, 'name', 'error')}: {details}")
        finally:
            self._call.cancel()

    async def _write(self) -> None:
        """What Trio asked since the last write, as one request each time."""
        assert self._call is not None
        with contextlib.suppress(Exception):  # the call failed: the reader says why
            while True:
                await self._asked.wait()
                self._asked.clear()
                starts, self._starts = self._starts, []
                cancels, self._cancels = self._cancels, []
                for request in _requests(starts, cancels):
                    await self._call.write(request)

    def close(self) -> None:
        """On the loop: end the call (its predictions end as it does)."""
        if self._call is not None:
            self._call.cancel()

    def _ask_start(self, key: int, request: pb.PredictRequest) -> None:
        self._starts.append(pb.Start(key=key, request=request))
        self._asked.set()

    def _ask_cancel(self, key: int) -> None:
        self._cancels.append(key)
        self._asked.set()

    def _return_credits(self, count: int) -> None:
        for _ in range(count):
            self._credits.release()

    # -- Trio side ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, request: pb.PredictRequest) -> AsyncIterator[Lane]:
        """Start *request* on the call; leaving the block cancels it if it
        is running."""
        if self.ended:
            raise BackendUnavailable(ENDED_UNDER.format("before it started"))
        # A caller cancelled already starts nothing: its effective deadline
        # would read -inf, which the lane would take for its own deadline.
        await trio.lowlevel.checkpoint_if_cancelled()
        key, self._next_key = self._next_key, self._next_key + 1
        lane = self._lanes[key] = Lane(trio.current_effective_deadline())
        try:
            self._call_soon(self._ask_start, key, request)
            yield lane
        finally:
            if self._lanes.pop(key, None) is not None and not self.ended:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self._call_soon(self._ask_cancel, key)

    def _wake(self) -> None:
        """In Trio's wake-up: each prediction's news to its lane."""
        self._ready = False
        inbox, lanes = self._inbox, self._lanes
        while inbox:
            response = inbox.popleft()
            if isinstance(response, _Ended):
                self._end(response)
                return
            self._consumed += 1
            for update in response.updates:
                lane = lanes.get(update.key)
                if lane is None:  # cancelled meanwhile: what it sent is dropped
                    continue
                try:
                    items = [wire.stream_item_from_pb(r) for r in update.responses]
                except ValueError as exc:
                    lane.finish(BackendProtocolError(f"model backend sent {exc}"))
                    continue  # its owner leaves the block, which cancels it
                if update.started:
                    items.insert(0, wire.Started())
                if items:
                    lane.feed(items)
                if update.HasField("end"):
                    del lanes[update.key]
                    lane.finish(_ended(update.end))
        if self._consumed >= self._window // 2:
            count, self._consumed = self._consumed, 0
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._call_soon(self._return_credits, count)

    def _end(self, end: _Ended) -> None:
        self.ended = True
        if end.unimplemented:
            self._unimplemented()
        lanes, self._lanes = self._lanes, {}
        error = BackendUnavailable(ENDED_UNDER.format(end.why))
        for lane in lanes.values():
            lane.finish(error)


#: The most a request to the backend may carry (its server's default limit
#: is 4 MiB): starts beyond it go in the next request.
MAX_REQUEST = 3 * 1024 * 1024


def _requests(starts: list[pb.Start], cancels: list[int]) -> list[pb.StreamRequest]:
    """*starts* and *cancels* in as few requests as :data:`MAX_REQUEST` allows."""
    requests = [pb.StreamRequest(cancel=cancels)]
    size = 0
    for start in starts:
        weight = start.ByteSize()
        if size + weight > MAX_REQUEST and requests[-1].start:
            requests.append(pb.StreamRequest())
            size = 0
        requests[-1].start.append(start)
        size += weight
    return requests


#: The most Stream calls to one target (one per set of call metadata).
MAX_MUXES = 8

#: A target that names several addresses (``dns:///name:port``,
#: ``ipv4:a:port,b:port``) is gRPC's to balance call by call (round_robin
#: over them, each address's grpc.health.v1 watched, so one that is down
#: or NOT_SERVING gets no calls): on Predict, since one long Stream call
#: would pin them all to one address.
MANY_ADDRESSES = ("dns:", "ipv4:", "ipv6:")


class Muxes:
    """The Stream calls of one gRPC loop: which targets offer Stream (their
    Describe said so), and a :class:`Mux` per target and call metadata."""

    def __init__(
        self, mark: Callable[[Mux], None], call_soon: Callable[..., object], window: int
    ) -> None:
        self._mark = mark
        self._call_soon = call_soon
        self._window = window
        self._targets: set[str] = set()
        #: Targets that said multiplexed and answered Stream UNIMPLEMENTED:
        #: on Predict from then on, whatever Describe says.
        self._refused: set[str] = set()
        self._muxes: dict[tuple[str, Metadata], Mux] = {}

    @property
    def running(self) -> int:
        return sum(mux.running for mux in self._muxes.values())

    def said(self, target: str, multiplexed: bool) -> None:
        """What *target*'s Describe said."""
        if multiplexed and target not in self._refused:
            self._targets.add(target)
        else:
            self._targets.discard(target)

    def _refuse(self, target: str) -> None:
        self._refused.add(target)
        self._targets.discard(target)

    def get(
        self,
        target: str,
        metadata: Metadata,
        request: pb.PredictRequest,
        channel: Callable[[str], grpc.aio.Channel],
    ) -> Mux | None:
        """The Stream call for *request* to *target* (a new one if the last
        has ended), or None: Predict. Predict carries a target that does not
        offer Stream or names several addresses, a request over
        :data:`MAX_START`, and metadata past :data:`MAX_MUXES` sets at once
        (forwarded request headers vary), an idle call making room."""
        if target not in self._targets or target.startswith(MANY_ADDRESSES):
            return None
        key = (target, metadata)
        mux = self._muxes.get(key)
        if mux is not None and not mux.ended:
            return mux if request.ByteSize() <= MAX_START else None
        if request.ByteSize() > MAX_START:
            return None
        self._muxes.pop(key, None)
        mine = [k for k in self._muxes if k[0] == target]
        for other in mine:
            if self._muxes[other].ended:
                del self._muxes[other]
        mine = [k for k in self._muxes if k[0] == target]
        if len(mine) >= MAX_MUXES:
            idle = next((k for k in mine if not self._muxes[k].running), None)
            if idle is None:
                return None
            self._call_soon(self._muxes.pop(idle).close)
        refuse = functools.partial(self._refuse, target)
        mux = self._muxes[key] = Mux(self._mark, self._call_soon, self._window, refuse)
        self._call_soon(lambda: mux.begin(channel(target), metadata))
        return mux


def _ended(end: pb.End) -> PredictionError | None:
    if end.code == 0:
        return None
    return map_status(status_code(end.code), end.message)
