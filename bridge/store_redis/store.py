"""The store's face: :class:`RedisStore`, the
:class:`~bridge.core.store.PredictionStore` that every part of this package
serves, and :func:`open_redis_store`, which runs its tasks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import coredis
import trio

from ..config import Settings
from ..core.events import EventLog, HeldEventLog
from ..core.predictions import Prediction
from ..core.store import Page
from ..errors import NotFound, StoreUnavailable
from . import codec, listing
from .adds import Adds
from .db import Db
from .endings import STORE_AWAY
from .errors import attempt, check_reachable, unavailable
from .leases import Lease, reap
from .replicas import BLOCK_MS, Replicas
from .writer import Writer

__all__ = ["RedisStore", "open_redis_store"]

log = logging.getLogger("bridge.store_redis")

#: How long any command but the blocking read may take before Redis counts
#: as away.
COMMAND_SECONDS = 5.0


class RedisStore:
    """The :class:`~bridge.core.store.PredictionStore` kept in Redis (open
    it with :func:`open_redis_store`, or :meth:`run` its tasks)."""

    def __init__(
        self, settings: Settings, client: coredis.Redis[bytes], reader: coredis.Redis[bytes]
    ) -> None:
        self._db = db = Db.of(client, settings)
        self._lease = Lease(db)
        self._cancel: Callable[[str, str | None], object] = lambda prediction_id, error: None
        self._writer = Writer(db, self._lease, self._stop)
        self._adds = Adds(db, self._lease, COMMAND_SECONDS)
        self._replicas = Replicas(db, reader, self._lease, self._stop)
        # Since when Redis has not answered this process (Trio's clock),
        # and whether it gave up on it for this outage.
        self._away_since: float | None = None
        self._gave_up = False

    @property
    def process(self) -> str:
        """This process, as Redis names it (a new name once it lost its lease)."""
        return self._lease.process

    def _stop(self, prediction_id: str) -> None:
        self._cancel(prediction_id, None)

    # -- the store interface ------------------------------------------------

    @property
    def kept_bytes(self) -> int:
        return self._writer.retention.bytes

    def new_log(self) -> EventLog:
        return HeldEventLog()

    async def add(self, prediction: Prediction) -> None:
        if await self._writer.refusing():
            raise StoreUnavailable(
                "the prediction store (Redis) is out of memory and refuses writes; retry later"
            )
        self._writer.retention.admit(prediction)
        try:
            await self._adds.add(prediction)  # failed or cancelled: nothing left in Redis
        except BaseException:
            self._writer.retention.forget(prediction)
            raise
        self._writer.running(prediction)

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        prediction = self._writer.local.get(prediction_id)
        if prediction is None:
            prediction = self._replicas.running(prediction_id)
        if prediction is None:
            with unavailable():
                prediction = await self._replicas.load(prediction_id)
        if owner is not None and prediction.owner != owner:
            raise NotFound(f"prediction {prediction_id} not found")
        return prediction

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        self._writer.retention.charge(prediction, cost, cap)

    def changed(self, prediction: Prediction) -> None:
        self._writer.changed(prediction)

    def ended(self, prediction: Prediction) -> None:
        self._writer.changed(prediction)  # written with its end, then let go of here

    async def cancel_elsewhere(self, prediction: Prediction) -> None:
        with unavailable():
            record = await self._db.client.get(self._db.keys.record(prediction.id))
            if record is None:
                return
            process = codec.decode(record).get("process")
            if process and process != self._lease.process:
                await self._replicas.command(process, {"cancel": prediction.id})

    def serve_cancels(self, cancel: Callable[[str, str | None], object]) -> None:
        self._cancel = cancel

    async def flush(self) -> None:
        await self._writer.flush()

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Awaitable[bytes]],
    ) -> Page:
        with unavailable():
            return await listing.page(self._db, self.get, cursor, owner, encode)

    # -- its tasks -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The store's tasks, until cancelled: its lease (taken first), the
        writer, the reader of others' predictions and commands, and the
        reaper of processes that stopped."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._hold_lease)
            nursery.start_soon(self._writer.write_forever)
            nursery.start_soon(self._adds.write_forever)
            nursery.start_soon(self._replicas.read_forever)
            nursery.start_soon(self._reap_forever)
            task_status.started()

    async def _hold_lease(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Take this process's lease, then keep it for as long as the store
        is open (see :mod:`.leases`)."""
        with attempt("take this process's lease in Redis (taken on the first check)"):
            await self._db.scripts.load()
            await self._lease.take()
        self._lease.tried.set()
        task_status.started()
        while True:
            await trio.sleep(self._lease.ttl_ms / 3000)
            with attempt("refresh this process's lease in Redis") as tried:
                await self._writer.check_lease()
            if tried.failed:
                self._away()
            else:
                self._away_since, self._gave_up = None, False

    def _away(self) -> None:
        """Redis did not answer: once that has lasted lease_seconds, end
        what readers here wait for (this process's running predictions,
        and the copies followed of others'), as failed: no reader waits for
        Redis forever. Writes go on being retried for when it is back."""
        now = trio.current_time()
        if self._away_since is None:
            self._away_since = now
        if self._gave_up or now - self._away_since < self._db.settings.store_lease_seconds:
            return
        self._gave_up = True
        log.error("Redis has not answered for lease_seconds: ending the predictions it holds up")
        # Its own: let go of, and ended here now (what their readers have
        # seen, and the error); in Redis once it answers again.
        self._writer.let_go_all(self._lease.process, STORE_AWAY)
        self._writer.end_here()
        self._replicas.end_all(STORE_AWAY)

    async def _reap_forever(self) -> None:
        """Every quarter of lease_seconds, fail the running predictions of
        processes whose lease lapsed, and end the copies of predictions
        Redis no longer holds."""
        while True:
            await trio.sleep(self._db.settings.store_lease_seconds / 4)
            try:
                with attempt("check other processes' leases in Redis"):
                    await reap(self._db, self._lease)
            except Exception:  # a record it cannot read: no reason to stop
                log.exception("checking other processes' leases failed")
            with attempt("check the predictions followed in Redis"):
                await self._replicas.drop_vanished()

    async def close(self) -> None:
        """Write what is left, and give the lease up if nothing of this
        process's is left running."""
        await self._writer.flush()
        if not self._writer.local:
            with attempt("give this process's lease up"):
                await self._lease.release()


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
        await nursery.start(store.run)
        try:
            yield store
        finally:
            with trio.move_on_after(settings.shutdown_timeout_seconds, shield=True):
                await store.close()
            nursery.cancel_scope.cancel()
