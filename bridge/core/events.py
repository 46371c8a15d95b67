"""A prediction's event log: the interface, and the log kept in memory.

Every SSE event of one prediction, in order. Event *n* has the id
``<unix seconds>:<n>``; a stream request is only a reader with a cursor (an
event index) into the log, so any number of readers, late joiners and
``Last-Event-ID`` resumes cost the prediction nothing.

:class:`EventLog` is the interface every part of the bridge uses: one
writer appends batches (:meth:`~EventLog.append_output`: every chunk of a
gRPC batch at once) and readers are woken once per batch; reads are
synchronous and bounded (:meth:`~EventLog.read`: the frames of what the log
holds here, at most a slice), waits are asynchronous
(:meth:`~EventLog.wait_beyond`). A log kept elsewhere (a Redis Stream shared
by several bridge processes: one entry per batch, ``XADD`` to append, ``XREAD
BLOCK`` behind ``wait_beyond`` filling what ``read`` serves) implements the
same. An event is a record, (name, id, data), and its frame is
:func:`bridge.sse.encode_event` of it whatever the implementation
(:func:`frame`); the contract tests run every implementation against it.

:class:`MemoryEventLog` keeps bytes, not objects, because a long prediction
is hundreds of thousands of small chunks: the payloads (UTF-8, back to back)
in one ``bytearray``, each event's end offset in an ``array`` of 32-bit
integers, its kind in one byte, and the id's seconds run-length encoded. A
retained 2-character chunk costs about 7 bytes; nothing is allocated per
event. Frames are computed on read, a bounded slice at a time, so a reader
far behind holds at most one slice of encoded bytes, however long the
prediction.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import re
import struct
import time
from array import array
from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import trio

from .. import sse, strictjson
from ..sse import LINE_BREAK, encode_event

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_COST",
    "MAX_RECORDS",
    "SLICE_BYTES",
    "EventLog",
    "Follower",
    "HeldEventLog",
    "LogView",
    "MemoryEventLog",
    "OutputBatch",
    "Record",
    "Snapshot",
    "Span",
    "ending",
    "event_id",
    "frame",
    "index_after",
    "log_cost",
]

#: About the most encoded bytes one :meth:`EventLog.read` returns (a
#: piece of an event larger than this): what a reader holds at a time.
SLICE_BYTES = 64 * 1024

#: The most records one :meth:`EventLog.read_records` returns.
MAX_RECORDS = 4096

#: An event id this log writes: ``<unix seconds>:<n>``.
_EVENT_ID = re.compile(r"[0-9]{1,12}:([0-9]{1,12})")

#: What keeping one event costs beyond its payload bytes: its end offset (4)
#: and kind byte (1), plus the slack of the growing arrays that hold them.
#: An empty chunk is not free: it costs this.
EVENT_COST = 8

# An event's kind byte. _BREAKS is set on a text payload that holds a line
# break, which is framed by bridge.sse as several data: lines.
_TEXT, _JSON, _LOGS, _ERROR, _DONE = range(5)
_BREAKS = 0x80
_BREAK_GROWTH = len(sse.DATA)
_NAMES = {_TEXT: "output", _JSON: "output", _LOGS: "logs", _ERROR: "error", _DONE: "done"}
_HEADS = [sse.head(_NAMES[k]) for k in range(len(_NAMES))]
# A frame of a payload without line breaks: head, id (seconds:index), data.
_FRAME = b"%b%d:%d" + sse.DATA + b"%b" + sse.END
# The same, its head already holding the id's seconds and colon.
_FRAME_IN_SECOND = b"%b%d" + sse.DATA + b"%b" + sse.END
#: The smallest frame there is: no frame adds less to its payload.
_MIN_FRAME = len(sse.encode_event("logs", "0:0", ""))
_WITH_BREAKS = re.compile(b"[\x80-\xff]")  # a kind byte with _BREAKS set
_WITHOUT_BREAKS = bytes(k & ~_BREAKS for k in range(256))  # a translate table
_TEXT_ALONE, _TEXT_WITH_BREAKS = bytes([_TEXT]), bytes([_TEXT | _BREAKS])


class OutputBatch:
    """Output chunks encoded for the log: what they cost to keep is known
    before they are appended (:attr:`cost`)."""

    __slots__ = ("count", "kinds", "lengths", "payload")

    def __init__(self, chunks: list[Any]) -> None:
        self.count = len(chunks)
        if self.count == 1 and type(chunks[0]) is str:  # a token: the usual batch
            self.payload = chunks[0].encode()
            self.kinds = _TEXT_WITH_BREAKS if LINE_BREAK.search(chunks[0]) else _TEXT_ALONE
            self.lengths = [len(self.payload)]
            return
        if all(type(c) is str for c in chunks):
            joined = "".join(chunks)
            self.payload = joined.encode()
            if _breaks(joined):
                self.kinds = bytes(_TEXT | _breaks(c) for c in chunks)
            else:
                self.kinds = bytes([_TEXT]) * len(chunks)
            if joined.isascii():
                self.lengths = list(map(len, chunks))
            else:
                self.lengths = [len(c.encode()) for c in chunks]
            return
        encoded = [(c if type(c) is str else strictjson.dumps(c)).encode() for c in chunks]
        self.payload = b"".join(encoded)
        self.lengths = list(map(len, encoded))
        self.kinds = bytes(_TEXT | _breaks(c) if type(c) is str else _JSON for c in chunks)

    @property
    def cost(self) -> int:
        """Bytes the log needs to keep these chunks."""
        return len(self.payload) + EVENT_COST * self.count

    def records(self) -> list[Record]:
        """Each chunk's event: what a log that keeps records appends."""
        ends = list(itertools.accumulate(self.lengths))
        return [
            Record("output", self.payload[begin:end].decode(), kind & ~_BREAKS == _JSON)
            for begin, end, kind in zip([0, *ends], ends, self.kinds, strict=False)
        ]


