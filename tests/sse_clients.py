"""Two real SSE parsers to read our streams back, as clients do.

* ``spec_events``: httpx-sse's decoder, which follows the WHATWG parsing
  rules (lines end at ``\\r\\n``, ``\\r`` or ``\\n``), as browsers'
  ``EventSource`` does.
* ``replicate_events``: Replicate's own Python client decoder
  (``replicate.stream.EventSource.Decoder``) fed by httpx's ``LineDecoder``,
  which splits like ``str.splitlines`` -- exactly how ``replicate`` 1.0.7
  reads a stream.

Both take the raw bytes in whatever pieces they arrived in.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from dataclasses import dataclass

from httpx._decoders import LineDecoder
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from replicate.stream import EventSource


@dataclass(frozen=True)
class Ev:
    event: str
    id: str
    data: str


def spec_events(pieces: Iterable[bytes]) -> list[Ev]:
    text = codecs.getincrementaldecoder("utf-8")()
    lines, decoder, out = SSELineDecoder(), SSEDecoder(), []
    for piece in pieces:
        for line in lines.decode(text.decode(piece)):
            if (sse := decoder.decode(line)) is not None:
                out.append(Ev(sse.event, sse.id, sse.data))
    for line in lines.flush():
        if (sse := decoder.decode(line)) is not None:
            out.append(Ev(sse.event, sse.id, sse.data))
    return out


def replicate_events(pieces: Iterable[bytes]) -> list[Ev]:
    text = codecs.getincrementaldecoder("utf-8")()
    lines, decoder, out = LineDecoder(), EventSource.Decoder(), []
    for piece in pieces:
        for line in lines.decode(text.decode(piece)):
            # Exactly what replicate.stream.EventSource.__iter__ does per line
            # (it raises ValueError on an event name it does not know).
            if (sse := decoder.decode(line.rstrip("\n"))) is not None:
                out.append(Ev(sse.event.value, sse.id, sse.data))
    for line in lines.flush():
        if (sse := decoder.decode(line.rstrip("\n"))) is not None:
            out.append(Ev(sse.event.value, sse.id, sse.data))
    return out


PARSERS = {"spec": spec_events, "replicate": replicate_events}
