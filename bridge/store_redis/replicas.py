"""Copies of other processes' predictions, for the readers here.

A reader here of a prediction another process runs reads a copy: its
record and input, and its log read so far, appended to an in-memory log
(:meth:`~bridge.core.events.MemoryEventLog.extend`) with the writer's ids,
so readers here read it as they read a local one. While it runs, it is
followed: one blocking ``XREAD`` at a time names every log followed here
and this process's command stream (which a new copy or a cancel wakes),
so one connection serves every reader. A copy lives as long as a reader
holds its log.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import coredis
import trio

from ..backoff import delays
from ..core.events import MemoryEventLog
from ..core.predictions import Prediction, Status
from ..errors import NotFound
from . import codec
from .db import Db
from .endings import LOST_TRACK, VANISHED
from .errors import attempt
from .leases import Lease

__all__ = ["Replicas"]

log = logging.getLogger("bridge.store_redis")

#: How long the blocking read waits before it reads again anyway.
BLOCK_MS = 5000
#: Entries one read takes per stream (a reader far behind catches up in
#: steps of this many spans).
READ_COUNT = 256
#: A command stream keeps about this many commands, for this long.
COMMANDS_KEPT = 1000
COMMANDS_SECONDS = 3600


class _Gap(Exception):
    """A prediction's log in Redis does not follow on from what was read."""


class _CopyLog(MemoryEventLog):
    """The log of a copy. Its readers hold the log, not the prediction, so
    the log holds the prediction (whose status the reads bring up to
    date); it is followed while any reader holds it."""

    prediction: Prediction | None = None


def _end(prediction: Prediction, error: str) -> None:
    """End a copy as failed with *error*, or, if the record it took ended
    it already, at least its log: its readers wait for nothing more."""
    if not prediction.done:
        prediction.fail(error)
    elif not prediction.events.closed:
        prediction.events.finish(error, {"reason": "error"})


