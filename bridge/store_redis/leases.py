"""A process that dies: leases, and the survivors that end its predictions.

Each process holds a lease, a key that expires unless refreshed (half of
``[store] lease_seconds``, refreshed every third of that). Nothing of a
process's is written without its lease (the write script checks it:
fencing). Every quarter of ``lease_seconds`` each process looks for
processes whose lease lapsed; the first to claim one fails that process's
running predictions, as their writer would have. So a dead process's
predictions end within ``lease_seconds``, and a process that was only
away (longer than its lease) finds its predictions ended by a survivor
and writes none of them again (see :class:`~.writer.Writer`).
"""

from __future__ import annotations

import logging

import coredis
import trio

from . import codec
from .db import Db
from .endings import ORPHANED, fail_in_store
from .keys import process_name
from .scripts import LEASE

__all__ = ["Lease", "reap"]

log = logging.getLogger("bridge.store_redis")


class Lease:
    """This process's name in Redis, and its lease."""

    def __init__(self, db: Db) -> None:
        self._db = db
        #: The lease's life, in ms: half of lease_seconds, so that with the
        #: survivors' checks a quarter of it apart, a dead process's
        #: predictions fail within lease_seconds.
        self.ttl_ms = max(100, int(db.settings.store_lease_seconds * 500))
        #: This process, as the records of the predictions it runs name it
        #: (a new name once it lost its lease).
        self.process = process_name()
        #: Set once the lease was first taken (or tried): writes wait for it.
        self.tried = trio.Event()

    async def take(self) -> None:
        keys = [self._db.keys.lease(self.process), self._db.keys.processes]
        await self._db.scripts.run(LEASE, keys, [str(self.ttl_ms), self.process])

    async def refresh(self, process: str) -> bool:
        """Refresh the lease of *process* (this one's name); False if it had
        lapsed (a survivor may have ended this process's predictions)."""
        lease = self._db.keys.lease(process)
        return bool(await self._db.client.pexpire(lease, self.ttl_ms))

    def rename(self) -> str:
        """Go by a new name (the lease of the old one was lost); the old one."""
        old, self.process = self.process, process_name()
        return old

    async def release(self) -> None:
        """Give the lease up (a clean stop, everything written): no survivor
        has anything to do for this process."""
        keys = self._db.keys
        async with self._db.client.pipeline(transaction=True) as pipe:
            pipe.delete([keys.lease(self.process)])
            pipe.srem(keys.processes, [self.process])


async def reap(db: Db, lease: Lease) -> None:
    """Fail the running predictions of every process whose lease lapsed
    (one survivor does each: whoever claims it first)."""
    client, keys = db.client, db.keys
    for member in await client.smembers(keys.processes):
        process = codec.text(member)
        if process == lease.process or await client.exists([keys.lease(process)]):
            continue
        claim = keys.reaping(process)
        if not await client.set(
            claim, lease.process.encode(), condition=coredis.PureToken.NX, ex=60
        ):
            continue
        running = keys.running(process)
        for prediction_id in map(codec.text, await client.smembers(running)):
            await fail_in_store(db, prediction_id, process, ORPHANED)
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete([running, claim])
            pipe.srem(keys.processes, [process])
        log.warning("bridge process %s stopped: its running predictions were failed", process)
