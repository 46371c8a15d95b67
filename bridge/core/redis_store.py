"""Predictions shared through Redis: every bridge process given the same
Redis (``[store] url``) gets, lists, streams and cancels every prediction,
whichever process runs it, and finds them again after a restart.

Each prediction has one writer, the process running it, which keeps it live
in memory (its readers here read that) and mirrors it to Redis. Keys, under
``[store] key_prefix``::

    seq              INCR: the creation order of every prediction
    p:<id>           its record (JSON): status, times, metrics, who runs it
    in:<id>          its input (JSON)
    log:<id>         its events: a Stream, one entry per span written
    all              sorted set: every id by creation order (listing)
    own:<sha256>     the same, per token (with auth on; tokens are hashed)
    ended, kept      sorted sets by completion time: the ended ones, and
                     those with their data (the count bounds)
    cmd:<process>    a process's commands: cancel, and wake-ups of its reader
    processes        every process, and lease:<process> (expires unless
                     refreshed) and running:<process> (its running ids):
                     the predictions of a process whose lease lapsed are
                     failed by a survivor (``[store] lease_seconds``)

Costs are per batch, not per token. A process writes from one task: every
prediction that changed since its last write goes in one pipeline, one
script call each (:data:`WRITE_LUA`: its record, and its new events as one
``XADD`` of a :class:`~bridge.core.events.Span`, if this process still
holds its lease), so at load one round trip carries many predictions'
batches. Readers on the process running a prediction see its events once
Redis holds them (:class:`~bridge.core.events.HeldEventLog`): one history,
whichever process a reader is on. A process reads for all its readers of other
processes' predictions in one blocking ``XREAD`` naming every stream they
follow (and its command stream, which a new reader or a cancel wakes):
one connection, whatever the number of readers. What it reads is appended to
an in-memory copy of the log (:meth:`MemoryEventLog.extend`), with the
writer's ids, so readers here read it as they read a local one.

Retention is expiry: at its end a prediction's input and events expire
after ``retention_seconds`` (then it shows ``data_removed``) and its record
after ``metadata_retention_seconds``; past the counts, the oldest ended ones
are deleted. ``max_retained_bytes`` bounds what this process keeps of the
predictions it runs (Redis' own ``maxmemory`` bounds the rest: see
docs/deploy.md).

The client is coredis, measured against redis-py's asyncio client
(``bench/redis_clients.py``): it runs on Trio itself, so a store call is a
plain ``await`` in the bridge's tasks (redis-py's would hop to the gRPC
loop's thread and back), and pipelined, what counts here, it costs within
3 µs of redis-py per command.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import secrets
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import coredis
import coredis.exceptions
import msgspec
import trio

from ..backoff import delays
from ..config import ConfigError, Settings
from ..errors import NotFound, StoreUnavailable
from .events import EventLog, HeldEventLog, MemoryEventLog, Span, ending
from .predictions import Prediction
from .retention import Retention
from .store import Page, parse_cursor

__all__ = ["RedisStore", "StoreUnreachable", "check_reachable", "open_redis_store"]

log = logging.getLogger(__name__)

#: Errors that mean Redis could not be reached or answer.
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)

#: How long a process's blocking read waits before it reads again anyway.
BLOCK_MS = 5000
#: How long any other command may take before Redis counts as away.
COMMAND_SECONDS = 5.0
#: Entries one read takes per stream (a reader far behind catches up in
#: steps of this many spans).
READ_COUNT = 256
#: A command stream keeps about this many commands, for this long.
COMMANDS_KEPT = 1000
COMMANDS_SECONDS = 3600


_ENDED = ("succeeded", "failed", "canceled")

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

# Lua, run by Redis in one step. What a prediction's end does to its keys:
# they expire as retention says, and it joins the ended ones.
_END_LUA = """
local function ended(p, input, log, ended, kept, running, owners, now, data, metadata, owner, id)
  redis.call('EXPIRE', p, metadata)
  redis.call('EXPIRE', input, data)
  redis.call('EXPIRE', log, data)
  redis.call('ZADD', ended, now, id)
  redis.call('ZADD', kept, now, id)
  redis.call('SREM', running, id)
  if owner ~= '' then redis.call('HSET', owners, id, owner) end
end
"""

#: One prediction's batch (its record if it changed, its new events as one
#: entry, and its end), written only while this process holds its lease:
#: once a survivor may have ended the prediction, nothing more is written.
#: KEYS: lease p in log ended kept running owners; ARGV: record or '',
#: the entry's i p l k t ('' for i: no entry), now ('' unless it ended),
#: data and metadata seconds, owner or '', id. Refused as a whole when
#: Redis is out of memory (no allow-oom).
WRITE_LUA = (
    "#!lua\n"
    + _END_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('FENCED this bridge process lost its lease')
end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1]) end
if ARGV[2] ~= '' then
  local entry = {'i', ARGV[2], 'p', ARGV[3], 'l', ARGV[4], 'k', ARGV[5], 't', ARGV[6]}
  if ARGV[1] ~= '' then table.insert(entry, 'r'); table.insert(entry, ARGV[1]) end
  redis.call('XADD', KEYS[4], '*', unpack(entry))
end
if ARGV[7] ~= '' then
  ended(KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8],
        ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
end
return 1
"""
)

