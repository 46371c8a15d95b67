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

__all__ = ["KEEPALIVE", "LINE_BREAK", "encode_event", "normalize_line_breaks"]

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


def encode_event(event: str, event_id: str, data: str) -> bytes:
    """Frame one event; *data* may be any text, including hostile text."""
    if event not in EVENT_NAMES:
        raise ValueError(f"unknown SSE event name {event!r}")
    if LINE_BREAK.search(event_id) or "\0" in event_id:
        raise ValueError(f"SSE event id {event_id!r} would break framing")
    lines = [f"event: {event}", f"id: {event_id}"]
    lines.extend(f"data: {piece}" for piece in LINE_BREAK.split(data))
    lines.append("\n")
    return "\n".join(lines).encode()


def normalize_line_breaks(text: str) -> str:
    """What a client reads back for *text*: every line break becomes ``\\n``."""
    return LINE_BREAK.sub("\n", text)
