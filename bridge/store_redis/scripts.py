"""The Lua scripts Redis runs for the store, each in one step, and how
they are called: by their SHA-1, loaded again if Redis forgot them (it
forgets them when it restarts)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import coredis
import coredis.exceptions

from ..config import Settings

__all__ = [
    "ADD",
    "FAIL",
    "LEASE",
    "WRITE",
    "Script",
    "Scripts",
    "end_args",
    "one_call",
    "retention_args",
    "write_fields",
    "write_keys",
]


class Script:
    """A script's text and the SHA-1 Redis knows it by."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


# What a prediction's end does to its keys: they expire as retention says,
# and it joins the ended ones. Its keys are Keys.end's, its arguments
# end_args'.
_ENDED = """
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

#: Predictions' batches (each one's record if it changed, its new events
#: as one entry, and its end), written only while this process holds its
#: lease: once a survivor may have ended a prediction, nothing more is
#: written. One call carries many predictions (a call each was most of the
#: writer's own CPU), their fields packed in one argument (an argument
#: each cost the bridge more than the rest of a paced token's write:
#: coredis wraps, checks and packs every argument apart). KEYS: lease,
#: then Keys.end's last four (ended kept running owners), then each
#: prediction's write_keys; ARGV: data and metadata retention
#: (retention_args), then every prediction's write_fields back to back.
#: Refused as a whole, before it writes anything, when Redis is out of
#: memory (no allow-oom).
WRITE = Script(
    "#!lua\n"
    + _ENDED
    + """
local k = 6
local function key()
  k = k + 1
  return KEYS[k - 1]
end
local function write(f)
  local record, log = f[1], key()
  local p = record ~= '' and key()
  if p then redis.call('SET', p, record) end
  if f[2] ~= '' then
    local entry = {'i', f[2], 'p', f[3], 'l', f[4], 'k', f[5], 't', f[6]}
    if p then table.insert(entry, 'r'); table.insert(entry, record) end
    redis.call('XADD', log, '*', unpack(entry))
  end
  if f[7] ~= '' then
    ended(p, key(), log, KEYS[2], KEYS[3], KEYS[4], KEYS[5], f[7], ARGV[1], ARGV[2], f[8], f[9])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('FENCED this bridge process lost its lease')
end
local data, pos, n = ARGV[3], 1, 0
while pos <= #data do
  local f = {struct.unpack('<I4I4I4I4I4I4I4I4I4', data, pos)}
  pos = f[10]
  for j = 1, 9 do
    local size = f[j]
    f[j] = string.sub(data, pos, pos + size - 1)
    pos = pos + size
  end
  write(f)
  n = n + 1
end
return n
"""
)

#: End a running prediction as failed: its record, an ending entry after
#: the last one its log has (``error`` and ``done``), its keys' expiry;
#: unless its record changed since it was read (-1: read again) or is gone
#: (-2). Returns the index the ending starts at. Runs when Redis is out of
#: memory too (allow-oom: a few hundred bytes), so that a prediction whose
#: output Redis refused still ends, for every reader.
#: KEYS: Keys.end's; ARGV: the record read, the ended record, the ending's
#: p l k t, then end_args.
FAIL = Script(
    "#!lua flags=allow-oom\n"
    + _ENDED
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

#: New predictions' keys, each numbered in creation order (``seq``): its
#: record, its input, and its place among all predictions, its owner's and
#: the running ones of its process. One call carries many predictions (an
#: INCR and a MULTI of five commands each was most of a create's cost in
#: the store). KEYS: seq all running, then each prediction's record input
#: and owned key ('' without an owner); ARGV: each prediction's record
#: around its seq (codec.record_around_seq), input and id. Returns the
#: first prediction's seq (the others' follow). Refused as a whole, before
#: it writes anything, when Redis is out of memory (no allow-oom).
ADD = Script(
    """#!lua