#: End a running prediction as failed: its record, an ending entry after
#: the last one its log has (``error`` and ``done``), its keys' expiry;
#: unless its record changed since it was read (-1: read again) or is gone
#: (-2). Returns the index the ending starts at. Runs when Redis is out of
#: memory too (allow-oom: a few hundred bytes), so that a prediction whose
#: output Redis refused still ends, for every reader.
#: KEYS: p in log ended kept running owners; ARGV: the record read, the
#: ended record, the ending's p l k t, now, data and metadata seconds,
#: owner or '', id.
FAIL_LUA = (
    "#!lua flags=allow-oom\n"
    + _END_LUA
    + """
local current = redis.call('GET', KEYS[1])
if not current then return -2 end
if current ~= ARGV[1] then return -1 end
local start = 0
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields, i, k = last[1][2], 0, ''
  for j = 1, #fields, 2 do
    if fields[j] == 'i' then i = tonumber(fields[j + 1]) end
    if fields[j] == 'k' then k = fields[j + 1] end
  end
  start = i + string.len(k)
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'i', start, 'p', ARGV[3], 'l', ARGV[4], 'k', ARGV[5],
           't', ARGV[6], 'r', ARGV[2])
ended(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7],
      ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
return start
"""
)

#: Take a lease: its key, and the process among the processes. Runs when
#: Redis is out of memory too: a lease never starves behind output.
#: KEYS: lease processes; ARGV: its life in ms, the process.
LEASE_LUA = """#!lua flags=allow-oom
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""

_LEASE_SHA = hashlib.sha1(LEASE_LUA.encode()).hexdigest()
_WRITE_SHA = hashlib.sha1(WRITE_LUA.encode()).hexdigest()
_FAIL_SHA = hashlib.sha1(FAIL_LUA.encode()).hexdigest()

#: Once Redis refused a write for want of memory, creates get 503 until
#: its used_memory is below this share of its maxmemory (room for them to
#: write something), asked at most every REFUSAL_SECONDS.
ROOM = 0.9
REFUSAL_SECONDS = 1.0


#: What a record says that changes as a prediction runs, output aside.
_State = tuple[str, str, tuple[tuple[str, float], ...]]


def _state(prediction: Prediction) -> _State:
    return (str(prediction.status), prediction.version, tuple(prediction.metrics.items()))


def _process_name() -> str:
    """A bridge process as Redis knows it: host, pid, and a random part
    (a new one after it lost its lease)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class RedisStore:
    """The :class:`~bridge.core.store.PredictionStore` kept in Redis (open
    it with :func:`open_redis_store`)."""

    def __init__(
        self, settings: Settings, client: coredis.Redis[bytes], reader: coredis.Redis[bytes]
    ) -> None:
        self._settings = settings
        self._client = client
        self._reader = reader  # its own connection: it blocks in XREAD
        self._prefix = settings.store_key_prefix
        #: This process, as the records of the predictions it runs name it.
        self.process = _process_name()
        # Predictions of this process that survivors failed while it had
        # lost its lease (it could not reach Redis): written no more.
        self._taken: set[str] = set()
        # The predictions this process runs (until their end is written).
        self._local: dict[str, Prediction] = {}
        self._retention = Retention(
            self._local,
            max_bytes=settings.max_retained_bytes,
            seconds=float("inf"),
            count=1 << 62,
            metadata_seconds=float("inf"),
            metadata_count=1 << 62,
        )
        # Predictions changed since the last write, and how many of each
        # one's events Redis has, and what its record there says.
        self._dirty: dict[str, Prediction] = {}
        self._written: dict[str, tuple[int, _State]] = {}
        self._has_dirty = trio.Event()
        self._writing = False
        self._wrote = trio.Event()
        # Copies of other processes' predictions that a reader here holds,
        # and the logs followed for them: stream key -> last entry id.
        self._copies: weakref.WeakValueDictionary[str, Prediction] = weakref.WeakValueDictionary()
        self._following: dict[bytes, tuple[weakref.ref[_CopyLog], bytes]] = {}
        self._cancel: Callable[[str, str | None], object] = lambda prediction_id, error: None
        # Loads of copies under way, by prediction id.
        self._loading: dict[str, trio.Event] = {}
        # Since when Redis has not answered this process (Trio's clock),
        # and whether it gave up on it for this outage.
        self._away_since: float | None = None
        self._gave_up = False
        # Predictions this process stopped writing (it lost its lease, or
        # Redis refused their output) whose end Redis does not hold yet:
        # the process that ran each, and the error it ends with.
        self._unended: dict[str, tuple[Prediction, str, str]] = {}
        # When Redis last refused a write (out of memory), and when it was
        # last asked whether it has room again (Trio's clock).
        self._refused_at: float | None = None
        self._room_asked_at = -math.inf
        # Set once the lease was first taken (or tried): writes wait for it.
        self._leased = trio.Event()
        # One task at a time ends what was let go of, or takes a new lease.
        self._ending = trio.Lock()

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _refusing(self) -> bool:
        """Whether Redis refuses writes for want of memory: it refused one,
        and has not had room since (see :data:`ROOM`)."""
        if self._refused_at is None:
            return False
        now = trio.current_time()
        if now - self._room_asked_at >= REFUSAL_SECONDS:
            self._room_asked_at = now
            try:
                memory = await self._client.info("memory")
            except REDIS_ERRORS:
                return True
            limit, used = (int(str(memory.get(k) or 0)) for k in ("maxmemory", "used_memory"))
            if not limit or used < limit * ROOM:
                self._refused_at = None
        return self._refused_at is not None

    # -- the store interface ------------------------------------------------

    @property
    def kept_bytes(self) -> int:
        return self._retention.bytes

    def new_log(self) -> EventLog:
        return HeldEventLog()

    async def add(self, prediction: Prediction) -> None:
        if await self._refusing():
            raise StoreUnavailable(
                "the prediction store (Redis) is out of memory and refuses writes; retry later"
            )
        self._retention.admit(prediction)
        try:
            prediction.seq = await self._client.incr(self._key("seq"))
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("p", prediction.id), self._record(prediction))
                pipe.set(self._key("in", prediction.id), prediction.input_json)
                pipe.sadd(self._key("running", self.process), [prediction.id])
                pipe.zadd(self._key("all"), {prediction.id: prediction.seq})
                if prediction.owner is not None:
                    pipe.zadd(self._key("own", prediction.owner), {prediction.id: prediction.seq})
        except BaseException as exc:
            self._retention.forget(prediction)
            await self._undo_add(prediction)
            if isinstance(exc, REDIS_ERRORS):
                raise _unavailable(exc) from exc
            raise
        self._local[prediction.id] = prediction
        self._written[prediction.id] = (0, _state(prediction))

    async def _undo_add(self, prediction: Prediction) -> None:
        """Take back an add that failed or was cancelled: its writes may
        have gone through (a timeout after they did), and nothing would
        ever end a prediction no process runs."""
        with trio.move_on_after(COMMAND_SECONDS, shield=True):
            with contextlib.suppress(*REDIS_ERRORS):
                pid = prediction.id
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.delete([self._key("p", pid), self._key("in", pid)])
                    pipe.srem(self._key("running", self.process), [pid])
                    pipe.zrem(self._key("all"), [pid])
                    if prediction.owner is not None:
                        pipe.zrem(self._key("own", prediction.owner), [pid])

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        prediction = self._local.get(prediction_id)
        if prediction is None:
            # A running one that a reader here follows already (an ended
            # one is read again: its record may have expired since).
            prediction = self._copies.get(prediction_id)
            if prediction is not None and prediction.done:
                prediction = None
        if prediction is None:
            try:
                prediction = await self._load_once(prediction_id)
            except REDIS_ERRORS as exc:
                raise _unavailable(exc) from exc
            except _Gap:
                log.error("prediction %s: its log in Redis has a gap", prediction_id)
                raise NotFound(f"prediction {prediction_id} not found") from None
        if owner is not None and prediction.owner != owner:
            raise NotFound(f"prediction {prediction_id} not found")
        return prediction

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        self._retention.charge(prediction, cost, cap)

    def ended(self, prediction: Prediction) -> None:
        if prediction.id in self._taken:  # its end was written for it
            self._taken.discard(prediction.id)
            return
        self._changed(prediction)  # written with its end, then let go of here

    async def cancel_elsewhere(self, prediction: Prediction) -> None:
        try:
            record = await self._client.get(self._key("p", prediction.id))
            if record is None:
                return
            process = msgspec.json.decode(record).get("process")
            if process and process != self.process:
                await self._command(process, {"cancel": prediction.id})
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc

    def serve_cancels(self, cancel: Callable[[str, str | None], object]) -> None:
        self._cancel = cancel

    async def flush(self) -> None:
        while self._dirty or self._writing or self._unended:
            await self._wrote.wait()

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Any],
    ) -> Page:
        try:
            return await self._page(cursor, owner, encode)
        except REDIS_ERRORS as exc:
            raise _unavailable(exc) from exc

    async def _page(
        self, cursor: str | None, owner: str | None, encode: Callable[[Prediction], Any]
    ) -> Page:
        index = self._key("own", owner) if owner is not None else self._key("all")
        direction, seq = parse_cursor(cursor) if cursor else ("b", None)
        taken: list[tuple[Prediction, bytes]] = []
        size = 0
        # Ids whose record expired are dropped from the index as they are met.
        bound: int | None = seq
        while len(taken) < self._settings.page_size:
            want = self._settings.page_size - len(taken)
            if direction == "b":
                upper = f"({bound}" if bound is not None else "+inf"
                found = await self._client.zrange(
                    index, upper, "-inf", sortby=coredis.PureToken.BYSCORE, rev=True,
                    offset=0, count=want, withscores=True,
                )  # fmt: skip
            else:
                found = await self._client.zrange(
                    index, f"({bound}", "+inf", sortby=coredis.PureToken.BYSCORE,
                    offset=0, count=want, withscores=True,
                )  # fmt: skip
            if not found:
                break
            bound = int(found[-1][1])
            full = False
            for member, _ in found:
                prediction_id = _text(member)
                try:
                    prediction = await self.get(prediction_id)
                except NotFound:
                    await self._client.zrem(index, [prediction_id])
                    continue
                encoded = await encode(prediction)
                if taken and size + len(encoded) > self._settings.max_page_bytes:
                    full = True
                    break
                taken.append((prediction, encoded))
                size += len(encoded)
            if full:
                break
        if not taken:
            return Page([], None, None)
        if direction == "a":
            taken.reverse()
        first, last = taken[0][0].seq, taken[-1][0].seq
        older = await self._client.zcount(index, "-inf", f"({last}")
        newer = await self._client.zcount(index, f"({first}", "+inf")
        return Page(
            [encoded for _, encoded in taken],
            f"b{last}" if older else None,
            f"a{first}" if newer else None,
        )

    # -- writing ------------------------------------------------------------

    def _record(self, prediction: Prediction) -> bytes:
        record = prediction.record(with_input=False)  # in:<id>, expiring with the data
        record["process"] = self.process
        return msgspec.json.encode(record)

    def changed(self, prediction: Prediction) -> None:
        if prediction.id in self._local:  # else let go of, or its end written
            self._changed(prediction)

    def _changed(self, prediction: Prediction) -> None:
        self._dirty[prediction.id] = prediction
        self._has_dirty.set()

    async def write_forever(self) -> None:
        """Write what changed, one pipeline at a time, for as long as the
        store is open; a write that fails is retried (with backoff) with
        whatever changed meanwhile."""
        waits, retrying = delays(0.1, 2.0), False
        await self._leased.wait()
        while True:
            if not self._unended:
                await self._has_dirty.wait()
            batch, self._dirty = self._dirty, {}
            self._has_dirty = trio.Event()
            self._writing = True
            try:
                if retrying:
                    # Away a while: the lease may have lapsed, and survivors
                    # may have ended these predictions; not written over.
                    await self._check_lease()
                await self._end_unended()
                await self._write([p for p in batch.values() if p.id in self._local])
                waits, retrying = delays(0.1, 2.0), False
            except REDIS_ERRORS as exc:
                log.warning("cannot write predictions to Redis (retrying): %s", _brief(exc))
                self._dirty = batch | self._dirty
                self._has_dirty.set()
                retrying = True
                await trio.sleep(next(waits))
            finally:
                self._writing = False
                self._wrote.set()
                self._wrote = trio.Event()

    async def _write(self, predictions: list[Prediction]) -> None:
        """Each prediction's batch, one script call each, in one round trip.
        What Redis holds is then shown to readers here (and nothing else:
        one history); a prediction whose batch Redis refused ends as failed;
        if this process lost its lease, every one it runs does."""
        if not predictions:
            return
        sent: dict[str, tuple[int, _State, bool]] = {}
        calls = []
        now = time.time()
        lease = self._key("lease", self.process)
        async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for prediction in predictions:
                pid = prediction.id
                start, state = self._written.get(pid, (0, None))
                events = prediction.events
                assert isinstance(events, HeldEventLog)
                held, done = events.held, prediction.done
                # The record only when what it says changed (status, metrics):
                # not per batch of output (measured: half a paced chunk's
                # cost in the writer).
                record = b""
                if _state(prediction) != state or done:
                    record = self._record(prediction)
                # A span (maybe empty), and with a new record for its copies
                # elsewhere to take (the final one with the end).
                entry: list[bytes | str] = ["", "", "", "", ""]
                if held > start or record:
                    span = events.span(start) if held > start else _empty(start)
                    entry = list(_entry(span).values())
                keys = [lease, *self._end_keys(pid, self.process)]
                args = [
                    record, *entry, *self._end_args(pid, now if done else None, prediction.owner)
                ]  # fmt: skip
                calls.append((prediction, pipe.evalsha(_WRITE_SHA, keys, args)))
                sent[pid] = (held, _state(prediction), done)
        lost = ended = forgot = False
        for prediction, call in calls:
            try:
                await call
            except coredis.exceptions.NoScriptError:
                forgot = True  # Redis restarted: written again
                self._changed(prediction)
                continue
            except coredis.exceptions.ResponseError as exc:
                if str(exc).startswith("FENCED"):
                    lost = True
                elif prediction.id in self._local:
                    self._refused(prediction, exc)
                continue
            if prediction.id not in self._local:
                continue  # let go of meanwhile (a lost lease)
            held, state, done = sent[prediction.id]
            self._written[prediction.id] = (held, state)
            events = prediction.events
            assert isinstance(events, HeldEventLog)
            events.show(held)
            if done:  # Redis has it all now
                ended = True
                del self._local[prediction.id]
                self._retention.forget(prediction)
                self._written.pop(prediction.id, None)
        if forgot:
            await self._load_scripts()
        if lost:
            await self._lost_lease(lease.removeprefix(self._key("lease", "")))
        await self._end_unended()
        if ended:
            try:
                await self._trim()
            except REDIS_ERRORS as exc:  # written already: not to be retried
                log.warning("cannot trim ended predictions in Redis: %s", _brief(exc))

    def _refused(self, prediction: Prediction, exc: Exception) -> None:
        """Redis refused *prediction*'s batch (out of memory, say): it ends
        as failed, saying why, and only it; creates wait until Redis has
        room again."""
        self._refused_at = trio.current_time()
        log.error(
            "Redis refused to keep the output of prediction %s (%s): it ends as failed",
            prediction.id,
            _brief(exc),
        )
        self._let_go(prediction, self.process, REFUSED.format(_brief(exc, 120)))

    def _let_go(self, prediction: Prediction, process: str, error: str) -> None:
        """Stop running and writing *prediction* (run by *process*, this
        one under its name then): it is to end in Redis as failed with
        *error* (:meth:`_end_unended`), and here as Redis ends it."""
        pid = prediction.id
        self._local.pop(pid, None)
        self._dirty.pop(pid, None)
        self._written.pop(pid, None)
        self._retention.forget(prediction)
        self._taken.add(pid)
        self._unended[pid] = (prediction, process, error)
        self._cancel(pid, None)

    async def _end_unended(self) -> None:
        """End in Redis the predictions let go of (or find how a survivor
        ended them), and end them so here: their readers here see what
        every other process's see."""
        async with self._ending:
            for pid, (prediction, process, error) in list(self._unended.items()):
                await self._end_one(prediction, process, error)
                del self._unended[pid]

    async def _end_one(self, prediction: Prediction, process: str, error: str) -> None:
        ending = await self._fail_in_store(prediction.id, process, error)
        if ending is None:  # Redis no longer has it: ended here alone
            ending = _ending_here(prediction, error)
        _end_as(prediction, *ending)

    def _end_keys(self, prediction_id: str, process: str) -> list[str]:
        """The keys a prediction's end touches, in the order the scripts'
        ``ended`` takes them."""
        return [
            self._key("p", prediction_id), self._key("in", prediction_id),
            self._key("log", prediction_id), self._key("ended"), self._key("kept"),
            self._key("running", process), self._key("owners"),
        ]  # fmt: skip

    def _end_args(self, prediction_id: str, now: float | None, owner: str | None) -> list[str]:
        """The arguments of a prediction's end (*now* None: it has not
        ended), in the order the scripts' ``ended`` takes them."""
        settings = self._settings
        return [
            "" if now is None else str(now),
            str(max(1, int(settings.retention_seconds))),
            str(max(1, int(settings.metadata_retention_seconds))),
            owner or "",
            prediction_id,
        ]

    async def _load_scripts(self) -> None:
        for script in (WRITE_LUA, FAIL_LUA, LEASE_LUA):
            await self._client.script_load(script)

    # -- leases: a process that dies --------------------------------------------

    async def hold_lease(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take this process's lease (a key that expires unless refreshed),
        then keep it for as long as the store is open; survivors fail the
        predictions of a process whose lease lapsed (:meth:`reap_forever`),
        and nothing of this process's is written without it."""
        ttl = self._lease_ttl()
        with contextlib.suppress(*REDIS_ERRORS):  # else taken on the first check
            await self._load_scripts()
            await self._take_lease()
        self._leased.set()
        task_status.started()
        while True:
            await trio.sleep(ttl / 3000)
            try:
                await self._check_lease()
            except REDIS_ERRORS as exc:
                log.warning("cannot refresh this process's lease in Redis: %s", _brief(exc))
                self._away()
            else:
                self._away_since, self._gave_up = None, False

    async def _check_lease(self) -> None:
        """Refresh the lease; if it lapsed meanwhile, :meth:`_lost_lease`."""
        ttl = self._lease_ttl()
        process = self.process
        if not await self._client.pexpire(self._key("lease", process), ttl):
            await self._lost_lease(process)

    def _away(self) -> None:
        """Redis did not answer: once that has lasted lease_seconds, end
        what readers here wait for (this process's running predictions,
        and the copies followed of others'), as failed: no reader waits for
        Redis forever. Writes go on being retried for when it is back."""
        now = trio.current_time()
        if self._away_since is None:
            self._away_since = now
        if self._gave_up or now - self._away_since < self._settings.store_lease_seconds:
            return
        self._gave_up = True
        log.error("Redis has not answered for lease_seconds: ending the predictions it holds up")
        # Its own: let go of, and ended here now (what their readers have
        # seen, and the error); in Redis once it answers again.
        for prediction in list(self._local.values()):
            self._let_go(prediction, self.process, STORE_AWAY)
        for prediction, _, error in self._unended.values():
            if not prediction.events.closed:
                _end_as(prediction, *_ending_here(prediction, error))
        for key, (ref, _) in list(self._following.items()):
            copy = ref()
            if copy is not None and copy.prediction is not None and not copy.closed:
                copy.prediction.fail(STORE_AWAY)
            del self._following[key]

    async def release_lease(self) -> None:
        """Give the lease up at a clean stop (everything written): no
        survivor has anything to do for this process."""
        if not self._local:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete([self._key("lease", self.process)])
                pipe.srem(self._key("processes"), [self.process])

    async def _take_lease(self) -> None:
        keys = [self._key("lease", self.process), self._key("processes")]
        await self._evalsha(_LEASE_SHA, keys, [str(self._lease_ttl()), self.process])

    def _lease_ttl(self) -> int:
        """The lease's life, in ms: half of lease_seconds, so that with the
        survivors' checks a quarter of it apart, a dead process's
        predictions fail within lease_seconds."""
        return max(100, int(self._settings.store_lease_seconds * 500))

    async def _lost_lease(self, old: str) -> None:
        """This process was away from Redis longer than its lease: survivors
        may have failed its running predictions, and nothing of theirs may
        be written any more. They are stopped and let go of, and end here
        as they end in Redis (a survivor's ending, or this process's if
        none wrote one yet); this process goes on under a new name and
        lease. (*old*: the name whose lease was lost; nothing to do if this
        process goes by another already.)"""
        if old != self.process:
            return
        log.error(
            "this bridge process lost its lease in Redis (away for more than "
            "lease_seconds): its running predictions end as failed"
        )
        self.process = _process_name()
        for prediction in list(self._local.values()):
            self._let_go(prediction, old, ORPHANED)
        await self._take_lease()
        await self._end_unended()

    async def reap_forever(self) -> None:
        """Every quarter of lease_seconds, fail the running predictions of
        processes whose lease lapsed, as their writer would have."""
        while True:
            await trio.sleep(self._settings.store_lease_seconds / 4)
            try:
                await self._reap()
            except REDIS_ERRORS as exc:
                log.warning("cannot check other processes' leases in Redis: %s", _brief(exc))
            except Exception:  # a record it cannot read: no reason to stop
                log.exception("checking other processes' leases failed")
            try:
                await self._drop_vanished()
            except REDIS_ERRORS as exc:
                log.warning("cannot check the predictions followed in Redis: %s", _brief(exc))

    async def _drop_vanished(self) -> None:
        """End the copies followed here of predictions Redis no longer
        holds (it was restarted empty, or their keys were deleted): nothing
        would ever end them."""
        followed = [(key, ref()) for key, (ref, _) in list(self._following.items())]
        copies = [
            (key, copy, copy.prediction)
            for key, copy in followed
            if copy is not None and copy.prediction is not None
        ]
        if not copies:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            calls = [pipe.exists([self._key("p", p.id)]) for _, _, p in copies]
        for (key, copy, prediction), call in zip(copies, calls, strict=True):
            if not await call and not copy.closed:
                log.error("prediction %s is no longer in Redis: its copy here ends", prediction.id)
                prediction.fail(VANISHED)
                self._following.pop(key, None)

    async def _reap(self) -> None:
        for member in await self._client.smembers(self._key("processes")):
            process = _text(member)
            if process == self.process or await self._client.exists([self._key("lease", process)]):
                continue
            # One survivor does it: whoever takes this key first.
            claim = self._key("reaping", process)
            if not await self._client.set(
                claim, self.process.encode(), condition=coredis.PureToken.NX, ex=60
            ):
                continue
            running = self._key("running", process)
            for prediction_id in map(_text, await self._client.smembers(running)):
                await self._fail_in_store(prediction_id, process, ORPHANED)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete([running, claim])
                pipe.srem(self._key("processes"), [process])
            log.warning("bridge process %s stopped: its running predictions were failed", process)

    async def _fail_in_store(
        self, prediction_id: str, process: str, error: str
    ) -> tuple[Span, dict[str, Any]] | None:
        """End the prediction run by *process* as failed with *error* in
        Redis, unless it has ended there already: the ending its log has
        then (its span, and the record it carries), or None if Redis no
        longer holds it."""
        key, log_key = self._key("p", prediction_id), self._key("log", prediction_id)
        while True:
            record_bytes = await self._client.get(key)
            if record_bytes is None:
                return None
            record = msgspec.json.decode(record_bytes)
            if record["status"] in _ENDED:
                last = await self._client.xrevrange(log_key, "+", "-", count=1)
                if not last or _record_in(last[0].field_values) is None:
                    return None  # its log expired or was trimmed
                fields = last[0].field_values
                return _span(fields), _record_in(fields)  # type: ignore[return-value]
            now = time.time()
            record |= {"status": "failed", "error": error, "completed_at": now}
            encoded = msgspec.json.encode(record)
            span = ending(0, error)
            start = await self._evalsha(
                _FAIL_SHA,
                self._end_keys(prediction_id, process),
                [
                    record_bytes, encoded, span.payload, span.lengths, span.kinds,
                    span.seconds, *self._end_args(prediction_id, now, record.get("owner")),
                ],
            )  # fmt: skip
            if start == -2:
                return None
            if start != -1:  # else the record changed meanwhile: again
                return span._replace(start=int(start)), record

    async def _evalsha(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script of this module, loading them if Redis has not
        (a restarted Redis forgets them)."""
        try:
            return await self._client.evalsha(sha, keys, args)
        except coredis.exceptions.NoScriptError:
            await self._load_scripts()
            return await self._client.evalsha(sha, keys, args)

    async def _trim(self) -> None:
        """Delete the oldest ended predictions past the counts: their data
        past ``retention_count``, them past ``metadata_retention_count``."""
        settings, now, client = self._settings, time.time(), self._client
        # Data: past the window it expired by itself; past the count, deleted.
        kept = self._key("kept")
        await client.zremrangebyscore(kept, -math.inf, now - settings.retention_seconds)
        over = await client.zcard(kept) - settings.retention_count
        if over > 0:
            ids = [_text(m) for m in await client.zrange(kept, 0, over - 1)]
            await client.zrem(kept, ids)
            await client.delete([self._key(k, pid) for pid in ids for k in ("in", "log")])
        # Metadata: those past the window or the count leave the listings too.
        ended, horizon = self._key("ended"), now - settings.metadata_retention_seconds
        gone = [
            _text(m)
            for m in await client.zrange(
                ended, -math.inf, horizon, sortby=coredis.PureToken.BYSCORE
            )
        ]
        over = await client.zcard(ended) - len(gone) - settings.metadata_retention_count
        if over > 0:
            gone += [_text(m) for m in await client.zrange(ended, len(gone), len(gone) + over - 1)]
        if not gone:
            return
        owners = await client.hmget(self._key("owners"), gone)
        async with client.pipeline(transaction=False) as pipe:
            pipe.zrem(ended, gone)
            pipe.zrem(self._key("all"), gone)
            for pid, owner in zip(gone, owners, strict=True):
                if owner is not None:
                    pipe.zrem(self._key("own", _text(owner)), [pid])
            pipe.hdel(self._key("owners"), gone)
            pipe.delete([self._key(k, pid) for pid in gone for k in ("p", "in", "log")])

    # -- reading others' predictions -----------------------------------------

    async def _load_once(self, prediction_id: str) -> Prediction:
        """:meth:`_load`, one at a time per prediction: those asking for it
        meanwhile share the copy (two copies would follow one log)."""
        while (loading := self._loading.get(prediction_id)) is not None:
            await loading.wait()
            copy = self._copies.get(prediction_id)
            if copy is not None and not copy.done:
                return copy
        self._loading[prediction_id] = done = trio.Event()
        try:
            return await self._load(prediction_id)
        finally:
            del self._loading[prediction_id]
            done.set()

    async def _load(self, prediction_id: str) -> Prediction:
        """A copy of a prediction another process runs or ran, its events
        read so far, and followed from there on if it is still running."""
        record_bytes, input_bytes = await self._client.mget(
            [self._key("p", prediction_id), self._key("in", prediction_id)]
        )
        if record_bytes is None:
            raise NotFound(f"prediction {prediction_id} not found")
        record = msgspec.json.decode(record_bytes)
        events = _CopyLog()
        last = b"0-0"
        if record["status"] in _ENDED and input_bytes is None:
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
            self._following[self._key("log", prediction_id).encode()] = (
                weakref.ref(events),
                last,
            )
            await self._command(self.process, {"wake": ""})
        return prediction

    async def _catch_up(
        self, prediction_id: str, events: MemoryEventLog, last: bytes
    ) -> tuple[bytes, dict[str, Any] | None]:
        """Append the log's entries after *last* to *events*: the id of the
        last one read, and the last record they carried (if any)."""
        key = self._key("log", prediction_id)
        record = None
        while True:
            entries = await self._client.xrange(key, f"({last.decode()}", "+", count=READ_COUNT)
            for entry in entries:
                if not _take(events, _span(entry.field_values)):
                    raise _Gap(prediction_id)
                record = _record_in(entry.field_values) or record
                last = _raw(entry.identifier)
            if len(entries) < READ_COUNT:
                return last, record

    async def _command(self, process: str, fields: dict[str, str]) -> None:
        key = self._key("cmd", process)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xadd(
                key,
                fields,
                trim_strategy=coredis.PureToken.MAXLEN,
                threshold=COMMANDS_KEPT,
                trim_operator=coredis.PureToken.APPROXIMATELY,
            )
            pipe.expire(key, COMMANDS_SECONDS)

    async def read_forever(self) -> None:
        """Follow the logs of other processes' predictions that readers here
        hold, and this process's commands, in one blocking read at a time."""
        commands, last_command = b"", b"0-0"
        waits = delays(0.1, 2.0)
        while True:
            if commands != self._key("cmd", self.process).encode():  # a new name
                commands, last_command = self._key("cmd", self.process).encode(), b"0-0"
            streams: dict[bytes, bytes] = {commands: last_command}
            for key, (ref, last) in list(self._following.items()):
                if ref() is None:  # no reader holds it any more
                    del self._following[key]
                else:
                    streams[key] = last
            try:
                got = await self._reader.xread(streams, count=READ_COUNT, block=BLOCK_MS)
                waits = delays(0.1, 2.0)
            except REDIS_ERRORS as exc:
                log.warning("cannot read from Redis (retrying): %s", _brief(exc))
                await trio.sleep(next(waits))
                continue
            for key, entries in (got or {}).items():
                if key == commands:
                    last_command = _raw(entries[-1].identifier)
                    for entry in entries:
                        self._obey(entry.field_values)
                else:
                    self._apply(key, entries)

    def _obey(self, fields: Any) -> None:
        prediction_id = fields.get(b"cancel")
        if prediction_id is not None:
            self._cancel(prediction_id.decode(), None)

    def _apply(self, key: bytes, entries: Any) -> None:
        followed = self._following.get(key)
        events = followed[0]() if followed else None
        if followed is None or events is None or events.prediction is None:
            self._following.pop(key, None)
            return
        for entry in entries:
            record = _record_in(entry.field_values)
            if record is not None and not events.closed:  # before readers learn of an end
                events.prediction.refresh(record)
            if not _take(events, _span(entry.field_values)):
                log.error("the log %s has a gap: its copy here ends", key.decode())
                events.prediction.fail(LOST_TRACK)
                break
            self._following[key] = (followed[0], _raw(entry.identifier))
        if events.closed:
            self._following.pop(key, None)


def _ending_here(prediction: Prediction, error: str) -> tuple[Span, dict[str, Any]]:
    """How a prediction Redis cannot end ends here: what its readers here
    have seen, then *error*."""
    record = prediction.record(with_input=False)
    record |= {"status": "failed", "error": error, "completed_at": time.time()}
    return ending(len(prediction.events), error), record


def _end_as(prediction: Prediction, span: Span, record: dict[str, Any]) -> None:
    """End *prediction* here as the store ended it: its log with *span*
    (whatever was appended here and never shown gives way), its status and
    times as *record* says."""
    events = prediction.events
    if isinstance(events, HeldEventLog) and not events.closed:
        events.replace_tail(span)
    prediction.refresh(record)


def _brief(exc: BaseException, limit: int = 200) -> str:
    """What went wrong, in at most about *limit* characters: coredis puts a
    failing command's arguments (megabytes of output) in its message."""
    text = str(exc)
    kind = type(exc).__name__
    if "caused error: " in text:  # "Command # n (XADD <payload>) of pipeline caused error: ..."
        text = text.rsplit("caused error: ", 1)[1]
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{kind}: {text}"


class _Gap(Exception):
    """A prediction's log in Redis does not follow on from what was read."""


class _CopyLog(MemoryEventLog):
    """The log of a copy of another process's prediction. Its readers hold
    the log, not the prediction, so the log holds the prediction (whose
    status the reads bring up to date); it is followed while any reader
    holds it."""

    prediction: Prediction | None = None


def _take(events: MemoryEventLog, span: Span) -> bool:
    """Append *span* to a copy unless it holds it already (a write retried
    after a timeout can send a span twice) or has ended; False if it cannot
    follow (a gap: the copy is to be dropped, and read again if asked)."""
    if span.start + len(span.kinds) <= len(events) or events.closed:
        return True  # seen already, or after the end: nothing to add
    if span.start != len(events):  # a gap (or a part seen: spans never overlap so)
        return False
    events.extend(span)
    return True


def _empty(start: int) -> Span:
    """No events, from *start*: what carries a new record alone."""
    return Span(start, b"", b"", b"", b"")


def _entry(span: Span) -> dict[str, bytes]:
    return {
        "i": str(span.start).encode(),
        "p": span.payload,
        "l": span.lengths,
        "k": span.kinds,
        "t": span.seconds,
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _record_in(fields: Any) -> dict[str, Any] | None:
    record = fields.get(b"r")
    return None if record is None else msgspec.json.decode(record)


def _span(fields: Any) -> Span:
    return Span(int(fields[b"i"]), fields[b"p"], fields[b"l"], fields[b"k"], fields[b"t"])


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the prediction store (Redis) cannot be reached: {exc}; retry")


@asynccontextmanager
async def open_redis_store(settings: Settings) -> AsyncIterator[RedisStore]:
    """The Redis store at ``settings.store_url``, writing and reading in
    background tasks until the block ends (then what is left to write gets
    up to ``shutdown_timeout_seconds``)."""
    assert settings.store_url is not None
    await check_reachable(settings.store_url)
    # Every command has a deadline: a Redis that hangs is one that is away.
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        settings.store_url, stream_timeout=COMMAND_SECONDS, connect_timeout=COMMAND_SECONDS
    )
    reader: coredis.Redis[bytes] = coredis.Redis.from_url(
        settings.store_url,
        stream_timeout=BLOCK_MS / 1000 + COMMAND_SECONDS,
        connect_timeout=COMMAND_SECONDS,
    )
    async with client, reader, trio.open_nursery() as nursery:
        store = RedisStore(settings, client, reader)
        await nursery.start(store.hold_lease)
        nursery.start_soon(store.write_forever)
        nursery.start_soon(store.read_forever)
        nursery.start_soon(store.reap_forever)
        try:
            yield store
        finally:
            with trio.move_on_after(settings.shutdown_timeout_seconds) as scope:
                scope.shield = True
                await store.flush()
                with contextlib.suppress(*REDIS_ERRORS):
                    await store.release_lease()
            nursery.cancel_scope.cancel()


class StoreUnreachable(ConfigError):
    """Redis does not answer at ``[store] url`` (wrong, or down for now)."""


async def check_reachable(url: str) -> None:
    """Raise :class:`StoreUnreachable` naming *url* unless Redis answers there."""
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    try:
        async with client:
            await client.ping()
    except* REDIS_ERRORS as group:
        reason = group.exceptions[0]
        raise StoreUnreachable(f"[store] url: cannot reach Redis at {url}: {reason}") from None
