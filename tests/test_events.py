"""The event log on its own: bytes in, SSE frames out, in bounded slices.

The contract tests (those taking ``new_log``) run every implementation of
the :class:`~bridge.core.events.EventLog` interface: the log kept in memory,
the held log of a prediction shared through Redis (shown as it is
appended, as a store that writes at once would show it), and the
record-keeping fake of tests/fakes.py.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
from collections.abc import Callable

import pytest
import trio
import trio.testing

from bridge.core import events as events_module
from bridge.core.events import (
    EVENT_COST,
    MAX_RECORDS,
    EventLog,
    HeldEventLog,
    MemoryEventLog,
    OutputBatch,
    Record,
    ending,
)
from bridge.sse import encode_event, normalize_line_breaks
from tests.fakes import ListEventLog
from tests.helpers import CHUNKS
from tests.sse_clients import replicate_events, spec_events


class ShownAtOnce(HeldEventLog):
    """A held log whose store holds each append as soon as it is made."""

    def _publish(self) -> None:
        self.show(self.held)


@pytest.fixture(
    params=[MemoryEventLog, ShownAtOnce, ListEventLog], ids=["memory", "held", "records"]
)
def new_log(request: pytest.FixtureRequest) -> Callable[[], EventLog]:
    factory: Callable[[], EventLog] = request.param
    return factory


def read_all(log: EventLog, start: int = 0, limit: int = 4096) -> list[bytes]:
    slices, part = [], 0
    while start < len(log):
        data, start, part = log.read(start, limit, part)
        slices.append(data)
    return slices


def test_frames_are_exactly_the_encoder_s_for_any_chunk(monkeypatch, new_log) -> None:
    """Hostile chunks (line breaks of every kind) framed as bridge.sse does."""
    monkeypatch.setattr(events_module.time, "time", lambda: 1700000000.5)
    log = new_log()
    log.append_output(OutputBatch(["plain ", *CHUNKS, {"k": [1, "\n"]}]))
    log.append_log("a log\rline")
    log.finish("it \n broke", {"reason": "error"})
    expected = [encode_event("output", "1700000000:0", "plain ")]
    expected += [encode_event("output", f"1700000000:{i + 1}", c) for i, c in enumerate(CHUNKS)]
    n = len(CHUNKS) + 1
    expected += [
        encode_event("output", f"1700000000:{n}", json.dumps({"k": [1, "\n"]})),
        encode_event("logs", f"1700000000:{n + 1}", "a log\rline"),
        encode_event("error", f"1700000000:{n + 2}", json.dumps({"detail": "it \n broke"})),
        encode_event("done", f"1700000000:{n + 3}", '{"reason":"error"}'),
    ]
    assert b"".join(read_all(log, limit=1)) == b"".join(expected)
    assert log.read(0, 10**9) == (b"".join(expected), len(expected), 0)
    assert log.snapshot().outputs() == ["plain ", *CHUNKS, {"k": [1, "\n"]}]
    assert log.snapshot().logs() == ["a log\rline"]
    assert log.closed
    assert log.names(n + 1) == {"logs", "error", "done"}


def test_records_are_read_in_order_in_bounded_slices(new_log) -> None:
    """What a reader that re-frames events (OpenAI's chunks) reads: every
    event once, in order, as the model sent it; a slice of at most about
    the limit's payload bytes, an event larger than that in pieces (never
    inside a character)."""
    log = new_log()
    log.append_output(OutputBatch(["a\n", "bb", {"k": 1}, "[1]"]))
    log.append_log("a line")
    log.append_output(OutputBatch(["x" * 100, "é", "é" * 50]))
    log.finish("broke", {"reason": "error"})
    got: list[Record] = []
    start, part, pieces, cut = 0, 0, [], 0
    while start < len(log):
        records, after, part = log.read_records(start, 3, part)
        assert records and sum(len(r.data.encode()) for r in records[:-1]) < 3
        if after == start or pieces:  # an event larger than the limit, a piece at a time
            (piece,) = records
            assert len(piece.data.encode()) <= 3 + 1  # + the rest of a character
            pieces.append(piece)
            if after > start:  # its last piece
                got.append(piece._replace(data="".join(p.data for p in pieces)))
                cut, pieces = cut + len(pieces), []
        else:
            got += records
        start = after
    assert [(r.name, r.data, r.json) for r in got] == [
        ("output", "a\n", False),
        ("output", "bb", False),
        ("output", json.dumps({"k": 1}), True),
        ("output", "[1]", False),
        ("logs", "a line", False),
        ("output", "x" * 100, False),
        ("output", "é", False),
        ("output", "é" * 50, False),
        ("error", json.dumps({"detail": "broke"}), False),
        ("done", '{"reason":"error"}', False),
    ]
    assert cut > 40  # "x" * 100 and the error came in pieces
    assert log.read_records(0)[0] == got and log.read_records(0)[1] == len(log)
    assert log.read_records(len(log)) == ([], len(log), 0)
    # Empty chunks cost no bytes: a slice is bounded in records too.
    empty = new_log()
    empty.append_output(OutputBatch([""] * (MAX_RECORDS + 5)))
    assert [len(empty.read_records(i)[0]) for i in (0, MAX_RECORDS)] == [MAX_RECORDS, 5]


def test_a_snapshot_is_the_log_when_it_was_taken(new_log) -> None:
    log = new_log()
    log.append_output(OutputBatch(["text", {"json": ["value"]}, "[1]"]))
    log.append_log("a line")
    taken = log.snapshot()
    log.append_output(OutputBatch(["later"]))
    log.finish(None, {})
    assert taken.outputs() == [
        "text",
        {"json": ["value"]},
        "[1]",
    ]  # text that looks like JSON stays text
    assert taken.logs() == ["a line"]
    assert log.snapshot().outputs()[-1] == "later"
    assert log.output_count == 4


def test_a_reader_resumes_after_an_id_it_was_given(new_log) -> None:
    log = new_log()
    log.append_output(OutputBatch(["a", "b", "c"]))
    ids = [e.id for e in spec_events(read_all(log))]
    assert [log.index_after(i) for i in ids] == [1, 2, 3]
    for bad in ["", "7", "a:1", "1:-1", "1:2:3", "9" * 13 + ":1"]:
        with pytest.raises(ValueError, match="not an id of this stream"):
            log.index_after(bad)


def test_a_live_reader_gets_each_new_event_as_a_whole_read_frames_it(monkeypatch, new_log) -> None:
    """Read one event at a time as each arrives (a live stream's reads,
    framed by a shortcut), across seconds: the same bytes as one read."""
    clock = iter([100.2, 100.9, 102.0, 102.5, 103.0, 104.0, 104.1, 105.0])
    monkeypatch.setattr(events_module.time, "time", lambda: next(clock))
    log, live = new_log(), []
    for chunk in ["a", "b\nc", {"k": 1}, "", "\r"]:
        log.append_output(OutputBatch([chunk]))
        live.append(log.read(len(log) - 1))
    log.append_log("a log")
    live.append(log.read(len(log) - 1))
    log.finish("it broke", {"reason": "error"})
    live.append(log.read(len(log) - 2))  # not only new: framed the usual way
    assert [(end, part) for _, end, part in live] == [(i, 0) for i in (1, 2, 3, 4, 5, 6, 8)]
    assert b"".join(data for data, _, _ in live) == log.read(0, 10**9)[0]


def test_ids_carry_the_second_of_their_batch(monkeypatch, new_log) -> None:
    clock = iter([100.2, 100.9, 102.0])
    monkeypatch.setattr(events_module.time, "time", lambda: next(clock))
    log = new_log()
    for batch in (["a", "b"], ["c"], ["d", "e"]):
        log.append_output(OutputBatch(batch))
    ids = [e.id for e in spec_events(read_all(log))]
    assert ids == ["100:0", "100:1", "100:2", "102:3", "102:4"]
    assert [e.id for e in spec_events(read_all(log, start=3))] == ["102:3", "102:4"]
    assert log.index_after("102:3") == 4


def test_a_long_log_is_read_in_bounded_slices(new_log) -> None:
    log = new_log()
    chunks = [f"{i % 97:02d}" for i in range(20_000)] + CHUNKS
    for i in range(0, len(chunks), 1000):
        log.append_output(OutputBatch(chunks[i : i + 1000]))
    slices = read_all(log, limit=4096)
    largest_frame = max(len(encode_event("output", "1:99999", c)) for c in chunks)
    assert all(len(s) < 4096 + largest_frame for s in slices)
    assert len(slices) > sum(map(len, slices)) // (4096 + largest_frame)
    got = spec_events(slices)
    assert got == replicate_events(slices)
    assert [e.data for e in got] == [normalize_line_breaks(c) for c in chunks]
    assert [int(e.id.split(":")[1]) for e in got] == list(range(len(chunks)))


@pytest.mark.parametrize("limit", [1, 7, 100, 1000])
def test_an_event_larger_than_a_slice_is_read_in_pieces(monkeypatch, new_log, limit) -> None:
    """A reader holds about a slice, however large an event: an event too
    large for one is framed a piece at a time. Line breaks of every kind,
    ``\r\n`` and characters of several bytes fall on every boundary."""
    monkeypatch.setattr(events_module.time, "time", lambda: 1700000000.5)
    big = "".join(f"{i}é\r\n{'x' * (i % 5)}\u2028🙂\r" for i in range(40))
    log = new_log()
    log.append_output(OutputBatch(["small", big, "y" * 5000, {"k": big}, "\n" * 700, "tail"]))
    log.append_log(big)
    log.finish(big, {"reason": "error"})
    slices = read_all(log, limit=limit)
    assert b"".join(slices) == log.read(0, 10**9)[0]
    assert spec_events(slices) == replicate_events(slices)
    assert [e.data for e in spec_events(slices)][:6] == [
        "small", normalize_line_breaks(big), "y" * 5000, json.dumps({"k": big}), "\n" * 700, "tail"
    ]  # fmt: skip
    head = len(b"event: output\nid: 1700000000:99\ndata: ")
    assert max(map(len, slices)) <= 2 * max(limit, 7) + head + 8
    assert len(slices) >= sum(map(len, slices)) // (2 * max(limit, 7) + head + 8)


@pytest.mark.parametrize("chunk", ["", "a", "ab", "héllo wörld "])
def test_a_retained_chunk_costs_what_it_is_charged(chunk: str) -> None:
    """100,000 chunks cost a few bytes each, however they came, and never
    more than OutputBatch.cost says (what the output bounds count): an
    empty chunk is not free."""
    tracemalloc.start()
    try:
        log = MemoryEventLog()
        charged = 0
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            batch = OutputBatch([chunk] * 100)
            charged += batch.cost
            log.append_output(batch)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= charged, (used, charged)
    assert charged == 100_000 * (len(chunk.encode()) + EVENT_COST)
    assert log.output_count == 100_000


@pytest.mark.parametrize("chunks", [["a"], ["a"] * 500])
async def test_readers_wake_once_per_batch(chunks: list[str], new_log) -> None:
    log = new_log()
    wakes = []

    async def reader() -> None:
        cursor = 0
        while not log.closed:
            await log.wait_beyond(cursor)
            wakes.append(len(log) - cursor)
            cursor = len(log)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        log.append_output(OutputBatch(chunks))
        await trio.testing.wait_all_tasks_blocked()
        log.finish(None, {})
    assert wakes == [len(chunks), 1]  # the batch at once, then done


def test_a_closed_log_takes_nothing(new_log) -> None:
    log = new_log()
    log.finish(None, {})
    with pytest.raises(RuntimeError, match="closed"):
        log.append_output(OutputBatch(["late"]))


class _Recorder:
    """A follower that notes what the log told it, and when."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.told: list[tuple[str, int, bool]] = []

    def news(self) -> None:
        self.told.append(("news", len(self.log), self.log.closed))

    def wake(self) -> None:
        self.told.append(("wake", len(self.log), self.log.closed))


