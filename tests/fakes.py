"""Second implementations of the bridge's interfaces, small enough to be
obviously right: the contract tests run them beside the real ones, and a
bridge runs on them end to end (so each interface is all its users need).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from bridge import strictjson
from bridge.backends import wire
from bridge.backends.interface import Metadata, ModelInfo, PredictInput
from bridge.config import Settings
from bridge.core import events as events_module
from bridge.core.events import SLICE_BYTES, EventLog, Follower, OutputBatch, Record
from bridge.core.predictions import Prediction, clock
from bridge.core.store import Page
from bridge.errors import (
    BackendTimeout,
    BackendUnavailable,
    ModelError,
    NotFound,
    OutputTooLarge,
    Overloaded,
    PredictionError,
)

log = logging.getLogger(__name__)


class ListEventLog:
    """An :class:`~bridge.core.events.EventLog` that keeps each event as a
    :class:`~bridge.core.events.Record` with the unix second it came in, in a
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
        for follower in tuple(self._followers):
            follower.wake()

    def read(self, start: int, limit: int = SLICE_BYTES, part: int = 0) -> tuple[bytes, int, int]:
        frames: list[bytes] = []
        size = 0
        end = start
        for record, seconds in self.records[start:]:
            whole = events_module.frame(record.name, seconds, end, record.data)
            if part or len(whole) > limit:  # in pieces: part is bytes of its frame read
                if frames:
                    break
                if part + limit < len(whole):
                    return whole[part : part + limit], start, part + limit
                return whole[part:], start + 1, 0
            if frames and size >= limit:
                break
            frames.append(whole)
            size += len(frames[-1])
            end += 1
        return b"".join(frames), end, 0

    def names(self, start: int) -> set[str]:
        return {record.name for record, _ in self.records[start:]}

    def read_records(
        self, start: int, limit: int = SLICE_BYTES, part: int = 0
    ) -> tuple[list[Record], int, int]:
        out: list[Record] = []
        size = 0
        for record, _ in self.records[start:]:
            if part or len(record.data.encode()) > limit:  # in pieces: part counts characters
                if out:
                    break
                step = max(1, limit // 4)  # characters of at most 4 bytes
                piece = record._replace(data=record.data[part : part + step])
                if part + step < len(record.data):
                    return [piece], start, part + step
                return [piece], start + 1, 0
            if out and (size >= limit or len(out) == events_module.MAX_RECORDS):
                break
            out.append(record)
            size += len(record.data.encode())
        return out, start + len(out), 0

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


class ListStore:
    """A :class:`~bridge.core.store.PredictionStore` that keeps predictions in a
    list and finds everything by scanning it: what it keeps is summed when
    asked, and the retention rules are applied to the list as written in
    bridge.core.retention's docstring, with nothing kept on the side."""

    def __init__(self, settings: Settings, new_log: Callable[[], EventLog] = ListEventLog):
        self._settings = settings
        self._new_log = new_log
        self._all: list[Prediction] = []
        self._ended: list[Prediction] = []  # in the order they ended
        self._seq = 0

    @property
    def kept_bytes(self) -> int:
        return sum(p.kept_bytes for p in self._all)

    def new_log(self) -> EventLog:
        return self._new_log()

    def _fits(self, cost: int) -> bool:
        """Let go of the earliest ended predictions' data until *cost* fits."""
        for prediction in self._ended:
            if self.kept_bytes + cost <= self._settings.max_retained_bytes:
                break
            if not prediction.data_removed:
                prediction.remove_data()
        return self.kept_bytes + cost <= self._settings.max_retained_bytes

    async def add(self, prediction: Prediction) -> None:
        self._prune()
        if not self._fits(prediction.kept_bytes):
            raise Overloaded("no room (max_retained_bytes)")
        self._seq += 1
        prediction.seq = self._seq
        self._all.append(prediction)

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        self._prune()
        for prediction in self._all:
            if prediction.id == prediction_id and owner in (None, prediction.owner):
                return prediction
        raise NotFound(f"prediction {prediction_id} not found")

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        if prediction.output_bytes + cost > cap or not self._fits(cost):
            raise OutputTooLarge("output too large")

    def changed(self, prediction: Prediction) -> None:
        pass

    def ended(self, prediction: Prediction) -> None:
        self._ended.append(prediction)
        self._prune()

    async def cancel_elsewhere(self, prediction: Prediction) -> None:
        pass

    def serve_cancels(self, cancel: Callable[[str, str | None], object]) -> None:
        pass

    async def flush(self) -> None:
        pass

    def _prune(self) -> None:
        settings, now = self._settings, clock()
        with_data = [p for p in self._ended if not p.data_removed]
        for i, prediction in enumerate(with_data):
            too_many = len(with_data) - i > settings.retention_count
            if too_many or _ended_at(prediction) < now - settings.retention_seconds:
                prediction.remove_data()
        for prediction in list(self._ended):
            too_many = len(self._ended) > settings.metadata_retention_count
            if too_many or _ended_at(prediction) < now - settings.metadata_retention_seconds:
                if not prediction.data_removed:
                    prediction.remove_data()
                self._ended.remove(prediction)
                self._all.remove(prediction)

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Awaitable[bytes]],
    ) -> Page:
        self._prune()
        seen = sorted(
            (p for p in self._all if owner in (None, p.owner)), key=lambda p: -p.seq
        )  # newest first
        match = re.fullmatch(r"([ab])([0-9]{1,18})", cursor or "b" + "9" * 18)
        if match is None:
            raise ValueError(f"cursor {cursor!r} is not one this server gave out")
        seq = int(match[2])
        if match[1] == "b":
            window = [p for p in seen if p.seq < seq][: self._settings.page_size]
        else:
            window = [p for p in seen if p.seq > seq][-self._settings.page_size :]
        results: list[bytes] = []
        taken: list[Prediction] = []
        # Closest to the cursor first: a page cut by max_page_bytes keeps those.
        for prediction in window if match[1] == "b" else window[::-1]:
            encoded = await encode(prediction)
            if results and sum(map(len, results)) + len(encoded) > self._settings.max_page_bytes:
                break
            results.append(encoded)
            taken.append(prediction)
        if match[1] == "a":
            results.reverse()
            taken.reverse()
        if not taken:
            return Page([], None, None)
        older = any(p.seq < taken[-1].seq for p in seen)
        newer = any(p.seq > taken[0].seq for p in seen)
        return Page(
            results,
            f"b{taken[-1].seq}" if older else None,
            f"a{taken[0].seq}" if newer else None,
        )


