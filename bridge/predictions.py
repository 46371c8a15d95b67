"""A prediction's lifecycle and its append-only event log.

Lifecycle, as a transition table (anything else raises
:class:`IllegalTransition`)::

    starting ──> processing ──> succeeded | failed | canceled
        └───────────────────────> succeeded | failed | canceled

A prediction is *terminal* once it reaches succeeded, failed or canceled; its
status is final before its ``done`` event is appended, so a client that reads
the prediction right after ``done`` sees the final state.

The :class:`EventLog` holds every SSE event of one prediction, in order, with
ids ``<unix seconds>:<n>`` where ``n`` is the event's index in the log. A
stream request is only a reader with a cursor into the log, so any number of
readers, late joiners and ``Last-Event-ID`` resumes cost the prediction
nothing and never change what it does.
"""

from __future__ import annotations

import base64
import enum
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

__all__ = [
    "Event",
    "EventLog",
    "IllegalTransition",
    "Prediction",
    "Status",
    "iso_time",
    "new_prediction_id",
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


def new_prediction_id() -> str:
    """26 base32 characters: 130 random bits, unguessable, like Replicate's."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    id: str
    data: str


class EventLog:
    """Append-only list of events that readers follow by index."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._closed = False
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, name: str, data: str) -> Event:
        if self._closed:
            raise RuntimeError("event log is closed")
        event = Event(name, f"{int(time.time())}:{len(self._events)}", data)
        self._events.append(event)
        self._notify()
        return event

    def close(self) -> None:
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def read(self, start: int) -> list[Event]:
        """The events from index *start* on (possibly none yet)."""
        return self._events[start:]

    async def wait_beyond(self, index: int) -> None:
        """Wait until the log holds more than *index* events or is closed."""
        while len(self._events) <= index and not self._closed:
            await self._changed.wait()

    async def wait_closed(self) -> None:
        """Wait until the log is closed (its prediction has ended)."""
        while not self._closed:
            await self._changed.wait()

    def index_after(self, last_event_id: str) -> int:
        """Where a reader that saw *last_event_id* resumes.

        Raises ``ValueError`` for an id this log could not have written.
        """
        seconds, sep, n = last_event_id.strip().partition(":")
        if not (sep and seconds.isdigit() and n.isdigit()):
            raise ValueError(f"Last-Event-ID {last_event_id!r} is not of the form <seconds>:<n>")
        return int(n) + 1


def iso_time(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as Replicate writes times."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class Prediction:
    """One prediction: its status, accumulated output and event log."""

    def __init__(
        self,
        *,
        model: str,
        version: str,
        input: dict[str, Any],
        streams: bool = True,
        id: str | None = None,
        seq: int = 0,
        owner: str | None = None,
    ) -> None:
        self.id = id or new_prediction_id()
        #: Creation order, for listing newest first.
        self.seq = seq
        #: The token that created it (with auth on), the only one that sees it.
        self.owner = owner
        self.output_bytes = 0
        self.model = model
        self.version = version
        self.input = input
        self.streams = streams
        self.status = Status.STARTING
        self.output: list[Any] = []
        self.logs: list[str] = []
        self.error: str | None = None
        self.metrics: dict[str, float] = {}
        self.created_at = time.time()
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self.events = EventLog()
        #: Cancelling this cancels the prediction's task (and its gRPC call).
        self.cancel_scope = trio.CancelScope()

    @property
    def done(self) -> bool:
        return self.status.terminal

    def _move(self, status: Status) -> None:
        if status not in _TRANSITIONS[self.status]:
            raise IllegalTransition(f"prediction {self.id}: {self.status} -> {status}")
        self.status = status

    # -- what the model does ------------------------------------------------

    def start(self) -> None:
        self._move(Status.PROCESSING)
        self.started_at = time.time()

    def add_output(self, chunks: list[Any]) -> None:
        if self.status is Status.STARTING:
            self.start()
        if self.first_output_at is None and chunks:
            self.first_output_at = time.time()
        for chunk in chunks:
            self.output.append(chunk)
            self.events.append("output", chunk if isinstance(chunk, str) else json.dumps(chunk))

    def add_log(self, line: str) -> None:
        self.logs.append(line)
        self.events.append("logs", line)

    def add_metrics(self, values: dict[str, float]) -> None:
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
        self._record_timing()
        if status is Status.FAILED:
            self.events.append("error", json.dumps({"detail": self.error}))
        self.events.append("done", json.dumps(done, separators=(",", ":")))
        self.events.close()

    def _record_timing(self) -> None:
        assert self.completed_at is not None
        if self.started_at is not None:
            self.metrics["predict_time"] = round(self.completed_at - self.started_at, 6)
            if self.first_output_at is not None:
                self.metrics["time_to_first_token"] = round(
                    self.first_output_at - self.started_at, 6
                )
                generating = self.completed_at - self.first_output_at
                if generating > 0 and len(self.output) > 1:
                    self.metrics["tokens_per_second"] = round(
                        (len(self.output) - 1) / generating, 3
                    )

    # -- what clients see ---------------------------------------------------

    def _output_json(self) -> Any:
        if not self.streams:  # a model that returns one value
            return self.output[-1] if self.output else None
        return list(self.output) if self.output or self.done else None

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The prediction object of Replicate's API; *base_url* has no
        trailing slash and makes every URL absolute."""
        url = f"{base_url}/v1/predictions/{self.id}"
        urls = {"get": url, "cancel": f"{url}/cancel"}
        if self.streams:
            urls["stream"] = f"{url}/stream"
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": str(self.status),
            "input": self.input,
            "output": self._output_json(),
            "logs": "".join(f"{line}\n" for line in self.logs),
            "error": self.error,
            "metrics": dict(self.metrics),
            "created_at": iso_time(self.created_at),
            "started_at": iso_time(self.started_at),
            "completed_at": iso_time(self.completed_at),
            "urls": urls,
        }
