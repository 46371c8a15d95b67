"""Where predictions are kept: the store interface, and the store kept in
this process's memory.

A store holds every prediction the bridge may show (running or ended), in
creation order, with the bounds on what they keep (:mod:`bridge.core.retention`)
applied inside it, and makes each prediction's event log. The bridge asks
it for one prediction (:meth:`PredictionStore.get`), a page of them
(:meth:`~PredictionStore.page`), and to account for what they keep; it
never reaches into how they are kept, so a store shared by several bridge
processes (Redis) implements the same interface.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import trio

from ..config import Settings
from ..errors import NotFound
from .events import EventLog, MemoryEventLog
from .predictions import Prediction
from .retention import Retention

__all__ = ["MemoryStore", "Page", "PredictionStore", "parse_cursor"]

#: A list cursor: ``b<seq>`` (older than that) or ``a<seq>`` (newer).
_CURSOR = re.compile(r"([ab])([0-9]{1,18})")


def parse_cursor(cursor: str) -> tuple[str, int]:
    """A list cursor's direction (``b``: older, ``a``: newer) and creation
    order; ValueError for any cursor a page of this server could not have
    given out (parsed once: int() of thousands of digits costs quadratic
    time)."""
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ValueError(
            f"cursor {cursor[:40]!r} is not one this server gave out: use the "
            "next or previous URL of a page"
        )
    return match[1], int(match[2])


class Page:
    """One page of a listing: its results, encoded, and the cursors around it."""

    def __init__(self, results: list[bytes], next: str | None, previous: str | None) -> None:
        self.results = results
        self.next = next
        self.previous = previous


class PredictionStore(Protocol):
    """Every prediction the bridge may show, and what they keep."""

    @property
    def kept_bytes(self) -> int:
        """Bytes every prediction's data takes together (input, output, logs)."""
        ...

    def new_log(self) -> EventLog:
        """An event log for a new prediction."""
        ...

    async def add(self, prediction: Prediction) -> None:
        """Keep a new prediction, and give it its creation order
        (``prediction.seq``, larger than any before); raises
        :class:`~bridge.errors.Overloaded` if its input does not fit even
        once every ended prediction's data is gone. Once this returns, any
        bridge sharing the store finds it."""
        ...

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        """The prediction, if *owner* may see it (None: anyone); raises
        :class:`~bridge.errors.NotFound` otherwise, as for one that does
        not exist."""
        ...

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        """Count *cost* more bytes of *prediction*'s output or logs before
        they are appended; raises :class:`~bridge.errors.OutputTooLarge`
        past its *cap* or past what the store may keep."""
        ...

    def changed(self, prediction: Prediction) -> None:
        """*prediction*, which this bridge runs, changed (it started, or
        took a batch of output, logs or metrics): told by its runner once
        per batch, so that a store kept elsewhere writes it. (Never waits:
        it is called where the batch arrives.)"""
        ...

    def ended(self, prediction: Prediction) -> None:
        """*prediction* has ended: its retention windows start. (Called
        where the prediction's task ends, cancelled or not, so it never
        waits: a store kept elsewhere writes this later.)"""
        ...

    async def cancel_elsewhere(self, prediction: Prediction) -> None:
        """Ask the bridge sharing this store that runs *prediction* to
        cancel it (a store kept in one process has no other)."""
        ...

    def serve_cancels(self, cancel: Callable[[str, str | None], object]) -> None:
        """Call ``cancel(prediction_id, None)`` when another bridge sharing
        this store asks to cancel a prediction this one runs, and
        ``cancel(prediction_id, error)`` to end it as failed with *error*
        (the store is gone)."""
        ...

    async def flush(self) -> None:
        """Wait until everything written so far is where every bridge
        sharing the store sees it."""
        ...

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Awaitable[bytes]],
    ) -> Page:
        """Predictions *owner* may see (None: all), newest first, each as
        *encode* makes it: at most ``page_size`` of them, and no more than
        ``max_page_bytes`` of encodings (but at least one). Cursors are
        those of a page this store gave out; raises ValueError for any
        other."""
        ...