def _ended_at(prediction: Prediction) -> float:
    assert prediction.completed_clock is not None
    return prediction.completed_clock


class FakeBackend:
    """A :class:`~bridge.backends.interface.Backend` in Trio, with no gRPC: each target
    serves a :class:`~bridge.backends.wire.ModelInfo` and runs the script that
    tests/backends.py's ``Scripted`` runs over gRPC (see there), sleeping
    on Trio's clock, so that an autojump clock runs it in no time. A target
    not in *models* cannot be reached. Its calls run in *nursery* (see
    :func:`open_fake_backend`), as the gRPC loop's run on its loop."""

    def __init__(
        self, models: dict[str, ModelInfo], nursery: trio.Nursery, health: str = "SERVING"
    ) -> None:
        self.models = models
        self._nursery = nursery
        self.health = health
        self.active_calls = 0
        #: The ids of the predictions whose calls were cancelled.
        self.cancelled: set[str] = set()
        #: Predict calls in flight to each target, and the most there were.
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.most_in_flight: collections.Counter[str] = collections.Counter()
        #: Describe calls so far, and how long each takes (Trio's clock).
        self.describe_calls = 0
        self.describe_seconds = 0.0
        #: Health checks so far, and how long each takes.
        self.health_calls = 0
        self.health_seconds = 0.0
        #: Restarts of each target (see restart).
        self.restarts: collections.Counter[str] = collections.Counter()

    async def describe(self, target: str, metadata: Metadata = ()) -> ModelInfo:
        self.describe_calls += 1
        self.active_calls += 1  # every call counts, as the gRPC loop's do
        try:
            await trio.sleep(self.describe_seconds)
        finally:
            self.active_calls -= 1
        if target not in self.models:
            raise BackendUnavailable("model backend unavailable: no connection")
        return self.models[target]

    async def check_health(self, target: str, metadata: Metadata = ()) -> str:
        self.health_calls += 1
        await trio.sleep(self.health_seconds)
        return self.health if target in self.models else "UNAVAILABLE"

    def lost_connections(self, target: str) -> int:
        return self.restarts[target]

    def restart(self, target: str, info: ModelInfo) -> None:
        """*target*'s process restarted, serving *info* now."""
        self.models[target] = info
        self.restarts[target] += 1

    @contextlib.asynccontextmanager
    async def predict(self, target: str, asked: PredictInput) -> AsyncIterator[FakeCall]:
        await trio.lowlevel.checkpoint_if_cancelled()  # as the gRPC loop: nothing starts
        self.active_calls += 1
        self.in_flight[target] += 1
        self.most_in_flight[target] = max(self.most_in_flight[target], self.in_flight[target])
        call, ended = FakeCall(), trio.Event()
        deadline = trio.current_effective_deadline()
        self._nursery.start_soon(self._run, target, asked, call, ended, deadline)
        try:
            yield call
        finally:
            call.scope.cancel()
            with trio.CancelScope(shield=True):
                await ended.wait()
            self.active_calls -= 1
            self.in_flight[target] -= 1

    async def _run(
        self,
        target: str,
        asked: PredictInput,
        call: FakeCall,
        ended: trio.Event,
        deadline: float,
    ) -> None:
        try:
            await self._script(target, asked, call, deadline)
        finally:
            ended.set()

    async def _script(
        self,
        target: str,
        asked: PredictInput,
        call: FakeCall,
        deadline: float,
    ) -> None:
        # The caller's deadline is the call's, as gRPC's: past it, the call
        # ends with BackendTimeout and the script is cancelled.
        with call.scope, trio.move_on_at(deadline) as timed:
            try:
                if target not in self.models:
                    raise BackendUnavailable("model backend unavailable: no connection")
                script = json.loads(asked.input_json)
                call.push(wire.Started())
                if "log" in script:
                    call.push(wire.LogLine(script["log"]))
                for chunk in script.get("chunks", []):
                    await trio.sleep(script.get("gap_ms", 0) / 1000)
                    call.push(wire.OutputChunks([chunk]))
                if "metrics" in script:
                    call.push(wire.MetricsUpdate(script["metrics"]))
                if script.get("hang"):
                    await trio.sleep_forever()
                if "fail" in script:
                    raise ModelError(script["fail"])
                call.end(trio.EndOfChannel())
            except PredictionError as exc:
                call.end(exc)
        if timed.cancelled_caught:
            call.end(BackendTimeout("model backend timed out: deadline exceeded"))
        if call.scope.cancelled_caught or timed.cancelled_caught:
            self.cancelled.add(asked.id)


