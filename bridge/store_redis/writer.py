"""The predictions this process runs, mirrored to Redis by one task.

Each prediction has one writer, the process running it, which keeps it
live in memory and mirrors it to Redis. Costs are per batch, not per
token: every prediction that changed since the last write goes in one
script call (:data:`~.scripts.WRITE`: for each, its record if what it
says changed, and its new events as one ``XADD`` of a
:class:`~bridge.core.events.Span`, if this process still holds its lease),
so at load one round trip carries many predictions' batches. Readers here
see a prediction's events once Redis holds them
(:class:`~bridge.core.events.HeldEventLog`): one history, whichever
process a reader is on.

A prediction is *let go of* when it can no longer be written: Redis
refused its output (out of memory), this process lost its lease (a
survivor may have ended it), or Redis has been away for ``lease_seconds``.
Its task is stopped, and it ends as failed in Redis (or as a survivor
ended it there), and here exactly so (:mod:`.endings`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import coredis.exceptions
import trio

from ..backoff import delays
from ..core.events import HeldEventLog
from ..core.predictions import Prediction
from ..core.retention import Retention
from . import codec
from .db import Db
from .endings import ORPHANED, REFUSED, end_as, ending_here, fail_in_store
from .errors import attempt, brief
from .leases import Lease
from .scripts import WRITE, one_call, retention_args, write_fields, write_keys
from .trim import trim

__all__ = ["Writer"]

log = logging.getLogger("bridge.store_redis")

#: Once Redis refused a write for want of memory, creates get 503 until
#: its used_memory is below this share of its maxmemory (room for them to
#: write something), asked at most every REFUSAL_SECONDS.
ROOM = 0.9
REFUSAL_SECONDS = 1.0


#: Predictions written by one script call, at most.
PER_CALL = 128
#: Bytes of fields in one call, about (:func:`.scripts.one_call`): a call's
#: fields are one argument, and a write after an outage carries all that
#: came meanwhile.
CALL_BYTES = 16 * 1024 * 1024


class _Batch(NamedTuple):
    """One prediction's part of a write: its arguments of
    :data:`~.scripts.WRITE`, and what Redis holds once it is written."""

    prediction: Prediction
    keys: tuple[bytes, ...]  # write_keys
    fields: bytes  # write_fields
    sent: tuple[int, codec.State, bool, bool]  # events held, state, done, any output


def _calls(batches: list[_Batch]) -> list[list[_Batch]]:
    """*batches* split into script calls: :data:`PER_CALL` at most, and
    about :data:`CALL_BYTES` of fields."""
    calls = []
    while batches:
        count = one_call([len(b.fields) for b in batches[:PER_CALL]], PER_CALL, CALL_BYTES)
        calls.append(batches[:count])
        batches = batches[count:]
    return calls


class _Pace:
    """When the next write starts: at least [store] write_gap_seconds after
    the last one started (Kafka's linger.ms), so that under load each
    carries what came meanwhile (a script call costs about 0.3 ms of this
    process' CPU whatever it carries), or at once if hurried (a
    prediction's first output, its end), cutting a wait short. News after a
    quiet spell goes at once."""

    def __init__(self, gap: float) -> None:
        self._gap = gap
        self._next = -math.inf  # Trio's clock
        self._hurried = False
        self._waiting: trio.CancelScope | None = None

    def hurry(self) -> None:
        self._hurried = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait(self) -> bool:
        """Until the next write may start (now); whether it was hurried."""
        if not self._hurried and trio.current_time() < self._next:
            try:
                with trio.CancelScope(deadline=self._next) as self._waiting:
                    await trio.sleep_forever()
            finally:
                self._waiting = None
        hurried, self._hurried = self._hurried, False
        self._next = trio.current_time() + self._gap
        return hurried


class _LetGo(NamedTuple):
    """A prediction let go of, whose end Redis does not hold yet."""

    prediction: Prediction
    process: str  # the name of the process that ran it
    error: str  # what it ends with
    shown: str  # its status as Redis last took it (what readers saw)


class Writer:
    """This process's predictions, and the task that writes them."""

    def __init__(self, db: Db, lease: Lease, stop: Callable[[str], object]) -> None:
        self._db = db
        self._lease = lease
        self._stop = stop  # stops a prediction's task here
        #: The predictions this process runs (until their end is written).
        self.local: dict[str, Prediction] = {}
        self.retention = Retention(
            self.local,
            max_bytes=db.settings.max_retained_bytes,
            seconds=float("inf"),
            count=1 << 62,
            metadata_seconds=float("inf"),
            metadata_count=1 << 62,
        )
        # Predictions changed since the last write; how many of each one's
        # events Redis has, and what its record there says.
        self._dirty: dict[str, Prediction] = {}
        self._written: dict[str, tuple[int, codec.State]] = {}
        # Its log's, record's and input's keys (named once: a write per
        # token each).
        self._keys: dict[str, tuple[bytes, bytes, bytes]] = {}
        self._has_dirty = trio.Event()
        self._pace = _Pace(db.settings.store_write_gap_seconds)
        self._output_held: set[str] = set()  # predictions whose output Redis holds
        self._writing = False
        self._wrote = trio.Event()
        self._let_go: dict[str, _LetGo] = {}
        # When Redis last refused a write (out of memory), and when it was
        # last asked whether it has room again (Trio's clock).
        self._refused_at: float | None = None
        self._room_asked_at = -math.inf
        # One task at a time ends what was let go of.
        self._ending = trio.Lock()

    def running(self, prediction: Prediction) -> None:
        """*prediction* (in Redis now) runs here."""
        self.local[prediction.id] = prediction
        self._written[prediction.id] = (0, codec.state(prediction))
        log, record, input = self._db.keys.written(prediction.id)
        self._keys[prediction.id] = (log.encode(), record.encode(), input.encode())

    def changed(self, prediction: Prediction) -> None:
        """Write *prediction* with the next batch, if it is still written:
        at once if Redis holds none of its output yet or it ended (time to
        first token, to done), else within [store] write_gap_seconds."""
        pid = prediction.id
        if pid in self.local:
            self._dirty[pid] = prediction
            self._has_dirty.set()
            if pid not in self._output_held or prediction.done:
                self._pace.hurry()

    async def flush(self) -> None:
        while self._dirty or self._writing or self._let_go:
            await self._wrote.wait()

    async def refusing(self) -> bool:
        """Whether Redis refuses writes for want of memory: it refused one,
        and has not had room since (see :data:`ROOM`)."""
        if self._refused_at is None:
            return False
        now = trio.current_time()
        if now - self._room_asked_at >= REFUSAL_SECONDS:
            self._room_asked_at = now
            with attempt("ask Redis how much memory it uses") as tried:
                memory = await self._db.client.info("memory")
            if tried.failed:
                return True
            limit, used = (int(str(memory.get(k) or 0)) for k in ("maxmemory", "used_memory"))
            if not limit or used < limit * ROOM:
                self._refused_at = None
        return self._refused_at is not None

    async def write_forever(self) -> None:
        """Write what changed, one pipeline at a time, for as long as the
        store is open; a write that fails is retried (with backoff) with
        whatever changed meanwhile."""
        waits, retrying = delays(0.1, 2.0), False
        await self._lease.tried.wait()
        while True:
            if not self._let_go:
                await self._has_dirty.wait()
            hurried = await self._pace.wait()
            batch, self._dirty = self._dirty, {}
            self._has_dirty = trio.Event()
            self._writing = True
            try:
                with attempt("write predictions to Redis (retrying)") as tried:
                    if retrying:
                        # Away a while: the lease may have lapsed, and
                        # survivors may have ended these; not written over.
                        await self.check_lease()
                    await self._end_let_go()
                    await self._write([p for p in batch.values() if p.id in self.local])
                if tried.failed:
                    self._dirty = batch | self._dirty
                    self._has_dirty.set()
                    if hurried:  # the retry, after its backoff, at once
                        self._pace.hurry()
                    retrying = True
                    await trio.sleep(next(waits))
                else:
                    waits, retrying = delays(0.1, 2.0), False
            finally:
                self._writing = False
                self._wrote.set()
                self._wrote = trio.Event()

    async def _write(self, predictions: list[Prediction]) -> None:
        """The predictions' batches, :data:`PER_CALL` (or about
        :data:`CALL_BYTES`) to a script call, in one round trip. What Redis
        holds is then shown to readers here (and nothing else: one
        history); a prediction whose batch Redis refused ends as failed; if
        this process lost its lease, every one it runs does."""
        if not predictions:
            return
        now, process = time.time(), self._lease.process
        calls = _calls([self._batch(p, now, process) for p in predictions])
        lost = ended = forgot = False
        for batches, answer in zip(calls, await self._send(calls, process), strict=True):
            if isinstance(answer, coredis.exceptions.NoScriptError):
                forgot = True  # Redis restarted: written again
                for batch in batches:
                    self.changed(batch.prediction)
            elif isinstance(answer, coredis.exceptions.ResponseError):  # the script's
                if str(answer).startswith("FENCED"):
                    lost = True
                else:  # refused (out of memory), before it wrote any of them
                    for batch in batches:
                        if batch.prediction.id in self.local:
                            self._refused(batch.prediction, answer)
            else:
                ended = self._wrote_batches(batches) or ended
        if forgot:
            await self._db.scripts.load()
        if lost:
            await self._lost_lease(process)
        await self._end_let_go()
        if ended:
            with attempt("trim ended predictions in Redis"):  # not retried: written already
                await trim(self._db)

    def _batch(self, prediction: Prediction, now: float, process: str) -> _Batch:
        """*prediction*'s batch: its record only when what it says changed
        (status, metrics; not per batch of output: measured, half a paced
        chunk's cost in the writer), and a span (maybe empty; with a new
        record, for its copies elsewhere to take; the final one with the
        end)."""
        pid = prediction.id
        start, state = self._written[pid]
        events = prediction.events
        assert isinstance(events, HeldEventLog)
        held, done, now_state = events.held, prediction.done, codec.state(prediction)
        record = b""
        if now_state != state or done:
            record = codec.encode_record(prediction, process)
        entry = None
        if held > start or record:
            entry = codec.entry(events.span(start) if held > start else codec.empty(start))
        ending = None
        if done:
            ending = (str(now).encode(), (prediction.owner or "").encode(), pid.encode())
        return _Batch(
            prediction,
            write_keys(self._keys[pid], record, done),
            write_fields(record, entry, ending),
            (held, now_state, done, events.output_count > 0),
        )

    async def _send(self, calls: list[list[_Batch]], process: str) -> list[object]:
        """One script call per list of batches, in one round trip: each
        call's answer, or the error Redis gave it."""
        keys = self._db.keys
        shared = [keys.lease(process), keys.ended, keys.kept, keys.running(process), keys.owners]
        retention = retention_args(self._db.settings)
        async with self._db.client.pipeline(transaction=False, raise_on_error=False) as pipe:
            requests = [
                pipe.evalsha(
                    WRITE.sha,
                    [*shared, *(k for batch in batches for k in batch.keys)],
                    [*retention, b"".join([batch.fields for batch in batches])],
                )
                for batches in calls
            ]
        answers: list[object] = []
        for request in requests:
            try:
                answers.append(await request)
            except coredis.exceptions.ResponseError as exc:
                answers.append(exc)
        return answers

    def _wrote_batches(self, batches: list[_Batch]) -> bool:
        """Redis holds *batches*: readers here see them; whether any ended."""
        ended = False
        for batch in batches:
            prediction = batch.prediction
            if prediction.id not in self.local:
                continue  # let go of meanwhile (a lost lease)
            held, state, done, output = batch.sent
            self._written[prediction.id] = (held, state)
            if output:
                self._output_held.add(prediction.id)
            events = prediction.events
            assert isinstance(events, HeldEventLog)
            events.show(held)
            if done:  # Redis has it all now
                ended = True
                self._forget(prediction)
        return ended

    def _forget(self, prediction: Prediction) -> tuple[int, codec.State]:
        """No longer write *prediction*: what Redis last took of it."""
        del self.local[prediction.id]
        self._dirty.pop(prediction.id, None)
        self.retention.forget(prediction)
        del self._keys[prediction.id]
        self._output_held.discard(prediction.id)
        return self._written.pop(prediction.id)

    def _refused(self, prediction: Prediction, exc: Exception) -> None:
        """Redis refused *prediction*'s batch (out of memory, say): it ends
        as failed, saying why, and only it; creates wait until Redis has
        room again."""
        self._refused_at = trio.current_time()
        log.error(
            "Redis refused to keep the output of prediction %s (%s): it ends as failed",
            prediction.id,
            brief(exc),
        )
        self.let_go(prediction, self._lease.process, REFUSED.format(brief(exc, 120)))

    def let_go(self, prediction: Prediction, process: str, error: str) -> None:
        """Stop running and writing *prediction* (run by *process*: this
        one, under that name): it is to end in Redis as failed with *error*
        (:meth:`_end_let_go`), and here as Redis ends it."""
        _, (shown, _, _) = self._forget(prediction)
        self._let_go[prediction.id] = _LetGo(prediction, process, error, shown)
        self._stop(prediction.id)
        self._pace.hurry()

    def let_go_all(self, process: str, error: str) -> None:
        for prediction in list(self.local.values()):
            self.let_go(prediction, process, error)

    async def _end_let_go(self) -> None:
        """End in Redis the predictions let go of (or find how a survivor
        ended them), and end them so here: their readers here see what
        every other process's see."""
        async with self._ending:
            for pid, gone in list(self._let_go.items()):
                ending = await fail_in_store(self._db, pid, gone.process, gone.error)
                if ending is None:  # Redis no longer has it: ended here alone
                    ending = ending_here(gone.prediction, gone.shown, gone.error)
                end_as(gone.prediction, *ending)
                del self._let_go[pid]

    def end_here(self) -> None:
        """End here, as Redis will once it answers, what was let go of:
        their readers here wait for Redis no longer."""
        for gone in self._let_go.values():
            if not gone.prediction.events.closed:
                end_as(gone.prediction, *ending_here(gone.prediction, gone.shown, gone.error))

    async def check_lease(self) -> None:
        """Refresh the lease; if it lapsed meanwhile, :meth:`_lost_lease`."""
        # The name before the await: two checks of one lapsed lease (the
        # lease's task and a retried write) lose it once, not once each.
        process = self._lease.process
        if not await self._lease.refresh(process):
            await self._lost_lease(process)

    async def _lost_lease(self, old: str) -> None:
        """This process was away from Redis longer than its lease: survivors
        may have failed its running predictions, and nothing of theirs may
        be written any more. They are stopped and let go of, and end here
        as they end in Redis (a survivor's ending, or this process's if
        none wrote one yet); this process goes on under a new name and
        lease. (*old*: the name whose lease was lost; nothing to do if this
        process goes by another already.)"""
        if old != self._lease.process:
            return
        log.error(
            "this bridge process lost its lease in Redis (away for more than "
            "lease_seconds): its running predictions end as failed"
        )
        self._lease.rename()
        self.let_go_all(old, ORPHANED)
        await self._lease.take()
        await self._end_let_go()
