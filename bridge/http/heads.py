"""Strict HTTP/1.1 request heads (pure): what h11 would accept leniently
and this server refuses with 400 before the request reaches the app (RFC
9112 section 6.3: such framing is what request smuggling behind a proxy
is made of). :mod:`bridge._compat.hypercorn_h11` applies it to each head."""

from __future__ import annotations

import re

__all__ = ["head_problem"]

_HEAD_END = re.compile(rb"\n\r?\n")


def head_problem(data: bytes) -> str | None:
    """What is wrong with the request head at the start of *data* (None if
    nothing, or if the head is not complete yet): line ends other than
    CRLF, obsolete line folding, more than one ``Content-Length``, or
    ``Content-Length`` with ``Transfer-Encoding``."""
    start = len(data) - len(data.lstrip(b"\r\n"))
    end = _HEAD_END.search(data, start)
    if end is None:
        return None
    head = data[start : end.end()]
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        return "line ends in a request head must be CRLF"
    lines = head[:-4].split(b"\r\n")
    names = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in a request head is not accepted"
        names.append(line.partition(b":")[0].strip().lower())
    lengths = names.count(b"content-length")
    if lengths > 1:
        return "more than one Content-Length"
    if lengths and b"transfer-encoding" in names:
        return "Content-Length and Transfer-Encoding together"
    return None