@contextlib.asynccontextmanager
async def open_fake_backend(
    models: dict[str, ModelInfo], health: str = "SERVING"
) -> AsyncIterator[FakeBackend]:
    """A :class:`FakeBackend` whose calls run in a nursery of its own."""
    async with trio.open_nursery() as nursery:
        yield FakeBackend(models, nursery, health)
        nursery.cancel_scope.cancel()


class FakeCall:
    """The :class:`~bridge.backends.interface.Call` of a FakeBackend."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self._items: list[wire.StreamItem] = []
        self._end: Exception | None = None  # EndOfChannel, or the error
        self._handle: Callable[[list[wire.StreamItem]], None] | None = None
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def stopped(self) -> bool:
        return self._end is not None

    def push(self, item: wire.StreamItem) -> None:
        if self._end is not None:
            return  # ended by its handler: nothing more is delivered
        self._items.append(item)
        if self._handle is not None:
            self._hand_over()
        self._changed.unpark_all()

    def end(self, how: Exception) -> None:
        if self._end is None:
            self._end = how
        self._changed.unpark_all()

    def _hand_over(self) -> None:
        assert self._handle is not None
        items, self._items = self._items, []
        try:
            self._handle(items)
        except Exception as exc:  # ends the call in its owner
            self._handle = None
            self._end = exc
            self.scope.cancel()

    def deliver(self, handle: Callable[[list[wire.StreamItem]], None]) -> None:
        self._handle = handle
        if self._items:
            self._hand_over()

    async def wait_end(self) -> None:
        while self._end is None:
            await self._changed.park()
        if not isinstance(self._end, trio.EndOfChannel):
            raise self._end

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> list[wire.StreamItem]:
        while not self._items and self._end is None:
            await self._changed.park()
        if self._items:
            items, self._items = self._items, []
            return items
        if isinstance(self._end, trio.EndOfChannel):
            raise StopAsyncIteration
        assert self._end is not None
        raise self._end
