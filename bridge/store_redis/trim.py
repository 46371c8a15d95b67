"""Retention past the counts: at its end a prediction's input and events
expire after ``retention_seconds`` and its record after
``metadata_retention_seconds`` (the write script sets that); past
``retention_count`` and ``metadata_retention_count`` the oldest ended ones
are deleted here, after each write that ended some."""

from __future__ import annotations

import math
import time

import coredis

from . import codec
from .db import Db

__all__ = ["trim"]


async def trim(db: Db) -> None:
    """Delete the oldest ended predictions past the counts: their data
    past ``retention_count``, them past ``metadata_retention_count``."""
    settings, keys, client, now = db.settings, db.keys, db.client, time.time()
    # Data: past the window it expired by itself; past the count, deleted.
    await client.zremrangebyscore(keys.kept, -math.inf, now - settings.retention_seconds)
    over = await client.zcard(keys.kept) - settings.retention_count
    if over > 0:
        ids = [codec.text(m) for m in await client.zrange(keys.kept, 0, over - 1)]
        await client.zrem(keys.kept, ids)
        await client.delete([key for pid in ids for key in keys.data(pid)])
    # Metadata: those past the window or the count leave the listings too.
    horizon = now - settings.metadata_retention_seconds
    gone = [
        codec.text(m)
        for m in await client.zrange(
            keys.ended, -math.inf, horizon, sortby=coredis.PureToken.BYSCORE
        )
    ]
    over = await client.zcard(keys.ended) - len(gone) - settings.metadata_retention_count
    if over > 0:
        more = await client.zrange(keys.ended, len(gone), len(gone) + over - 1)
        gone += [codec.text(m) for m in more]
    if not gone:
        return
    owners = await client.hmget(keys.owners, gone)
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.ended, gone)
        pipe.zrem(keys.all, gone)
        for pid, owner in zip(gone, owners, strict=True):
            if owner is not None:
                pipe.zrem(keys.owned(codec.text(owner)), [pid])
        pipe.hdel(keys.owners, gone)
        pipe.delete([key for pid in gone for key in (keys.record(pid), *keys.data(pid))])