class Replicas:
    """The copies held here, and the one reader that follows them."""

    def __init__(
        self,
        db: Db,
        reader: coredis.Redis[bytes],
        lease: Lease,
        obey: Callable[[str], object],
    ) -> None:
        self._db = db
        self._reader = reader  # its own connection: it blocks in XREAD
        self._lease = lease
        self._obey = obey  # a cancel asked by another process
        self._copies: weakref.WeakValueDictionary[str, Prediction] = weakref.WeakValueDictionary()
        # The logs followed: stream key -> the copy's log, last entry id.
        self._following: dict[bytes, tuple[weakref.ref[_CopyLog], bytes]] = {}
        # Loads under way, by prediction id.
        self._loading: dict[str, trio.Event] = {}

    def running(self, prediction_id: str) -> Prediction | None:
        """The copy held here of a running prediction (an ended one is read
        again: its record may have expired since)."""
        copy = self._copies.get(prediction_id)
        return copy if copy is not None and not copy.done else None

    async def load(self, prediction_id: str) -> Prediction:
        """A copy, loaded one at a time per prediction: those asking for it
        meanwhile share it (two copies would follow one log)."""
        while (loading := self._loading.get(prediction_id)) is not None:
            await loading.wait()
            copy = self.running(prediction_id)
            if copy is not None:
                return copy
        self._loading[prediction_id] = done = trio.Event()
        try:
            return await self._load(prediction_id)
        except _Gap:
            log.error("prediction %s: its log in Redis has a gap", prediction_id)
            raise NotFound(f"prediction {prediction_id} not found") from None
        finally:
            del self._loading[prediction_id]
            done.set()

    async def _load(self, prediction_id: str) -> Prediction:
        """A copy of a prediction another process runs or ran, its events
        read so far, and followed from there on if it is still running."""
        keys = self._db.keys
        record_bytes, input_bytes = await self._db.client.mget(
            [keys.record(prediction_id), keys.input(prediction_id)]
        )
        if record_bytes is None:
            raise NotFound(f"prediction {prediction_id} not found")
        record = codec.decode(record_bytes)
        events = _CopyLog()
        last = b"0-0"
        if Status(record["status"]).terminal and input_bytes is None:
            record["data_removed"] = True
        if record["data_removed"]:
            events.drop()
        else:
            # Records in the log are newer than the one read before it.
            last, newer = await self._catch_up(prediction_id, events, last)
            record = newer or record
        record["input"] = (input_bytes or b"{}").decode()
        prediction = Prediction.from_record(record, events)
        self._copies[prediction_id] = prediction
        if not events.closed:
            events.prediction = prediction
            self._following[keys.log(prediction_id).encode()] = (weakref.ref(events), last)
            await self.command(self._lease.process, {"wake": ""})
        return prediction

    async def _catch_up(
        self, prediction_id: str, events: MemoryEventLog, last: bytes
    ) -> tuple[bytes, dict[str, Any] | None]:
        """Append the log's entries after *last* to *events*: the id of the
        last one read, and the last record they carried (if any)."""
        key = self._db.keys.log(prediction_id)
        record = None
        while True:
            entries = await self._db.client.xrange(key, f"({last.decode()}", "+", count=READ_COUNT)
            for entry in entries:
                if not codec.take(events, codec.span_in(entry.field_values)):
                    raise _Gap(prediction_id)
                record = codec.record_in(entry.field_values) or record
                last = codec.raw(entry.identifier)
            if len(entries) < READ_COUNT:
                return last, record

    async def command(self, process: str, fields: dict[str, str]) -> None:
        """Send *process* a command (``cancel``: a prediction id; ``wake``:
        read again, naming a new log)."""
        key = self._db.keys.commands(process)
        async with self._db.client.pipeline(transaction=False) as pipe:
            pipe.xadd(
                key,
                fields,
                trim_strategy=coredis.PureToken.MAXLEN,
                threshold=COMMANDS_KEPT,
                trim_operator=coredis.PureToken.APPROXIMATELY,
            )
            pipe.expire(key, COMMANDS_SECONDS)

    async def read_forever(self) -> None:
        """Follow the logs that readers here hold, and this process's
        commands, in one blocking read at a time."""
        commands, last_command = b"", b"0-0"
        waits = delays(0.1, 2.0)
        while True:
            mine = self._db.keys.commands(self._lease.process).encode()
            if commands != mine:  # a new name
                commands, last_command = mine, b"0-0"
            streams: dict[bytes, bytes] = {commands: last_command}
            for key, (ref, last) in list(self._following.items()):
                if ref() is None:  # no reader holds it any more
                    del self._following[key]
                else:
                    streams[key] = last
            with attempt("read from Redis (retrying)") as tried:
                got = await self._reader.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            if tried.failed:
                await trio.sleep(next(waits))
                continue
            waits = delays(0.1, 2.0)
            for key, entries in (got or {}).items():
                if key == commands:
                    last_command = codec.raw(entries[-1].identifier)
                    for entry in entries:
                        cancel = entry.field_values.get(b"cancel")
                        if cancel is not None:
                            self._obey(codec.text(cancel))
                else:
                    self._apply(key, entries)

    def _apply(self, key: bytes, entries: Any) -> None:
        followed = self._following.get(key)
        events = followed[0]() if followed else None
        if followed is None or events is None or events.prediction is None:
            self._following.pop(key, None)
            return
        for entry in entries:
            record = codec.record_in(entry.field_values)
            if record is not None and not events.closed:  # before readers learn of an end
                events.prediction.refresh(record)
            if not codec.take(events, codec.span_in(entry.field_values)):
                log.error("the log %s has a gap: its copy here ends", key.decode())
                _end(events.prediction, LOST_TRACK)
                break
            self._following[key] = (followed[0], codec.raw(entry.identifier))
        if events.closed:
            self._following.pop(key, None)

    def _followed(self) -> list[tuple[bytes, _CopyLog, Prediction]]:
        found = []
        for key, (ref, _) in list(self._following.items()):
            copy = ref()
            if copy is not None and copy.prediction is not None and not copy.closed:
                found.append((key, copy, copy.prediction))
        return found

    async def drop_vanished(self) -> None:
        """End the copies of predictions Redis no longer holds (it was
        restarted empty, or their keys were deleted): nothing would ever
        end them."""
        followed = self._followed()
        if not followed:
            return
        async with self._db.client.pipeline(transaction=False) as pipe:
            calls = [pipe.exists([self._db.keys.record(p.id)]) for _, _, p in followed]
        for (key, copy, prediction), call in zip(followed, calls, strict=True):
            if not await call and not copy.closed:
                log.error("prediction %s is no longer in Redis: its copy here ends", prediction.id)
                _end(prediction, VANISHED)
                self._following.pop(key, None)

    def end_all(self, error: str) -> None:
        """End every copy followed here as failed with *error* (Redis is
        away: nothing will bring their ends)."""
        for _, _, prediction in self._followed():
            _end(prediction, error)
        self._following.clear()
