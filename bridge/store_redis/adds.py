"""New predictions written together: the creates that arrive while one
write is under way share the next, one ``ADD`` script call for up to
:data:`MAX_ADDS` of them (scripts.ADD). A create waits for its own; it was
an ``INCR`` and a ``MULTI`` of five commands each, and under a burst of
creates the client's per-command work (its pool, its locks, a cancel
scope per command) was most of a create's cost in the store.

An add that fails or is given up on is taken back (its keys deleted:
nothing would ever end a prediction no process runs), and always after
the write that carried it, by the task that made that write: taken back
first, a write still under way (a retry, say) would leave the prediction
in Redis for good."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..core.predictions import Prediction
from ..errors import StoreUnavailable
from . import codec
from .db import Db
from .errors import attempt, store_unavailable
from .leases import Lease
from .scripts import ADD, one_call

__all__ = ["MAX_ADDS", "MAX_ADD_BYTES", "Adds"]

log = logging.getLogger("bridge.store_redis")

#: The most predictions one call adds, and about the most input bytes (a
#: larger input goes alone): one call stays small and quick.
MAX_ADDS = 128
MAX_ADD_BYTES = 1024 * 1024


@dataclass(eq=False)
class _Add:
    prediction: Prediction
    done: trio.Event = field(default_factory=trio.Event)
    error: StoreUnavailable | None = None
    #: Its create was cancelled while the write carrying it was under way:
    #: the writing task takes it back once that write is done.
    abandoned: bool = False


class Adds:
    """Adds predictions to Redis: :meth:`add` from any task, while
    :meth:`write_forever` runs (a task of the store's)."""

    def __init__(self, db: Db, lease: Lease, command_seconds: float) -> None:
        self._db = db
        self._lease = lease
        #: How long taking an add back may take (Redis away: it is logged).
        self._command_seconds = command_seconds
        self._pending: list[_Add] = []
        self._news = trio.Event()
        self._open = True

    async def add(self, prediction: Prediction) -> None:
        """Write *prediction*'s keys and number it (its ``seq``); raises
        StoreUnavailable if Redis did not take them (they are taken back).
        Cancelled, it leaves nothing in Redis: taken out of the next write,
        or taken back after the one under way."""
        if not self._open:
            raise StoreUnavailable("the prediction store (Redis) is closed; retry")
        entry = _Add(prediction)
        self._pending.append(entry)
        self._news.set()
        try:
            await entry.done.wait()
        except BaseException:
            if entry in self._pending:  # not taken yet: it is never written
                self._pending.remove(entry)
            elif not entry.done.is_set():  # under way: its writer takes it back
                entry.abandoned = True
            elif entry.error is None:  # written (and this cancelled meanwhile)
                await self._take_back([prediction])
            raise
        if entry.error is not None:
            raise entry.error

    async def write_forever(self) -> None:
        """Write what :meth:`add` was asked, a batch at a time, until
        cancelled; then every add still waiting fails."""
        try:
            while True:
                await self._news.wait()
                self._news = trio.Event()
                while self._pending:
                    await self._write(self._take())
        finally:
            self._open = False
            closed = StoreUnavailable("the prediction store (Redis) closed; retry")
            for entry in self._pending:
                entry.error = closed
                entry.done.set()
            self._pending = []

    def _take(self) -> list[_Add]:
        """The next batch: at most MAX_ADDS, about MAX_ADD_BYTES of input."""
        sizes = [entry.prediction.input_size for entry in self._pending[:MAX_ADDS]]
        count = one_call(sizes, MAX_ADDS, MAX_ADD_BYTES)
        batch = self._pending[:count]
        del self._pending[:count]
        return batch

    async def _write(self, batch: list[_Add]) -> None:
        first: int | None = None
        error: StoreUnavailable | None = None
        try:
            try:
                names, args = self._call(batch, self._lease.process)
            except Exception:  # a bug: these creates fail, the store goes on
                log.exception("cannot encode %d new predictions for Redis", len(batch))
                error = StoreUnavailable("the prediction store (Redis) refused this prediction")
            else:
                with attempt(f"add {len(batch)} new predictions to Redis") as tried:
                    first = int(await self._db.scripts.run(ADD, names, args))
                if tried.failed is not None:
                    error = store_unavailable(tried.failed)
        finally:  # cancelled too: no add is left waiting
            if first is None and error is None:
                error = StoreUnavailable("the prediction store (Redis) closed; retry")
            for i, entry in enumerate(batch):
                if first is not None:
                    entry.prediction.seq = first + i
                entry.error = error
                entry.done.set()
            # Its writes may have gone through (a timeout after they did).
            undone = [e.prediction for e in batch if e.abandoned or e.error is not None]
            if undone:
                await self._take_back(undone)

    def _call(self, batch: list[_Add], process: str) -> tuple[list[str], list[bytes | str]]:
        """The ADD call's keys and arguments for *batch*."""
        keys = self._db.keys
        names = [keys.seq, keys.all, keys.running(process)]
        args: list[bytes | str] = []
        for entry in batch:
            prediction = entry.prediction
            owner = prediction.owner
            names += [
                keys.record(prediction.id),
                keys.input(prediction.id),
                keys.owned(owner) if owner is not None else "",
            ]
            args += [*codec.record_around_seq(prediction, process), prediction.input_json]
            args.append(prediction.id)
        return names, args

    async def _take_back(self, predictions: list[Prediction]) -> None:
        """Delete *predictions*' keys: adds that failed or were given up on."""
        keys, process = self._db.keys, self._lease.process
        ids = [p.id for p in predictions]
        with trio.move_on_after(self._command_seconds, shield=True):
            with attempt(f"take back {len(ids)} new predictions in Redis"):
                async with self._db.client.pipeline(transaction=True) as pipe:
                    pipe.delete([k for pid in ids for k in (keys.record(pid), keys.input(pid))])
                    pipe.srem(keys.running(process), ids)
                    pipe.zrem(keys.all, ids)
                    for prediction in predictions:
                        if prediction.owner is not None:
                            pipe.zrem(keys.owned(prediction.owner), [prediction.id])
