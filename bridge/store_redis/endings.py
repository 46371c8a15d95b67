"""How the store ends a prediction that its own task cannot end: its
process stopped (a survivor ends it), Redis refused its output, or this
process lost its lease or Redis for too long. Each ends as failed through
the lifecycle table (:func:`~bridge.core.predictions.failed_record`), in
Redis first where it can be, and then here exactly as Redis ended it."""

from __future__ import annotations

import time
from typing import Any

from ..core.events import HeldEventLog, Span, ending
from ..core.predictions import Prediction, Status, failed_record
from . import codec
from .db import Db
from .scripts import FAIL, end_args

__all__ = [
    "LOST_TRACK",
    "ORPHANED",
    "REFUSED",
    "STORE_AWAY",
    "VANISHED",
    "Ending",
    "end_as",
    "ending_here",
    "fail_in_store",
]

#: The error of a prediction whose bridge process stopped while it ran.
ORPHANED = "the bridge process running this prediction stopped; retry it"
#: A copy's end when its log in Redis skips events (not seen: a guard).
LOST_TRACK = "this bridge lost track of the prediction's events; reconnect to resume"
#: The error of a prediction ended because Redis stopped answering.
STORE_AWAY = "the prediction store (Redis) stopped answering; retry the prediction"
#: The error of a prediction whose output Redis refused to keep.
REFUSED = "the prediction store (Redis) refused to keep its output ({}); retry it later"
#: The error of a copy whose prediction is no longer in Redis.
VANISHED = "the prediction store (Redis) no longer holds this prediction (was it restarted empty?)"

#: A prediction's ending: its log's last span and the record it carries.
Ending = tuple[Span, dict[str, Any]]


async def fail_in_store(db: Db, prediction_id: str, process: str, error: str) -> Ending | None:
    """End the prediction run by *process* as failed with *error* in Redis,
    unless it has ended there already: the ending its log has then, or
    None if Redis no longer holds it."""
    client, keys = db.client, db.keys
    key, log_key = keys.record(prediction_id), keys.log(prediction_id)
    while True:
        record_bytes = await client.get(key)
        if record_bytes is None:
            return None
        record = codec.decode(record_bytes)
        if Status(record["status"]).terminal:
            last = await client.xrevrange(log_key, "+", "-", count=1)
            ended = codec.record_in(last[0].field_values) if last else None
            if ended is None:
                return None  # its log expired or was trimmed
            return codec.span_in(last[0].field_values), ended
        now = time.time()
        record = failed_record(record, error, now)
        span = ending(0, error)
        start = await db.scripts.run(
            FAIL,
            keys.end(prediction_id, process),
            [
                record_bytes, codec.encode_json(record), span.payload, span.lengths, span.kinds,
                span.seconds, *end_args(db.settings, prediction_id, now, record.get("owner")),
            ],
        )  # fmt: skip
        if start == -2:
            return None
        if start != -1:  # else the record changed meanwhile: again
            return span._replace(start=int(start)), record


def ending_here(prediction: Prediction, shown: str, error: str) -> Ending:
    """How a prediction of this process that Redis cannot end ends here:
    what its readers here have seen (its status *shown*: what Redis last
    took), then *error*."""
    record = prediction.record(with_input=False) | {"status": shown}
    return ending(len(prediction.events), error), failed_record(record, error, time.time())


def end_as(prediction: Prediction, span: Span, record: dict[str, Any]) -> None:
    """End *prediction* here as the store ended it: its log with *span*
    (whatever was appended here and never shown gives way), its status and
    times as *record* says."""
    events = prediction.events
    if isinstance(events, HeldEventLog) and not events.closed:
        events.replace_tail(span)
    prediction.refresh(record)
