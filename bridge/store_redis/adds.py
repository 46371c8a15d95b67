"""New predictions written together: the creates that arrive while one
write is under way share the next, one ``ADD`` script call for up to
:data:`MAX_ADDS` of them (scripts.ADD). A create waits for its own; it was
an ``INCR`` and a ``MULTI`` of five commands each, and under a burst of
creates the client's per-command work (its pool, its locks, a cancel
scope per command) was most of a create's cost in the store."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from ..core.predictions import Prediction
from ..errors import StoreUnavailable
from . import codec
from .db import Db
from .errors import attempt, store_unavailable
from .leases import Lease
from .scripts import ADD

__all__ = ["MAX_ADDS", "Adds"]

#: The most predictions one call adds (its arguments stay small).
MAX_ADDS = 128


@dataclass(eq=False)
class _Add:
    prediction: Prediction
    done: trio.Event = field(default_factory=trio.Event)
    error: StoreUnavailable | None = None


class Adds:
    """Adds predictions to Redis: :meth:`add` from any task, while
    :meth:`write_forever` runs (a task of the store's)."""

    def __init__(self, db: Db, lease: Lease, wait_seconds: float) -> None:
        self._db = db
        self._lease = lease
        #: How long a cancelled create waits for a write already under way
        #: (its caller then takes the add back).
        self._wait_seconds = wait_seconds
        self._pending: list[_Add] = []
        self._news = trio.Event()
        self._open = True

    async def add(self, prediction: Prediction) -> None:
        """Write *prediction*'s keys and number it (its ``seq``); raises
        StoreUnavailable if Redis did not take them. Cancelled, it returns
        once no write of it is under way (at most ``wait_seconds``)."""
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
            else:
                with trio.move_on_after(self._wait_seconds, shield=True):
                    await entry.done.wait()
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
                    batch = self._pending[:MAX_ADDS]
                    del self._pending[:MAX_ADDS]
                    await self._write(batch)
        finally:
            self._open = False
            closed = StoreUnavailable("the prediction store (Redis) closed; retry")
            for entry in self._pending:
                entry.error = closed
                entry.done.set()
            self._pending = []

    async def _write(self, batch: list[_Add]) -> None:
        keys, process = self._db.keys, self._lease.process
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
        first: int | None = None
        error: StoreUnavailable | None = None
        try:
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