def test_a_follower_hears_of_each_append_in_it_and_is_woken_at_the_close(new_log) -> None:
    log = new_log()
    follower = _Recorder(log)
    log.follow(follower)
    log.append_output(OutputBatch(["a", "b"]))
    log.append_log("a log")
    log.finish("broke", {"reason": "error"})
    assert follower.told == [
        ("news", 2, False),
        ("news", 3, False),
        ("news", 4, False),  # error
        ("news", 5, False),  # done
        ("wake", 5, True),  # then closed: the reader's task ends the response
    ]
    log.unfollow(follower)
    late = _Recorder(log)
    log.follow(late)  # a closed log wakes a new follower at once
    assert late.told == [("wake", 5, True)]


def test_a_dropped_log_wakes_its_followers(new_log) -> None:
    log = new_log()
    follower = _Recorder(log)
    log.follow(follower)
    log.drop()
    assert follower.told == [("wake", 0, True)]


def test_a_follower_that_fails_is_woken_and_no_one_else_notices(caplog, new_log) -> None:
    class Broken(_Recorder):
        def news(self) -> None:
            raise OSError("its socket broke in a way no one expected")

    log = new_log()
    broken, fine = Broken(log), _Recorder(log)
    log.follow(broken)
    log.follow(fine)
    log.append_output(OutputBatch(["a", "b"]))
    assert broken.told == [("wake", 2, False)]  # it goes on the usual way
    assert fine.told == [("news", 2, False)]
    assert log.output_count == 2
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_a_replica_built_from_spans_frames_what_its_writer_does(monkeypatch) -> None:
    """What another process appends from a writer's spans (a store shared
    through Redis) reads back byte for byte: the same ids across seconds,
    the same frames, outputs, logs and end."""
    now = [1700000000.0]
    monkeypatch.setattr(events_module.time, "time", lambda: now[0])
    writer, replica = MemoryEventLog(), MemoryEventLog()
    sent = 0
    for step, chunks in enumerate([["a", "b\nc"], [{"k": 1}], [], ["é", ""]]):
        writer.append_output(OutputBatch(chunks))
        writer.append_log(f"line {step}\r")
        now[0] += step % 2  # a new second every other step
        if step != 1:  # two appends in one span, too
            replica.extend(writer.span(sent))
            sent = len(writer)
    writer.finish("broke", {"reason": "error"})
    assert not replica.closed
    replica.extend(writer.span(sent))
    assert replica.closed and len(replica) == len(writer)
    assert replica.read(0, 10**9) == writer.read(0, 10**9)
    assert read_all(replica, limit=1) == read_all(writer, limit=1)
    assert replica.output_count == writer.output_count == 5
    assert replica.snapshot().outputs() == writer.snapshot().outputs()
    assert replica.snapshot().logs() == writer.snapshot().logs()
    with pytest.raises(ValueError, match="cannot follow"):
        MemoryEventLog().extend(writer.span(3))