local n = #ARGV / 4
local first = redis.call('INCRBY', KEYS[1], n) - n + 1
for i = 0, n - 1 do
  local k, a, seq = 4 + 3 * i, 1 + 4 * i, first + i
  redis.call('SET', KEYS[k], ARGV[a] .. string.format('%d', seq) .. ARGV[a + 1])
  redis.call('SET', KEYS[k + 1], ARGV[a + 2])
  redis.call('SADD', KEYS[3], ARGV[a + 3])
  redis.call('ZADD', KEYS[2], seq, ARGV[a + 3])
  if KEYS[k + 2] ~= '' then redis.call('ZADD', KEYS[k + 2], seq, ARGV[a + 3]) end
end
return first
"""
)

#: Take a lease: its key, and the process among the processes. Runs when
#: Redis is out of memory too: a lease never starves behind output.
#: KEYS: lease processes; ARGV: its life in ms, the process.
LEASE = Script(
    """#!lua flags=allow-oom
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
"""
)


#: The nine lengths before a prediction's fields in WRITE's argument.
_LENGTHS = struct.Struct("<9I").pack


def write_fields(
    record: bytes, entry: Sequence[bytes] | None, ending: Sequence[bytes] | None
) -> bytes:
    """One prediction's part of :data:`WRITE`'s argument: its record (or
    b''), its entry's ``i p l k t`` (None: no entry) and its end (the time
    it ended, its owner and its id; None while it runs), each field's
    length first."""
    fields = (record, *(entry or _NO_ENTRY), *(ending or _RUNNING))
    assert len(fields) == 9, "a record, five entry fields, three of the end"
    return _LENGTHS(*map(len, fields)) + b"".join(fields)


#: No entry, and no end (it runs), in :func:`write_fields`.
_NO_ENTRY = (b"",) * 5
_RUNNING = (b"",) * 3


def write_keys(keys: tuple[bytes, bytes, bytes], record: bytes, ended: bool) -> tuple[bytes, ...]:
    """The keys of one prediction's part of :data:`WRITE`, of *keys* (its
    log, record and input): the log; the record if it has one to write;
    the input if it ended (it has a record then). Most writes carry a
    token and the log's key alone."""
    assert record or not ended, "an end is written with its record (the script expects both)"
    return keys if ended else keys[:2] if record else keys[:1]


def one_call(sizes: Sequence[int], most: int, most_bytes: int) -> int:
    """How many of some items (their *sizes* in bytes, in order) go in one
    script call: at most *most*, and about *most_bytes* of them (the first
    goes however large). Redis takes at most proto-max-bulk-len (512 MB)
    in one argument, and one call holds up the rest of Redis while it runs."""
    total = count = 0
    for size in sizes[:most]:
        total += size
        if count and total > most_bytes:
            break
        count += 1
    return count


def end_args(
    settings: Settings, prediction_id: str, now: float | None, owner: str | None
) -> list[str]:
    """The arguments of a prediction's end (*now* None: it has not ended),
    in the order the scripts' ``ended`` takes them."""
    data, metadata = retention_args(settings)
    return ["" if now is None else str(now), data, metadata, owner or "", prediction_id]


def retention_args(settings: Settings) -> tuple[str, str]:
    """How long an ended prediction's data and its record are kept, in s."""
    return (
        str(max(1, int(settings.retention_seconds))),
        str(max(1, int(settings.metadata_retention_seconds))),
    )


class Scripts:
    """Runs the scripts on a client."""

    def __init__(self, client: coredis.Redis[bytes]) -> None:
        self._client = client

    async def load(self) -> None:
        for script in (ADD, WRITE, FAIL, LEASE):
            await self._client.script_load(script.text)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run *script*, loading the scripts first if Redis forgot them."""
        try:
            return await self._client.evalsha(script.sha, keys, args)
        except coredis.exceptions.NoScriptError:
            await self.load()
            return await self._client.evalsha(script.sha, keys, args)