#: A span's lengths and seconds of one event, as its arrays' bytes.
_ONE_LENGTH = struct.Struct("I").pack  # array("I", [length])
_ONE_SECOND = struct.Struct("2Q").pack  # array("Q", [0, second])


class Span(NamedTuple):
    """Events ``start`` on of one log, as bytes: what a writer sends to a
    store shared by several processes (one entry per span), and what a
    replica of the log in another process appends
    (:meth:`MemoryEventLog.extend`), ids and all."""

    start: int  # the index of its first event
    payload: bytes  # the events' payloads, back to back
    lengths: bytes  # each payload's length, array("I")
    kinds: bytes  # each event's kind byte
    seconds: bytes  # array("Q"): (offset in the span, unix seconds) where a second starts


def ending(start: int, error: str) -> Span:
    """The span that ends a log of *start* events with ``error`` and
    ``done`` (``{"reason":"error"}``), stamped now: what another process
    appends for a writer that died."""
    log = MemoryEventLog()
    log.finish(error, {"reason": "error"})
    return log.span(0)._replace(start=start)


class Record(NamedTuple):
    """One event as a log that keeps records holds it."""

    name: str  # output, logs, error or done
    data: str  # what its frame's data: lines carry
    json: bool = False  # an output chunk that is a JSON value (data is its JSON), not text


def event_id(seconds: int, index: int) -> str:
    """The id of event *index*, appended in the unix second *seconds*."""
    return f"{seconds}:{index}"


def frame(name: str, seconds: int, index: int, data: str) -> bytes:
    """The SSE frame of one event record: every log's :meth:`EventLog.read`
    returns exactly these."""
    return encode_event(name, event_id(seconds, index), data)


def index_after(last_event_id: str) -> int:
    """Where a reader that saw *last_event_id* resumes.

    Raises ``ValueError`` for an id no log could have written.
    """
    match = _EVENT_ID.fullmatch(last_event_id.strip())
    if match is None:
        raise ValueError(
            f"Last-Event-ID {last_event_id[:40]!r} is not an id of this stream (<seconds>:<n>)"
        )
    return int(match[1]) + 1


def log_cost(line: str) -> int:
    """Bytes the log needs to keep a log line."""
    return len(line.encode()) + EVENT_COST


class Follower(Protocol):
    """A reader the log tells of each append as it happens."""

    def news(self) -> None:
        """Events were appended (called in the append)."""

    def wake(self) -> None:
        """The log closed (or, the log being no part of it, the reader's
        own keep-alive clock ticked)."""


