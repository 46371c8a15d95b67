"""What the store's values hold, and how: a prediction's record (JSON),
and its log's entries (one :class:`~bridge.core.events.Span` each, with
the record when it changed)."""

from __future__ import annotations

from typing import Any

import msgspec

from ..core.events import MemoryEventLog, Span
from ..core.predictions import Prediction

__all__ = [
    "State",
    "decode",
    "empty",
    "encode_json",
    "encode_record",
    "entry",
    "raw",
    "record_around_seq",
    "record_in",
    "span_in",
    "state",
    "take",
    "text",
]

#: What a record says that changes as a prediction runs, output aside.
State = tuple[str, str, tuple[tuple[str, float], ...]]


def state(prediction: Prediction) -> State:
    return (str(prediction.status), prediction.version, tuple(prediction.metrics.items()))


def encode_record(prediction: Prediction, process: str) -> bytes:
    """*prediction*'s record as Redis keeps it: without its input (kept
    apart, expiring with its data), naming the *process* running it."""
    record = prediction.record(with_input=False)
    record["process"] = process
    return encode_json(record)


def record_around_seq(prediction: Prediction, process: str) -> tuple[bytes, bytes]:
    """*prediction*'s record (:func:`encode_record`) before and after its
    ``seq``, which Redis numbers when it adds the prediction (the ADD
    script puts the number between the two)."""
    assert prediction.seq == 0, "a prediction is numbered when it is added"
    head, mark, tail = encode_record(prediction, process).partition(_SEQ)
    assert mark and _SEQ not in head, "a record begins with its id, then its seq"
    return head + b',"seq":', b"," + tail


#: Where a record's seq (0) is: after its id, which has no quotes.
_SEQ = b',"seq":0,'


def encode_json(record: dict[str, Any]) -> bytes:
    return msgspec.json.encode(record)


def decode(record: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(record)
    return decoded


def entry(span: Span) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """A log entry's ``i p l k t`` values (the record, if any, follows)."""
    return str(span.start).encode(), span.payload, span.lengths, span.kinds, span.seconds


def empty(start: int) -> Span:
    """No events, from *start*: what carries a new record alone."""
    return Span(start, b"", b"", b"", b"")


def span_in(fields: Any) -> Span:
    return Span(int(fields[b"i"]), fields[b"p"], fields[b"l"], fields[b"k"], fields[b"t"])


def record_in(fields: Any) -> dict[str, Any] | None:
    record = fields.get(b"r")
    return None if record is None else decode(record)


def take(events: MemoryEventLog, span: Span) -> bool:
    """Append *span* to a copy unless it holds it already (a write retried
    after a timeout can send a span twice) or has ended; False if it cannot
    follow (a gap: the copy is to be dropped, and read again if asked)."""
    if span.start + len(span.kinds) <= len(events) or events.closed:
        return True  # seen already, or after the end: nothing to add
    if span.start != len(events):  # a gap (or a part seen: spans never overlap so)
        return False
    events.extend(span)
    return True


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
