"""What a model produced and has not written to the bridge yet.

Each prediction has an :class:`Outbox`: its producer (the model's
generator, on the loop or in a worker thread, or a batching model's step
loop) puts items in it. The outboxes of one gRPC call share a
:class:`Board`: a ``Predict`` call's board has one outbox, a ``Stream``
call's has one per prediction on it. The call's writer takes, each time its
previous write completed, everything every outbox on its board holds, and
writes it as one message: the tokens a model yields while a write is in
flight go out together, the tokens of every prediction on a ``Stream``
too, and a token that comes alone goes out at once. At most
:data:`OUTBOX_LIMIT` items wait in one outbox; past that its producer
waits.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

from bridge._proto.v1 import predictor_pb2

from ..backends import wire

__all__ = [
    "MESSAGE_BYTES",
    "OUTBOX_LIMIT",
    "Board",
    "News",
    "Outbox",
    "drain_generator",
    "messages",
]

#: A batch is split into messages of about this many bytes of text, far
#: below gRPC's 4 MiB default limit on a received message.
MESSAGE_BYTES = 64 * 1024

#: Items a model may produce ahead of what was written to the bridge.
OUTBOX_LIMIT = 1024


class News(NamedTuple):
    """What one outbox held when the writer took it."""

    outbox: Outbox
    #: Its prediction started since the writer last took it.
    started: bool
    items: list[Any]
    #: Whether its prediction has ended (it sends nothing more), and how.
    ended: bool
    error: BaseException | None


class Board:
    """The outboxes of one call that have news, for its writer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Guards every outbox on the board (producers may be threads).
        self.lock = threading.Lock()
        self._ready = asyncio.Event()
        self._news: list[Outbox] = []

    def post(self, outbox: Outbox) -> None:
        """Under the lock: *outbox* has news the writer has not seen."""
        self._news.append(outbox)

    def wake(self) -> None:
        """On the loop: tell the writer there is news."""
        self._ready.set()

    def wake_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[News]:
        """Everything every outbox with news holds, once woken (by news, or
        by :meth:`wake` with none: then an empty list)."""
        await self._ready.wait()
        self._ready.clear()
        with self.lock:
            posted, self._news = self._news, []
            news = [outbox._take() for outbox in posted]
        for outbox in posted:
            outbox._taken.set()
        return news


class Outbox:
    """One prediction's items, on its call's board."""

    def __init__(self, board: Board, key: int = 0, limit: int = OUTBOX_LIMIT) -> None:
        self.board = board
        #: Its prediction's number on a Stream call (0 on a Predict call).
        self.key = key
        self._limit = limit
        self._room = threading.Condition(board.lock)  # for a producer thread
        self._taken = asyncio.Event()  # for a producer on the loop
        self._items: list[Any] = []
        self._posted = False  # on the board, not taken yet
        self._ended = False
        self._error: BaseException | None = None
        self._cancelled = False
        self._start_pending = False
        #: Called (on the loop) when it ends.
        self.on_end: Callable[[], None] | None = None

    def _post(self) -> bool:
        """Under the lock: post this outbox if it is not posted; whether
        the writer must now be told (once per batch)."""
        if self._posted:
            return False
        self._posted = True
        self.board.post(self)
        return True

    def _take(self) -> News:
        """Under the lock, for the writer."""
        items, self._items = self._items, []
        started, self._start_pending = self._start_pending, False
        self._posted = False
        self._room.notify_all()
        return News(self, started, items, self._ended, self._error)

    @property
    def full(self) -> bool:
        return len(self._items) >= self._limit

    def put_nowait(self, item: Any) -> bool:
        """Add *item* (on the loop thread), even past the limit: for a
        producer that waits on :meth:`wait_room` itself. Whether the writer
        was told (the first item since its last take)."""
        with self.board.lock:
            self._items.append(item)
            tell = self._post()
        if tell:
            self.board.wake()
        return tell

    async def wait_room(self) -> None:
        """Until this outbox is below its limit, or ended or cancelled (its
        call gone: nothing will take from it again), on the loop thread."""
        while self.full and not (self._ended or self._cancelled):
            self._taken.clear()
            await self._taken.wait()

    async def put(self, item: Any) -> None:
        """Add *item* (on the loop thread)."""
        await self.wait_room()
        if self.put_nowait(item):
            # An idle writer sends this item now; what the model yields
            # while that write is in flight waits here, for the next batch.
            await asyncio.sleep(0)

    def put_blocking(self, item: Any) -> bool:
        """Add *item* from a worker thread; False once the call is cancelled."""
        with self.board.lock:
            while len(self._items) >= self._limit and not self._cancelled:
                self._room.wait()
            if self._cancelled:
                return False
            self._items.append(item)
            tell = self._post()
        if tell:
            self.board.wake_threadsafe()
        return True

    def start(self) -> None:
        """Its prediction started: said with its next news (on the loop)."""
        with self.board.lock:
            self._start_pending = True
            tell = self._post()
        if tell:
            self.board.wake()

    def end(self, error: BaseException | None = None) -> None:
        """No more items (on the loop thread); *error* if the model raised."""
        with self.board.lock:
            if self._ended:
                return
            self._ended, self._error = True, error
            tell = self._post()
        self._taken.set()  # a producer waiting for room: there is none to wait for
        if tell:
            self.board.wake()
        if self.on_end is not None:
            self.on_end()

    @property
    def ended(self) -> bool:
        return self._ended

    def cancel(self) -> None:
        """Stop a producer at its next item (on the loop thread)."""
        with self.board.lock:
            self._cancelled = True
            self._room.notify_all()
        self._taken.set()


def drain_generator(generator: Generator[Any, Any, Any], outbox: Outbox) -> None:
    """Run a sync generator to its end in this worker thread. Cancelled, it is
    closed right after the ``next()`` in progress returns: never while it runs."""
    try:
        for item in generator:
            if not outbox.put_blocking(item):
                return
    finally:
        generator.close()


def messages(items: list[Any]) -> Iterator[tuple[predictor_pb2.PredictResponse, int]]:
    """The fewest messages for *items*, in order, each with about its
    bytes: consecutive outputs share an ``Output`` message (up to
    :data:`MESSAGE_BYTES`). Raises ValueError at an output that is not JSON."""
    out: predictor_pb2.Output | None = None
    size = 0
    for item in items:
        if isinstance(item, wire.LogLine | wire.MetricsUpdate):
            if out is not None:
                yield predictor_pb2.PredictResponse(output=out), size
                out, size = None, 0
            if isinstance(item, wire.LogLine):
                yield wire.log_response(item.line), len(item.line)
            else:
                yield wire.metrics_response(item.values), 64
            continue
        try:
            chunk = None if isinstance(item, str) else wire.json_chunk(item)
        except ValueError:  # not JSON: what came before it goes first
            if out is not None:
                yield predictor_pb2.PredictResponse(output=out), size
            raise
        weight = len(item) if chunk is None else chunk.ByteSize()
        if out is not None and size + weight > MESSAGE_BYTES:  # a large one goes alone
            yield predictor_pb2.PredictResponse(output=out), size
            out, size = None, 0
        if out is None:
            out = predictor_pb2.Output()
        if chunk is None:
            out.chunks.add(text=item)
        else:
            out.chunks.append(chunk)
        size += weight
        if size >= MESSAGE_BYTES:
            yield predictor_pb2.PredictResponse(output=out), size
            out, size = None, 0
    if out is not None:
        yield predictor_pb2.PredictResponse(output=out), size
