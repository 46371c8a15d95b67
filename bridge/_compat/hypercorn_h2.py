"""Hypercorn's HTTP/2 (over TLS by ALPN, or as h2c), held to the bounds
HTTP/1.1 has: one bounded buffer per response whatever the client's flow-
control windows, a reader that takes nothing for ``stall_seconds`` reset,
the writers of a connection whose client went let go at once.

What of hypercorn's is private here: ``H2Protocol.stream_buffers`` (a dict
it fills with a new ``StreamBuffer(event_class)`` per stream, pushed to,
drained and popped from), ``priority``, ``connection``, ``_flush`` and
``_close_stream``; ``StreamBuffer``'s ``buffer``, ``_complete``,
``_is_empty`` and ``_paused``. ``tests/test_compat.py`` pins what they do."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

import h2.errors
import h2.exceptions
import priority
import trio
from hypercorn.events import Closed
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import (
    BUFFER_HIGH_WATER,
    BUFFER_LOW_WATER,
    BufferCompleteError,
    H2Protocol,
    StreamBuffer,
)

__all__ = ["BoundedH2"]

log = logging.getLogger("bridge.http")


class _Stalled(Exception):
    """A stream's reader accepted nothing for ``stall_seconds``."""


class _StreamBuffer(StreamBuffer):
    """What one HTTP/2 response has written and the client has not taken
    yet, bounded whatever the client does with its flow-control window.

    Hypercorn's lets the writer go on whenever a send takes less than half
    of its bound, which a closed window (a send of nothing) always does:
    each reader then held everything it was sent. Here the writer waits
    while the buffer holds :data:`BUFFER_HIGH_WATER` or more, and for at
    most *stall* seconds of no progress, then :class:`_Stalled` is raised;
    so is waiting to finish (:meth:`drain`)."""

    def __init__(self, event_class: Any, stall: float) -> None:
        super().__init__(event_class)
        self.stall = stall
        self._sent_at = trio.current_time()

    async def push(self, data: bytes) -> None:
        if self._complete:
            raise BufferCompleteError()
        if not self.buffer:
            self._sent_at = trio.current_time()  # the stall clock starts now
        self.buffer.extend(data)
        await self._is_empty.clear()
        while len(self.buffer) >= BUFFER_HIGH_WATER and not self._complete:
            await self._paused.clear()
            await self._wait(self._paused)

    async def pop(self, max_length: int) -> bytes:
        data = bytes(self.buffer[:max_length])
        del self.buffer[:max_length]
        if data:
            self._sent_at = trio.current_time()
        if len(self.buffer) < BUFFER_LOW_WATER:
            await self._paused.set()
        if not self.buffer:
            await self._is_empty.set()
        return data

    async def drain(self) -> None:
        await self._wait(self._is_empty)

    async def _wait(self, event: Any) -> None:
        """Wait for *event* while the reader takes something at least every
        *stall* seconds; raise :class:`_Stalled` once it has not."""
        while not event.is_set():
            with trio.move_on_at(self._sent_at + self.stall):
                await event.wait()
            if not event.is_set() and trio.current_time() >= self._sent_at + self.stall:
                raise _Stalled()


class _StreamBuffers(dict[int, StreamBuffer]):
    """``H2Protocol.stream_buffers``, holding the bridge's buffers: each
    buffer hypercorn makes for a new stream is replaced by one of ours."""

    def __init__(self, event_class: Any, stall: float) -> None:
        super().__init__()
        self.event_class, self.stall = event_class, stall

    def __setitem__(self, stream_id: int, buffer: StreamBuffer) -> None:
        super().__setitem__(stream_id, _StreamBuffer(self.event_class, self.stall))


class BoundedH2(H2Protocol):
    """Hypercorn's HTTP/2, held to the bounds HTTP/1.1 has: one bounded
    buffer per response whatever the client's windows (a reader that takes
    nothing for ``stall_seconds`` gets RST_STREAM and its request ends),
    and when the connection goes, every response waiting on it is let go
    (hypercorn's waited for window credit forever: the connection stayed in
    CLOSE-WAIT, and graceful shutdown never finished)."""

    def __init__(self, *args: Any, stall_seconds: float) -> None:
        super().__init__(*args)
        self.stream_buffers = _StreamBuffers(self.context.event_class, stall_seconds)
        self.gone = False

    async def stream_send(self, event: Any) -> None:
        if self.gone and isinstance(event, StreamClosed):
            # Not "idle" (hypercorn's), which would keep the connection's
            # tasks for keep_alive_seconds after its client went.
            await self._close_stream(event.stream_id)
            return
        try:
            await super().stream_send(event)
        except _Stalled:
            log.info("HTTP/2 stream %d took nothing for stall_seconds: reset", event.stream_id)
            await self._cut(event.stream_id)

    async def _cut(self, stream_id: int) -> None:
        buffer = self.stream_buffers.pop(stream_id, None)
        if buffer is not None:
            await buffer.close()
        with suppress(priority.priority.MissingStreamError):
            self.priority.remove_stream(stream_id)
        with suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            await self._flush()
        await self._close_stream(stream_id)

    async def handle(self, event: Any) -> None:
        if not isinstance(event, Closed):
            await super().handle(event)
        elif not self.gone:
            self.gone = True
            await super().handle(event)
            # Nothing will take what is buffered: let its writers go; and
            # the connection closes now (TCPServer closes its socket).
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()
            await self.send(Closed())
