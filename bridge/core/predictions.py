"""A prediction's lifecycle and its append-only event log.

Lifecycle, as a transition table (anything else raises
:class:`IllegalTransition`)::

    starting ──> processing ──> succeeded | failed | canceled
        └───────────────────────> succeeded | failed | canceled

A prediction is *terminal* once it reaches succeeded, failed or canceled; its
status is final before its ``done`` event is appended, so a client that reads
the prediction right after ``done`` sees the final state.

Its output and logs live only in its :class:`~bridge.core.events.EventLog`: the
stream and the prediction object are two views of one record.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import secrets
import time
from typing import Any

import trio

from .. import strictjson
from .events import EventLog, MemoryEventLog, OutputBatch, log_cost

__all__ = [
    "IllegalTransition",
    "Prediction",
    "Status",
    "clock",
    "failed_record",
    "new_prediction_id",
    "owner_of",
]


class Status(enum.StrEnum):
    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})

_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.STARTING: frozenset({Status.PROCESSING}) | _TERMINAL,
    Status.PROCESSING: _TERMINAL,
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """Raised when a prediction is moved to a status its table forbids."""


def _check_move(prediction_id: str, current: Status, status: Status) -> None:
    if status not in _TRANSITIONS[current]:
        raise IllegalTransition(f"prediction {prediction_id}: {current} -> {status}")


def failed_record(record: dict[str, Any], error: str, completed_at: float) -> dict[str, Any]:
    """A :meth:`Prediction.record` ended as failed with *error*, through the
    table (:class:`IllegalTransition` if it has ended): how a store ends a
    prediction that its own task cannot end (its process stopped, or the
    store lost track of it)."""
    _check_move(record["id"], Status(record["status"]), Status.FAILED)
    return record | {"status": str(Status.FAILED), "error": error, "completed_at": completed_at}


def clock() -> float:
    """Seconds on the clock every duration is measured with: Trio's (an
    autojump clock in tests), or, outside a Trio run, a monotonic one.
    Wall time is only for the timestamps users see."""
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


def new_prediction_id() -> str:
    """26 base32 characters: 130 random bits, unguessable, like Replicate's."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]


def owner_of(token: str) -> str:
    """Who *token* is, as predictions record their owner: its SHA-256 (hex),
    never the token, in memory and in a shared store alike."""
    return hashlib.sha256(token.encode()).hexdigest()


