"""The stream reader: one HTTP response that follows a prediction's log.

A stream request is a reader with a cursor into the prediction's
:class:`~bridge.events.EventLog`. Each time it wakes (once per batch the
prediction appended) it writes every event available in one write, in
slices of at most :data:`~bridge.events.SLICE_BYTES`, so a late or slow
reader holds one slice of encoded bytes at a time, never the backlog. When
idle it writes a ``: ping`` comment every ``keepalive`` seconds; after the
log closes (after ``done``) the response ends.

A reader never changes the prediction: its disconnect is nothing to the
prediction, except for a stream that *owns* its prediction (the direct
streaming create), whose client going away cancels it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import trio
from prometheus_client import Gauge
from quart import Response

from . import sse
from .events import SLICE_BYTES, EventLog

__all__ = ["SSE_HEADERS", "sse_body", "stream_response"]

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


async def sse_body(
    events: EventLog,
    start: int,
    keepalive: float,
    on_disconnect: Callable[[], object] | None = None,
    clients: Gauge | None = None,
) -> AsyncIterator[bytes]:
    """The stream from event *start* on. If the client goes away before the
    end, *on_disconnect* is called. *clients* counts the streams open."""
    cursor = start
    if clients is not None:
        clients.inc()
    try:
        while True:
            if cursor < len(events):
                data, cursor = events.read(cursor, SLICE_BYTES)
                yield data
            elif events.closed:
                return
            else:
                with trio.move_on_after(keepalive) as idle:
                    await events.wait_beyond(cursor)
                if idle.cancelled_caught:
                    yield sse.KEEPALIVE
    finally:
        if clients is not None:
            clients.dec()
        if on_disconnect is not None and not (events.closed and cursor >= len(events)):
            on_disconnect()


def stream_response(
    events: EventLog,
    start: int,
    *,
    keepalive: float,
    clients: Gauge | None = None,
    cancel: Callable[[], object] | None = None,
    status: int = 200,
    location: str | None = None,
) -> Response:
    """The SSE response for *events* from *start* on. With *cancel*, the
    stream owns its prediction: the client going away before the end calls it."""
    headers = dict(SSE_HEADERS)
    if location is not None:
        headers["Location"] = location
    body = sse_body(events, start, keepalive, cancel, clients)
    response = Response(body, status=status, content_type="text/event-stream", headers=headers)
    response.timeout = None  # Quart would cut the stream at 60 s
    return response
