"""Server-sent events framing, sans I/O.

One event on the wire::

    event: output
    id: 1692041342:0
    data: Sure

Chunks are model output and so untrusted: a chunk must never be able to end
its event early or forge another one. An SSE parser (WHATWG) breaks lines at
``\\r\\n``, ``\\r`` and ``\\n``; Replicate's Python client splits with
``str.splitlines``, which also breaks at ``\\v \\f \\x1c \\x1d \\x1e \\x85
\\u2028 \\u2029``. So every one of those is a line break here: each piece
between breaks becomes its own ``data:`` line, and a client reads the breaks
back as ``\\n``. Since no piece contains any break, no line we write can be
read as anything but ``data:``. Framing uses LF only.
"""

from __future__ import annotations

import re

__all__ = [
    "DATA",
    "END",
    "EVENT_NAMES",
    "KEEPALIVE",
    "LINE_BREAK",
    "data_frame",
    "data_lines",
    "encode_event",
    "head",
    "named_frame",
    "normalize_line_breaks",
]

#: Every sequence some client of ours treats as a line break. ``\r\n`` first
#: so that it counts as one break, as SSE parsers and splitlines agree.
LINE_BREAK = re.compile("\r\n|[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")

#: A comment line: keeps proxies and clients from timing the stream out and
#: is ignored by every parser (an unknown event name would not be). No blank
#: line after it: a blank line is "dispatch", and some parsers (httpx-sse)
#: then emit an empty ``message`` event that Replicate's client would reject.
KEEPALIVE = b": ping\n"

#: Every event a stream has.
EVENT_NAMES = ("output", "logs", "error", "done")


# An event's frame is head(event) + its id + DATA + data_lines(its data)
# + END; the event log puts these parts together itself, many at a time
# (bridge.core.events), and encode_event is what they must equal.

#: After an event's id: the end of that line and the start of its data.
DATA = b"\ndata: "
#: The end of an event (a blank line dispatches it).
END = b"\n\n"


def head(event: str) -> bytes:
    """A frame's first bytes, up to its id: ``event: <event>\\nid: ``."""
    if event not in EVENT_NAMES:
        raise ValueError(f"unknown SSE event name {event!r}")
    return b"event: %b\nid: " % event.encode()


def data_lines(text: str) -> str:
    """*text* as data: each line break starts a ``data:`` line of its own."""
    return LINE_BREAK.sub(DATA.decode(), text)


def encode_event(event: str, event_id: str, data: str) -> bytes:
    """Frame one event; *data* may be any text, including hostile text."""
    if LINE_BREAK.search(event_id) or "\0" in event_id:
        raise ValueError(f"SSE event id {event_id!r} would break framing")
    return head(event) + event_id.encode() + DATA + data_lines(data).encode() + END


def data_frame(data: bytes) -> bytes:
    """An event of data alone, what OpenAI's chunks are: *data* is one line
    (JSON, whose strings escape every line break)."""
    return b"data: %b\n\n" % data


def named_frame(event: str, data: bytes) -> bytes:
    """An event named *event* (OpenAI's Responses: ``response.created``
    ...) with one line of *data* and no id."""
    if LINE_BREAK.search(event):
        raise ValueError(f"SSE event name {event!r} would break framing")
    return b"event: %b\ndata: %b\n\n" % (event.encode(), data)


def normalize_line_breaks(text: str) -> str:
    """What a client reads back for *text*: every line break becomes ``\\n``."""
    return LINE_BREAK.sub("\n", text)