class Snapshot(Protocol):
    """A log's events up to the moment it was taken, readable later from any
    thread (to build a large prediction's JSON in a worker thread)."""

    def outputs(self) -> list[Any]:
        """Every output chunk, as the model sent it (text or a JSON value)."""
        ...

    def logs(self) -> list[str]:
        """Every log line."""
        ...


class EventLog(Protocol):
    """One prediction's events: one writer (the task running it), any number
    of readers. Appending to a closed log raises ``RuntimeError``."""

    @property
    def output_count(self) -> int:
        """Output chunks appended."""
        ...

    @property
    def closed(self) -> bool:
        """Whether the log ended (finished, or dropped)."""
        ...

    def __len__(self) -> int:
        """Events appended so far."""
        ...

    def append_output(self, batch: OutputBatch) -> None:
        """Append every chunk of *batch*, one ``output`` event each."""
        ...

    def append_log(self, line: str) -> None:
        """Append one ``logs`` event."""
        ...

    def finish(self, error: str | None, done: dict[str, str]) -> None:
        """Append ``error`` (if *error*: ``{"detail": error}``) and ``done``
        (*done* as compact JSON), and close the log."""
        ...

    def drop(self) -> None:
        """Let go of every event (the data was removed): the log is closed
        and empty, and its followers are woken."""
        ...

    def read(self, start: int, limit: int = SLICE_BYTES, part: int = 0) -> tuple[bytes, int, int]:
        """The frames (:func:`frame`) of the events from *start* on, at most
        about *limit* bytes of them; and where the next read starts, the
        index and ``part`` to give it. An event too large for a slice is
        read in pieces (each about *limit* bytes), and ``part`` says how
        far into event *start* a read begins (0, or what the read before
        returned: a position only this log understands). At least some of
        the event at *start* is returned if there is one."""
        ...

    def names(self, start: int) -> set[str]:
        """The names of the events from *start* on."""
        ...

    def read_records(
        self, start: int, limit: int = SLICE_BYTES, part: int = 0
    ) -> tuple[list[Record], int, int]:
        """The events from *start* on as records, at most about *limit*
        payload bytes of them and :data:`MAX_RECORDS` events, and where the
        next read starts (as :meth:`read`): what a reader that re-frames
        them (OpenAI's chunks) follows the log with. An event larger than
        *limit* comes in pieces, each a record with a part of its data
        (cut between characters), so that its text concatenates back."""
        ...

    def index_after(self, last_event_id: str) -> int:
        """Where a reader that saw *last_event_id* resumes (ValueError for
        an id this log could not have written)."""
        ...

    async def wait_beyond(self, index: int) -> None:
        """Wait until the log holds more than *index* events or is closed."""
        ...

    async def wait_closed(self) -> None:
        """Wait until the log is closed."""
        ...

    def follow(self, follower: Follower) -> None:
        """Call ``follower.news()`` in each append from now on, until
        :meth:`unfollow`; ``follower.wake()`` when the log closes (at once if
        it is closed). A follower whose ``news()`` raises is logged and
        woken; no one else notices."""
        ...

    def unfollow(self, follower: Follower) -> None:
        """Stop calling *follower*."""
        ...

    def snapshot(self) -> Snapshot:
        """The events so far (see :class:`Snapshot`)."""
        ...


