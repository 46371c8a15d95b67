"""Following a prediction's log over HTTP: the one reader loop, the
keep-alive clock, and the SSE response.

A stream request is a reader with a cursor into the prediction's
:class:`~bridge.core.events.EventLog` (:func:`follow`). Each time it wakes
(once per batch the prediction appended) it reads every event available,
in slices of at most :data:`~bridge.core.events.SLICE_BYTES`, so a late or
slow reader holds one slice at a time, never the backlog nor a whole large
event (one larger than a slice is read a slice at a time). What it reads
is frames (Replicate's stream, :func:`sse_body`) or records that another
API re-frames (OpenAI's, :mod:`bridge.http.openai_api`); after the log
closes (after ``done``) it ends.

A reader that has caught up waits for news as the log's follower
(:class:`_Follower`). On an HTTP/1.x connection over plain TCP it is
written to in the log's append itself: the new events go to its socket
there and then (:class:`bridge._compat.hypercorn_tcp.ChunkWriter`), with no
wake-up of the reader's task and no pass through Quart's and hypercorn's
response machinery, the live stream's hot path (17% less CPU per paced
event). Its task is woken when that cannot be done (the socket does not
take it all, the events are more than a slice), and when the log closes
or the keep-alive clock ticks; it then writes the usual way, the rest of
a partly written event first.

The keep-alive clock (:class:`KeepAlive`) is one task for every stream:
every third of ``ping_seconds`` it wakes each reader waiting for
news, and one that has been quiet for two thirds of it writes a ``:
ping`` (:class:`Quiet`), so at least every ``ping_seconds``. (A
timer per reader, a cancel scope per wait, was 5% of a paced stream's
CPU.)

A reader never changes the prediction: its disconnect is nothing to the
prediction. (A stream that *owns* its prediction, the direct streaming
create, cancels it when its request ends, whether or not this body ever
started: see :func:`bridge._compat.quart_trio.when_request_ends`.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import trio
from prometheus_client import Gauge
from quart import Response

from .. import sse
from .._compat.hypercorn_tcp import ChunkWriter, chunk_writer
from ..core.events import SLICE_BYTES, EventLog

__all__ = [
    "SSE_HEADERS",
    "KeepAlive",
    "Quiet",
    "follow",
    "head_response",
    "sse_body",
    "sse_response",
    "streaming",
]

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}

T = TypeVar("T")

#: How a reader reads its log from a position: what it got, and the next
#: position (:meth:`EventLog.read` for frames, :meth:`EventLog.read_records`).
Read = Callable[[int, int, int], tuple[T, int, int]]


class KeepAlive:
    """The keep-alive clock of every stream (see the module's docstring):
    runs from :meth:`run` until :meth:`stop`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        #: The readers waiting for news now; a dict, so that one leaves in O(1).
        self._waiting: dict[_Follower, None] = {}
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            while True:
                await trio.sleep(self.seconds / 3)
                for follower in tuple(self._waiting):
                    follower.wake()

    def stop(self) -> None:
        self._scope.cancel()

    def add(self, follower: _Follower) -> None:
        """*follower* waits for news: wake it at each tick."""
        self._waiting[follower] = None

    def remove(self, follower: _Follower) -> None:
        del self._waiting[follower]


class Quiet:
    """When a stream last wrote, and whether it is time for a ``: ping``
    (two thirds of *keepalive* since; asked at each tick of the clock, a
    third of it apart, so one goes at least every *keepalive* seconds)."""

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self.since = trio.current_time()

    def wrote(self) -> None:
        self.since = trio.current_time()

    def ping_due(self) -> bool:
        return trio.current_time() - self.since >= self.keepalive * 2 / 3


async def follow(
    events: EventLog,
    start: int,
    read: Read[T],
    clock: KeepAlive,
    quiet: Quiet,
    writer: ChunkWriter | None = None,
) -> AsyncIterator[T | None]:
    """What *read* gets of the events from *start* on, every one available
    at each wake-up (a slice at most), until the log closes; None when
    woken with nothing new (a tick of *clock*: time, maybe, for a ping).
    With *writer* (*read* then reads frames), a caught-up reader is written
    to in the log's append (see the module's docstring), and *quiet* hears
    of what it wrote there."""
    cursor, part = start, 0
    while True:
        if writer is not None and writer.backed_up:
            await writer.flush()
        if cursor < len(events):
            got, cursor, part = read(cursor, SLICE_BYTES, part)
            yield got
        elif events.closed:
            return
        else:
            follower = _Follower(events, cursor, writer)
            events.follow(follower)
            clock.add(follower)
            try:
                await follower.woken.park()
            finally:
                clock.remove(follower)
                events.unfollow(follower)
            cursor, part = follower.cursor, follower.part
            if follower.wrote_at > quiet.since:
                quiet.since = follower.wrote_at
            if cursor >= len(events) and not events.closed:
                yield None


class _Follower:
    """A caught-up reader, written to in the log's append when it has a
    writer: no wake-up of its task and no pass through the response
    machinery per event. Its task is woken when there is no writer (HTTP/2,
    TLS) or it declines or backs up, and when the log closes or the clock
    ticks."""

    def __init__(self, events: EventLog, cursor: int, writer: ChunkWriter | None) -> None:
        self.events = events
        self.cursor = cursor
        self.part = 0  # how far into event cursor it wrote (an event read in pieces)
        self.writer = writer if writer is not None and writer.arm() else None
        self.wrote_at = -math.inf
        self.woken = trio.lowlevel.ParkingLot()
        self._awake = False

    def news(self) -> None:
        if self._awake:
            return
        if self.writer is None:
            self.wake()
            return
        data, end, part = self.events.read(self.cursor, SLICE_BYTES)
        if not self.writer.write_nowait(data):
            self.wake()
            return
        self.cursor, self.part = end, part
        self.wrote_at = trio.current_time()
        if self.writer.backed_up or end < len(self.events):
            self.wake()

    def wake(self) -> None:
        self._awake = True
        self.woken.unpark_all()


async def sse_body(
    events: EventLog, start: int, clock: KeepAlive, clients: Gauge | None = None
) -> AsyncIterator[bytes]:
    """Replicate's stream: the log's frames from event *start* on, and a
    ``: ping`` when quiet. *clients* counts the streams open."""
    quiet = Quiet(clock.seconds)
    with streaming(clients):
        async for data in follow(events, start, events.read, clock, quiet, chunk_writer()):
            if data is not None:
                yield data
            elif quiet.ping_due():
                yield sse.KEEPALIVE
            else:
                continue
            quiet.wrote()


@contextlib.contextmanager
def streaming(clients: Gauge | None) -> Iterator[None]:
    """Count a stream in *clients* while its body runs."""
    if clients is None:
        yield
        return
    clients.inc()
    try:
        yield
    finally:
        clients.dec()


def sse_response(
    body: AsyncIterator[bytes], *, status: int = 200, location: str | None = None
) -> Response:
    """An SSE response whose body is *body*: its headers, and no time limit
    (Quart's would cut the stream at 60 s)."""
    headers = dict(SSE_HEADERS)
    if location is not None:
        headers["Location"] = location
    response = Response(body, status=status, content_type="text/event-stream", headers=headers)
    response.timeout = None
    return response


def head_response() -> Response:
    """What a HEAD of a stream gets: a stream's headers, no body."""
    return Response(b"", content_type="text/event-stream", headers=SSE_HEADERS)