def test_a_replica_built_from_one_event_spans_frames_what_its_writer_does(monkeypatch) -> None:
    """A paced stream's writer sends a span per event (a fast path reads
    it): replicated one event at a time, across new seconds and seconds
    with several events, the copy reads back byte for byte."""
    now = [1700000000.0]
    monkeypatch.setattr(events_module.time, "time", lambda: now[0])
    writer, replica = MemoryEventLog(), MemoryEventLog()
    for step in range(12):
        if step % 3 == 0:
            writer.append_log(f"line {step}")
        else:
            writer.append_output(OutputBatch([f"{step} " if step % 4 else {"n": step}]))
        now[0] += step % 2
        span = writer.span(len(writer) - 1)
        replica.extend(span)
    assert replica.read(0, 10**9) == writer.read(0, 10**9)
    assert read_all(replica, limit=1) == read_all(writer, limit=1)
    assert replica.snapshot().outputs() == writer.snapshot().outputs()


async def test_a_held_log_shows_readers_only_what_its_store_holds() -> None:
    """Appends wait for show(); every way of reading stops there, the end
    included, and waiting readers wake when more is shown."""
    log = HeldEventLog()
    log.append_output(OutputBatch(["a ", "b "]))
    log.append_log("line")
    assert (len(log), log.held) == (0, 3)
    assert log.read(0) == (b"", 0, 0) and log.read_records(0) == ([], 0, 0)
    assert log.names(0) == set() and log.snapshot().outputs() == []
    log.show(2)
    assert len(log) == 2 and log.read(0)[1] == 2 and log.read_records(0)[1] == 2
    assert log.names(0) == {"output"} and log.snapshot().outputs() == ["a ", "b "]
    log.finish(None, {})
    assert not log.closed  # its end is not shown yet
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.wait_closed)
            await trio.testing.wait_all_tasks_blocked()
            log.show(log.held)
    assert log.closed and [r.name for r in log.read_records(0)[0]] == [
        "output",
        "output",
        "logs",
        "done",
    ]


def test_a_held_log_ends_as_its_store_ended_it() -> None:
    """What was never shown gives way to the store's ending, with the
    store's ids; what was shown stays."""
    log = HeldEventLog()
    log.append_output(OutputBatch(["a ", "b ", "c "]))
    log.show(1)
    log.finish(None, {})  # the task's own end: never held by the store
    log.replace_tail(ending(2, "lost"))  # the store holds "a ", "b ", then its end
    records, end, _ = log.read_records(0)
    assert [(r.name, r.data) for r in records] == [
        ("output", "a "), ("output", "b "), ("error", '{"detail": "lost"}'),
        ("done", '{"reason":"error"}'),
    ]  # fmt: skip
    assert end == len(log) == 4 and log.closed and log.output_count == 2
    assert log.index_after(log.read(0)[0].split(b"id: ")[-1].split(b"\n")[0].decode()) == 4