class MemoryEventLog:
    """The :class:`EventLog` kept in this process, as bytes."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("I")  # event n's payload is _data[_ends[n-1]:_ends[n]]
        self._kinds = bytearray()
        self._second_starts = array("I")  # first event index of each second
        self._seconds = array("Q")  # the unix seconds of that run
        #: Events readers see (all of them here; see HeldEventLog).
        self._count = 0
        #: Closed to appends (finished); closed to readers once they see
        #: the end (:attr:`closed`).
        self._sealed = False
        self._closed = False
        self._waiters = trio.lowlevel.ParkingLot()
        #: Readers written to in the append itself (see follow); a dict, so
        #: that one leaves in O(1) however many follow.
        self._followers: dict[Follower, None] = {}
        #: Output chunks in the log.
        self.output_count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    def drop(self) -> None:
        """Let go of every event (their prediction's data was removed): the
        log is closed and empty, and readers following it end."""
        self._data = bytearray()
        self._ends = array("I")
        self._kinds = bytearray()
        self._second_starts = array("I")
        self._seconds = array("Q")
        self._count = 0
        self._sealed = self._closed = True
        self._waiters.unpark_all()
        self._wake_followers()

    # -- writing ------------------------------------------------------------

    def _stamp(self) -> None:
        now = int(time.time())
        if not self._seconds or self._seconds[-1] != now:
            self._second_starts.append(len(self._kinds))
            self._seconds.append(now)

    def _append(
        self, payload: bytes, lengths: Iterable[int], kinds: bytes, stamp: bool = True
    ) -> None:
        if self._sealed:
            raise RuntimeError("event log is closed")
        if stamp:
            self._stamp()
        start = len(self._data)
        self._data += payload
        if len(kinds) == 1:  # one event: its payload is the whole
            self._ends.append(start + len(payload))
        else:
            self._ends.extend(itertools.accumulate(lengths, initial=start))
            del self._ends[len(self._kinds)]  # the initial value, start, is not an end
        self._kinds += kinds
        self._publish()

    def _publish(self) -> None:
        """Readers see every event appended (at once, here)."""
        self._show(len(self._kinds))

    def _show(self, count: int) -> None:
        self._count = count
        if self._waiters:  # (an empty lot's unpark_all still costs a microsecond)
            self._waiters.unpark_all()
        if self._followers:
            for follower in tuple(self._followers):
                try:
                    follower.news()
                except Exception:  # a reader's failure is not the prediction's
                    log.exception("a stream reader failed to write; it goes on the usual way")
                    follower.wake()

    def _seal(self) -> None:
        """No more appends; readers learn of the end once they see it."""
        self._sealed = True
        if self._count == len(self._kinds):
            self._closed = True
            self._waiters.unpark_all()
            self._wake_followers()

    def append_output(self, batch: OutputBatch) -> None:
        """Append every chunk of *batch*, one ``output`` event each."""
        self._append(batch.payload, batch.lengths, batch.kinds)
        self.output_count += batch.count

    def append_log(self, line: str) -> None:
        payload = line.encode()
        self._append(payload, [len(payload)], bytes([_LOGS | _breaks(line)]))

    def finish(self, error: str | None, done: dict[str, str]) -> None:
        """Append ``error`` (if *error*) and ``done``, and close the log."""
        if error is not None:
            payload = strictjson.dumps({"detail": error}).encode()
            self._append(payload, [len(payload)], bytes([_ERROR]))
        payload = strictjson.dumps(done, separators=(",", ":")).encode()
        self._append(payload, [len(payload)], bytes([_DONE]))
        self._seal()

    # -- replicas -----------------------------------------------------------

    def span(self, start: int) -> Span:
        """The events from *start* on, as bytes (see :class:`Span`)."""
        end = len(self._kinds)
        begin = self._ends[start - 1] if start else 0
        if end == start + 1 and self._second_starts[-1] <= start:
            # One event, appended in the last second: a paced stream's
            # usual span (a writer makes one per token).
            payload = bytes(self._data[begin : self._ends[start]])
            return Span(
                start,
                payload,
                _ONE_LENGTH(len(payload)),
                bytes(self._kinds[start:]),
                _ONE_SECOND(0, self._seconds[-1]),
            )
        ends = self._ends[start:end]
        lengths = array("I", (b - a for a, b in zip([begin, *ends], ends, strict=False)))
        seconds = array("Q")
        run = max(0, bisect.bisect_right(self._second_starts, start) - 1)
        for first, second in zip(self._second_starts[run:], self._seconds[run:], strict=True):
            seconds += array("Q", [max(first, start) - start, second])
        payload = bytes(self._data[begin : ends[-1]]) if ends else b""
        return Span(
            start, payload, lengths.tobytes(), bytes(self._kinds[start:]), seconds.tobytes()
        )

    def extend(self, span: Span) -> None:
        """Append *span* as its writer's log holds it (the same ids); a
        ``done`` in it closes the log. Raises ``ValueError`` unless it
        starts where this log ends."""
        if span.start != len(self._kinds):
            raise ValueError(f"a span from event {span.start} cannot follow {len(self._kinds)}")
        lengths, seconds = array("I"), array("Q")
        lengths.frombytes(span.lengths)
        seconds.frombytes(span.seconds)
        if len(lengths) != len(span.kinds) or sum(lengths) != len(span.payload):
            raise ValueError("a span's lengths do not match its payload")
        for offset, second in zip(seconds[::2], seconds[1::2], strict=True):
            if not self._seconds or self._seconds[-1] != second:
                self._second_starts.append(span.start + offset)
                self._seconds.append(second)
        self.output_count += sum(k & ~_BREAKS in (_TEXT, _JSON) for k in span.kinds)
        self._append(span.payload, lengths, span.kinds, stamp=False)
        if span.kinds and span.kinds[-1] == _DONE:
            self._seal()

    # -- following ----------------------------------------------------------

    async def wait_beyond(self, index: int) -> None:
        """Wait until the log holds more than *index* events or is closed."""
        while self._count <= index and not self._closed:
            await self._waiters.park()

    def follow(self, follower: Follower) -> None:
        """Call ``follower.news()`` in each append from now on, until
        :meth:`unfollow`; ``follower.wake()`` when the log closes."""
        self._followers[follower] = None
        if self._closed:
            follower.wake()

    def unfollow(self, follower: Follower) -> None:
        del self._followers[follower]

    def _wake_followers(self) -> None:
        for follower in tuple(self._followers):
            follower.wake()

    async def wait_closed(self) -> None:
        """Wait until the log is closed (its prediction has ended)."""
        while not self._closed:
            await self._waiters.park()

    def index_after(self, last_event_id: str) -> int:
        return index_after(last_event_id)

    def read(self, start: int, limit: int = SLICE_BYTES, part: int = 0) -> tuple[bytes, int, int]:
        """The SSE frames of the events from *start* on, at most about
        *limit* bytes of them, and where the next read starts. An event
        whose frame could be larger than *limit* (its payload, or a seventh
        of it for text with line breaks) is read in pieces (:func:`_piece`;
        *part* is how many of its payload bytes were read)."""
        end = self._count
        data, ends, kinds = self._data, self._ends, self._kinds
        if end == start + 1 and end == len(kinds) and not kinds[start] & _BREAKS and not part:
            # One new event (so in the last second), the usual read of a
            # live stream: framed at once, unless it is too large for that.
            begin = ends[start - 1] if start else 0
            if ends[start] - begin <= limit:
                frame = _FRAME % (
                    _HEADS[kinds[start]],
                    self._seconds[-1],
                    start,
                    data[begin : ends[start]],  # any buffer will do
                )
                return frame, end, 0
        if start >= end:
            return b"", start, 0
        if part or _framed(ends[start] - (ends[start - 1] if start else 0), kinds[start]) > limit:
            return _piece(self, start, part, limit)
        frames: list[bytes] = []
        size = 0
        i = start
        while i < end and size < limit:
            run = bisect.bisect_right(self._second_starts, i) - 1
            seconds = self._seconds[run]
            run_end = self._second_starts[run + 1] if run + 1 < len(self._second_starts) else end
            run_end = min(run_end, end)
            begin = ends[i - 1] if i else 0
            if _framed(ends[i] - begin, kinds[i]) > limit:  # the next read takes it, in pieces
                break
            if kinds[i] & _BREAKS:  # several data: lines: bridge.sse frames it
                text = data[begin : ends[i]].decode()
                frames.append(encode_event(_NAMES[kinds[i] & ~_BREAKS], f"{seconds}:{i}", text))
                size += len(frames[-1])
                i += 1
                continue
            # The events up to the next one with a line break (or the end of
            # this second), framed alike; no more than can fit in the limit.
            found = _WITH_BREAKS.search(kinds, i, run_end)
            stop = min(
                found.start() if found else run_end,
                i + (limit - size) // _MIN_FRAME + 1,
                bisect.bisect_left(ends, begin + limit - size, i, run_end) + 1,
            )
            if stop - 1 > i and ends[stop - 1] - ends[stop - 2] > limit:
                stop -= 1  # the one that reaches the limit is read in pieces, later
            heads = [head + b"%d:" % seconds for head in _HEADS]
            stretch = [
                _FRAME_IN_SECOND % (head, j, data[a:b])
                for head, j, a, b in zip(
                    map(heads.__getitem__, kinds[i:stop]),
                    range(i, stop),
                    [begin, *ends[i : stop - 1]],
                    ends[i:stop],
                    strict=True,
                )
            ]
            # Up to the frame that reaches the limit.
            sums = list(itertools.accumulate(map(len, stretch)))
            keep = min(len(sums), bisect.bisect_left(sums, limit - size) + 1)
            frames += stretch[:keep]
            size += sums[keep - 1]
            i += keep
        return b"".join(frames), i, 0

    def names(self, start: int) -> set[str]:
        """The names of the events from *start* on."""
        return {_NAMES[kind & ~_BREAKS] for kind in set(self._kinds[start : self._count])}

    def read_records(
        self, start: int, limit: int = SLICE_BYTES, part: int = 0
    ) -> tuple[list[Record], int, int]:
        end = self._count
        if start >= end:
            return [], start, 0
        ends = self._ends
        begin = ends[start - 1] if start else 0
        if part or ends[start] - begin > limit:
            return _record_piece(self, start, part, limit)
        # Up to the event that reaches the limit (found in C, no step per
        # event), and no more than MAX_RECORDS (empty chunks cost no bytes).
        stop = min(
            end,
            start + MAX_RECORDS,
            bisect.bisect_left(ends, begin + limit, start, end) + 1,
        )
        if stop - 1 > start and ends[stop - 1] - ends[stop - 2] > limit:
            stop -= 1  # the one that reaches the limit comes in pieces, later
        out = []
        data = self._data
        for kind, a, b in zip(
            self._kinds[start:stop],
            [begin, *self._ends[start : stop - 1]],
            self._ends[start:stop],
            strict=True,
        ):
            kind &= ~_BREAKS
            out.append(Record(_NAMES[kind], data[a:b].decode(), kind == _JSON))
        return out, stop, 0

    # -- what the prediction object shows -----------------------------------

    def snapshot(self) -> LogView:
        return LogView(self._data, self._ends, self._kinds, self._count)


# -- an event too large to frame whole: read a piece at a time --------------


def _piece(log: MemoryEventLog, index: int, part: int, limit: int) -> tuple[bytes, int, int]:
    """About *limit* bytes of the frame of *log*'s event *index*, one too large
    to frame whole for each reader: its payload from byte *part* on
    (never inside a character, nor between the two of a ``\r\n``),
    the head before the first piece and the blank line after the last."""
    data, kind = log._data, log._kinds[index]
    begin, a, b, stop = _cut(log, index, part, limit // _framed(1, kind))
    if b < stop and data[b - 1 : b + 1] == b"\r\n":
        b += 1
    piece = bytes(data[a:b])
    if kind & _BREAKS:  # each line break starts a data: line, as bridge.sse writes it
        piece = sse.data_lines(piece.decode()).encode()
    if not part:
        run = bisect.bisect_right(log._second_starts, index) - 1
        piece = b"%b%d:%d%b%b" % (
            _HEADS[kind & ~_BREAKS],
            log._seconds[run],
            index,
            sse.DATA,
            piece,
        )
    if b < stop:
        return piece, index, b - begin
    return piece + sse.END, index + 1, 0


def _cut(log: MemoryEventLog, index: int, part: int, size: int) -> tuple[int, int, int, int]:
    """Where *log*'s event *index* begins, and the piece of about *size* of its
    payload bytes from byte *part* on (never ending inside a UTF-8
    character): its start and end; and where the event ends."""
    begin = log._ends[index - 1] if index else 0
    stop = log._ends[index]
    a = begin + part
    b = min(stop, a + max(size, 1))
    while b < stop and log._data[b] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        b += 1
    return begin, a, b, stop


def _record_piece(
    log: MemoryEventLog, index: int, part: int, limit: int
) -> tuple[list[Record], int, int]:
    """About *limit* bytes of *log*'s event *index*'s data from byte *part* on,
    as a record (see :func:`_piece`)."""
    data, kind = log._data, log._kinds[index] & ~_BREAKS
    begin, a, b, stop = _cut(log, index, part, limit)
    piece = Record(_NAMES[kind], data[a:b].decode(), kind == _JSON)
    if b < stop:
        return [piece], index, b - begin
    return [piece], index + 1, 0


class HeldEventLog(MemoryEventLog):
    """A :class:`MemoryEventLog` whose appends readers see only once they
    are shown (:meth:`show`): the log of a prediction this process runs
    for a store shared with other processes, shown as far as the store
    holds it, so that its readers here and every other process's read one
    history (an id names the same event everywhere). If the store ends
    the prediction otherwise (this process lost its lease, or the store
    refused its output), what it ends with replaces what was never shown
    (:meth:`replace_tail`)."""

    def _publish(self) -> None:
        pass  # held until shown

    @property
    def held(self) -> int:
        """Events appended, shown or not: what the store is sent."""
        return len(self._kinds)

    def show(self, count: int) -> None:
        """Readers see the first *count* events (the store holds them)."""
        count = min(count, len(self._kinds))
        if count > self._count:
            self._show(count)
            if self._sealed:
                self._seal()

    def replace_tail(self, span: Span) -> None:
        """End with the store's ending *span*: the events from
        ``span.start`` on that were appended here (never shown: the store
        does not hold them) give way to it, and readers see it all."""
        start = max(self._count, min(span.start, len(self._kinds)))
        removed = self._kinds[start:].translate(_WITHOUT_BREAKS)
        self.output_count -= removed.count(_TEXT) + removed.count(_JSON)
        del self._data[self._ends[start - 1] if start else 0 :]
        del self._ends[start:]
        del self._kinds[start:]
        while self._second_starts and self._second_starts[-1] >= start:
            self._second_starts.pop()
            self._seconds.pop()
        self._sealed = False
        self.extend(span._replace(start=start))
        self._show(len(self._kinds))
        self._seal()


class LogView:
    """The events of a log up to the moment it was taken, which any thread
    may read while the log goes on: a log only appends past them, and
    :meth:`MemoryEventLog.drop` replaces its buffers rather than emptying
    them. (Taken in the log's own thread: see :meth:`MemoryEventLog.snapshot`.)"""

    __slots__ = ("_count", "_data", "_ends", "_kinds")

    def __init__(self, data: bytearray, ends: array[int], kinds: bytearray, count: int) -> None:
        self._data, self._ends, self._kinds = data, ends, kinds
        # Events shown to readers (kinds are appended last: each is whole).
        self._count = count

    def _payloads(self, wanted: frozenset[int]) -> list[tuple[int, str]]:
        out = []
        begin = 0
        data, ends = self._data, self._ends
        for j, kind in enumerate(self._kinds[: self._count]):
            stop = ends[j]
            if kind & ~_BREAKS in wanted:
                out.append((kind & ~_BREAKS, data[begin:stop].decode()))
            begin = stop
        return out

    def outputs(self) -> list[Any]:
        """Every output chunk, as the model sent it (text or a JSON value)."""
        texts = self._texts_only()
        if texts is not None:
            return texts
        return [
            text if kind == _TEXT else json.loads(text)
            for kind, text in self._payloads(frozenset({_TEXT, _JSON}))
        ]

    def _texts_only(self) -> list[str] | None:
        """The output of a log that is text chunks and then, maybe, its end
        (an ``error``, ``done``): what a language model writes. Sliced with
        C-level iteration, no Python step per chunk (700,000 chunks: 40 ms,
        not 200). None for any other log."""
        kinds = self._kinds[: self._count].translate(_WITHOUT_BREAKS)
        texts = len(kinds) - len(kinds.lstrip(bytes([_TEXT])))
        if not texts or any(k in (_TEXT, _JSON, _LOGS) for k in kinds[texts:]):
            return None
        ends = self._ends[:texts]
        payload = bytes(self._data[: ends[-1]])
        bounds = map(slice, itertools.chain((0,), ends), ends)
        if payload.isascii():  # byte offsets are character offsets
            return list(map(payload.decode("ascii").__getitem__, bounds))
        return list(map(bytes.decode, map(payload.__getitem__, bounds)))

    def logs(self) -> list[str]:
        kinds = self._kinds[: self._count].translate(_WITHOUT_BREAKS)
        if bytes([_LOGS]) not in kinds:  # found in C: no Python step per event
            return []
        return [text for _, text in self._payloads(frozenset({_LOGS}))]


def _framed(size: int, kind: int) -> int:
    """The most bytes *size* payload bytes of an event of *kind* take in
    its frame: each line break (one byte at least) becomes ``\\ndata: ``."""
    return size * _BREAK_GROWTH if kind & _BREAKS else size


def _breaks(text: str) -> int:
    """The kind flag for *text*: ``_BREAKS`` if it holds a line break."""
    return _BREAKS if LINE_BREAK.search(text) else 0
