"""Second implementations of the bridge's interfaces, small enough to be
obviously right: the contract tests run them beside the real ones, and a
bridge runs on them end to end (so each interface is all its users need).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from bridge import events as events_module
from bridge import strictjson
from bridge.events import SLICE_BYTES, Follower, OutputBatch, Record

log = logging.getLogger(__name__)


class ListEventLog:
    """An :class:`~bridge.events.EventLog` that keeps each event as a
    :class:`~bridge.events.Record` with the unix second it came in, in a
    list: what a log in a Redis Stream would hold, an entry per event."""

    def __init__(self) -> None:
        self.records: list[tuple[Record, int]] = []
        self.output_count = 0
        self._closed = False
        self._changed = trio.lowlevel.ParkingLot()
        self._followers: dict[Follower, None] = {}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def closed(self) -> bool:
        return self._closed

    def _append(self, records: list[Record]) -> None:
        if self._closed:
            raise RuntimeError("event log is closed")
        now = int(time.time())
        self.records += [(record, now) for record in records]
        self._changed.unpark_all()
        for follower in tuple(self._followers):
            try:
                follower.news()
            except Exception:
                log.exception("a follower failed")
                follower.wake()

    def append_output(self, batch: OutputBatch) -> None:
        self._append(batch.records())
        self.output_count += batch.count

    def append_log(self, line: str) -> None:
        self._append([Record("logs", line)])

    def finish(self, error: str | None, done: dict[str, str]) -> None:
        if error is not None:
            self._append([Record("error", strictjson.dumps({"detail": error}))])
        self._append([Record("done", strictjson.dumps(done, separators=(",", ":")))])
        self._close()

    def drop(self) -> None:
        self.records = []
        self._close()

    def _close(self) -> None:
        self._closed = True
        self._changed.unpark_all()
        self.nudge()

    def read(self, start: int, limit: int = SLICE_BYTES) -> tuple[bytes, int]:
        frames: list[bytes] = []
        size = 0
        end = start
        for record, seconds in self.records[start:]:
            if frames and size >= limit:
                break
            frames.append(events_module.frame(record.name, seconds, end, record.data))
            size += len(frames[-1])
            end += 1
        return b"".join(frames), end

    def names(self, start: int) -> set[str]:
        return {record.name for record, _ in self.records[start:]}

    def index_after(self, last_event_id: str) -> int:
        return events_module.index_after(last_event_id)

    async def wait_beyond(self, index: int) -> None:
        while len(self.records) <= index and not self._closed:
            await self._changed.park()

    async def wait_closed(self) -> None:
        while not self._closed:
            await self._changed.park()

    def follow(self, follower: Follower) -> None:
        self._followers[follower] = None
        if self._closed:
            follower.wake()

    def unfollow(self, follower: Follower) -> None:
        del self._followers[follower]

    def nudge(self) -> None:
        for follower in tuple(self._followers):
            follower.wake()

    def snapshot(self) -> ListSnapshot:
        return ListSnapshot([record for record, _ in self.records])


class ListSnapshot:
    def __init__(self, records: list[Record]) -> None:
        self._records = records

    def outputs(self) -> list[Any]:
        return [
            json.loads(r.data) if r.json else r.data for r in self._records if r.name == "output"
        ]

    def logs(self) -> list[str]:
        return [r.data for r in self._records if r.name == "logs"]