class MemoryStore:
    """The :class:`PredictionStore` kept in this process: a dict in
    creation order, walked from either end, never sorted."""

    def __init__(self, settings: Settings, new_log: Callable[[], EventLog] = MemoryEventLog):
        self._settings = settings
        self._new_log = new_log
        self._predictions: dict[str, Prediction] = {}
        self._seq = itertools.count(1)
        self._retention = Retention(
            self._predictions,
            max_bytes=settings.max_retained_bytes,
            seconds=settings.retention_seconds,
            count=settings.retention_count,
            metadata_seconds=settings.metadata_retention_seconds,
            metadata_count=settings.metadata_retention_count,
        )

    @property
    def kept_bytes(self) -> int:
        return self._retention.bytes

    def new_log(self) -> EventLog:
        return self._new_log()

    async def add(self, prediction: Prediction) -> None:
        self._retention.prune()
        self._retention.admit(prediction)
        prediction.seq = next(self._seq)
        self._predictions[prediction.id] = prediction

    async def get(self, prediction_id: str, owner: str | None = None) -> Prediction:
        self._retention.prune()
        prediction = self._predictions.get(prediction_id)
        if prediction is None or (owner is not None and prediction.owner != owner):
            raise NotFound(f"prediction {prediction_id} not found")
        return prediction

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        self._retention.charge(prediction, cost, cap)

    def changed(self, prediction: Prediction) -> None:
        pass  # kept here: seen as it changes

    def ended(self, prediction: Prediction) -> None:
        self._retention.ended(prediction)

    async def cancel_elsewhere(self, prediction: Prediction) -> None:
        pass  # every prediction runs in this process

    def serve_cancels(self, cancel: Callable[[str, str | None], object]) -> None:
        pass  # no other bridge shares it

    async def flush(self) -> None:
        pass  # kept here: seen as soon as written

    def _matching(self, owner: str | None, *, newest_first: bool) -> Iterator[Prediction]:
        """The predictions *owner* may see, newest or oldest first."""
        predictions = self._predictions.values()
        for prediction in reversed(predictions) if newest_first else predictions:
            if owner is None or prediction.owner == owner:
                yield prediction

    async def page(
        self,
        cursor: str | None,
        owner: str | None,
        encode: Callable[[Prediction], Awaitable[bytes]],
    ) -> Page:
        # Encoding yields to other tasks between predictions, so a page of
        # large ones stalls no one.
        self._retention.prune()
        # Each walk is taken whole before the first await (creates and
        # retention change the registry meanwhile).
        newer_first = True
        if not cursor:
            walk = self._matching(owner, newest_first=True)
        else:
            direction, seq = parse_cursor(cursor)
            if direction == "b":
                walk = (p for p in self._matching(owner, newest_first=True) if p.seq < seq)
            else:
                # Newer than the cursor: the ones next to it first.
                walk = (p for p in self._matching(owner, newest_first=False) if p.seq > seq)
                newer_first = False
        candidates = list(itertools.islice(walk, self._settings.page_size))
        taken: list[tuple[Prediction, bytes]] = []
        size = 0
        for prediction in candidates:
            encoded = await encode(prediction)
            if taken and size + len(encoded) > self._settings.max_page_bytes:
                break
            taken.append((prediction, encoded))
            size += len(encoded)
            await trio.lowlevel.checkpoint()
        if not taken:
            return Page([], None, None)
        if not newer_first:
            taken.reverse()
        first, last = taken[0][0], taken[-1][0]
        oldest = next(self._matching(owner, newest_first=False), None)
        newest = next(self._matching(owner, newest_first=True), None)
        older = oldest is not None and oldest.seq < last.seq
        newer = newest is not None and newest.seq > first.seq
        return Page(
            [encoded for _, encoded in taken],
            f"b{last.seq}" if older else None,
            f"a{first.seq}" if newer else None,
        )