class Prediction:
    """One prediction: its status, accumulated output and event log."""

    def __init__(
        self,
        *,
        model: str,
        version: str,
        input: dict[str, Any] | bytes,
        streams: bool = True,
        id: str | None = None,
        seq: int = 0,
        owner: str | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.id = id or new_prediction_id()
        #: Creation order, for listing newest first.
        self.seq = seq
        #: Who created it (with auth on), the only one that sees it: the
        #: :func:`owner_of` its token.
        self.owner = owner
        self.model = model
        self.version = version
        # Kept as JSON (given as such, or encoded here): its size is what it
        # costs (Python objects of a JSON body can take 20 times its bytes).
        if isinstance(input, bytes):
            self._input = input
        else:
            self._input = strictjson.dumps(input, separators=(",", ":")).encode()
        #: Bytes its output and logs take in the log (what max_output_bytes
        #: bounds); what the bridge keeps for it is this plus its input's.
        self.output_bytes = 0
        #: Its input, output and logs were let go of (retention).
        self.data_removed = False
        self.streams = streams
        self.status = Status.STARTING
        self.error: str | None = None
        self.metrics: dict[str, float] = {}
        # When it was created, started and completed: wall time, as shown.
        self.created_at = time.time()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        # The same moments, and its first and last outputs, on clock(): for
        # durations, which a wall-clock step must not make negative.
        self.created_clock = clock()
        self.started_clock: float | None = None
        self.first_output_clock: float | None = None
        self.last_output_clock: float | None = None
        self.completed_clock: float | None = None
        #: Its events (its store's kind of log; kept in memory by default).
        self.events: EventLog = events if events is not None else MemoryEventLog()

    # -- as a record ---------------------------------------------------------

    #: The fields of a record (:meth:`record`), in order.
    RECORD_FIELDS = (
        "id", "seq", "owner", "model", "version", "input", "streams", "status", "error",
        "metrics", "created_at", "started_at", "completed_at", "output_bytes", "data_removed",
    )  # fmt: skip

    def record(self, *, with_input: bool = True) -> dict[str, Any]:
        """Everything it is but its events, as plain JSON values: what a
        store kept outside this process (Redis) holds, and any process
        rebuilds it from (:meth:`from_record`); *with_input* False leaves
        out its input (a store that keeps it apart: :attr:`input_json`).
        Durations measured on this process's clock stay here; the ended
        ones are in ``metrics``."""
        values = {name: getattr(self, name) for name in self.RECORD_FIELDS if name != "input"}
        if with_input:
            values["input"] = self._input.decode()
        values["status"] = str(self.status)
        values["metrics"] = dict(self.metrics)
        return values

    @property
    def input_json(self) -> bytes:
        """Its input as the JSON it keeps (not decoded)."""
        return self._input

    @classmethod
    def from_record(cls, record: dict[str, Any], events: EventLog) -> Prediction:
        """The prediction a :meth:`record` describes, its events in *events*."""
        prediction = cls(
            model=record["model"],
            version=record["version"],
            input=record["input"].encode(),
            streams=record["streams"],
            id=record["id"],
            seq=record["seq"],
            owner=record["owner"],
            events=events,
        )
        prediction.created_at = record["created_at"]
        prediction.refresh(record)
        return prediction

    def refresh(self, record: dict[str, Any]) -> None:
        """Take what changes as it runs (status, times, metrics) from a
        newer :meth:`record` of it: a copy of a prediction that another
        process runs follows it so. The record is the store's word, which
        every process shows (its status went through the table where it
        was decided): it replaces whatever this object said and no reader
        was shown (a prediction its store ended otherwise)."""
        self.status = Status(record["status"])
        for name in ("version", "error", "started_at", "completed_at", "output_bytes"):
            setattr(self, name, record[name])
        self.metrics = dict(record["metrics"])
        self.data_removed = record["data_removed"]

    @property
    def done(self) -> bool:
        return self.status.terminal

    @property
    def input(self) -> dict[str, Any]:
        input: dict[str, Any] = json.loads(self._input)
        return input

    @property
    def input_size(self) -> int:
        """Bytes of its input, as JSON."""
        return len(self._input)

    @property
    def kept_bytes(self) -> int:
        """What keeping its data costs: input, output and logs."""
        return 0 if self.data_removed else len(self._input) + self.output_bytes

    def remove_data(self) -> None:
        """Let go of its input, output and logs (it must have ended); what
        remains is its small metadata, shown with ``data_removed``."""
        assert self.done, "only an ended prediction's data can be removed"
        self._input = b"{}"
        self.events.drop()
        self.data_removed = True

    def _move(self, status: Status) -> None:
        _check_move(self.id, self.status, status)
        self.status = status

    # -- what the model does ------------------------------------------------

    def start(self) -> None:
        self._move(Status.PROCESSING)
        self.started_at = time.time()
        self.started_clock = clock()

    @property
    def output_count(self) -> int:
        """Output chunks so far."""
        return self.events.output_count

    def add_output(self, batch: OutputBatch) -> None:
        """Append a batch of chunks (one event each, readers woken once)."""
        if self.status is Status.STARTING:
            self.start()
        if self.first_output_clock is None and batch.count:
            self.first_output_clock = clock()
        self.output_bytes += batch.cost
        self.events.append_output(batch)

    def add_log(self, line: str) -> None:
        self.output_bytes += log_cost(line)
        self.events.append_log(line)

    def add_metrics(self, values: dict[str, float], cost: int = 0) -> None:
        """Keep the model's metrics; *cost*: what their new names were
        charged (counted with its output, and given back with its data)."""
        self.output_bytes += cost
        self.metrics.update(values)

    # -- how it ends --------------------------------------------------------

    def succeed(self) -> None:
        self._finish(Status.SUCCEEDED, {})

    def fail(self, error: str) -> None:
        self.error = error
        self._finish(Status.FAILED, {"reason": "error"})

    def cancel(self) -> None:
        self._finish(Status.CANCELED, {"reason": "canceled"})

    def _finish(self, status: Status, done: dict[str, str]) -> None:
        self._move(status)
        self.completed_at = time.time()
        self.completed_clock = clock()
        self._record_timing()
        self.events.finish(self.error if status is Status.FAILED else None, done)

    def _record_timing(self) -> None:
        completed = self.completed_clock
        assert completed is not None
        # Creation to completion, queueing included, as Replicate reports it.
        self.metrics["total_time"] = round(completed - self.created_clock, 6)
        if self.started_clock is not None:
            self.metrics["predict_time"] = round(completed - self.started_clock, 6)
            if self.first_output_clock is not None:
                self.metrics["time_to_first_token"] = round(
                    self.first_output_clock - self.started_clock, 6
                )
                generating = completed - self.first_output_clock
                if generating > 0 and self.output_count > 1:
                    self.metrics["tokens_per_second"] = round(
                        (self.output_count - 1) / generating, 3
                    )
