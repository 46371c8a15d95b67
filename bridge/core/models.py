"""Configured models: where their backends are, what they said they are, and
how Replicate's API shows them (model and version objects)."""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Iterator

from ..backends.interface import Backend, Metadata, ModelInfo
from ..config import ModelSettings

__all__ = ["ModelEntry"]

#: Health statuses that keep new predictions off a target.
_DOWN = frozenset({"UNAVAILABLE", "NOT_SERVING", "SERVICE_UNKNOWN"})


class ModelEntry:
    """A configured model and the last thing its backend's Describe said."""

    def __init__(self, settings: ModelSettings, backend: Backend) -> None:
        self.settings = settings
        #: What calls its backends: bridge.v1's, or a bridged service's.
        self.backend = backend
        self.name = settings.name
        self.owner, _, self.short_name = settings.name.partition("/")
        self.run_count = 0
        self._info: ModelInfo | None = None
        #: When its backend's answer last named a new version (unix time).
        self.described_at = 0.0
        self._targets: Iterator[str] = itertools.cycle(settings.targets)
        self._describe_targets: Iterator[str] = itertools.cycle(settings.targets)
        #: Predict calls in flight to each target.
        self._calls: collections.Counter[str] = collections.Counter()
        #: Each target's ``grpc.health.v1`` status, as last seen (checked,
        #: or a call that could not reach it); None: not known yet.
        self.health: dict[str, str | None] = dict.fromkeys(settings.targets)
        #: How many times a target's health changed from one known status
        #: to another (it may describe itself differently now).
        self.health_changes = 0
        #: Why a target's setup failed, as its Describe said (health checks
        #: ask a NOT_SERVING target); none: it did not, or not known.
        self.setup_errors: dict[str, str] = {}

    @property
    def metadata(self) -> Metadata:
        """What every call to its backends sends (its ``[metadata]``)."""
        return tuple(self.settings.metadata.items())

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    @info.setter
    def info(self, info: ModelInfo) -> None:
        if self._info is None or self._info.version != info.version:
            self.described_at = time.time()
        self._info = info

    def next_target(self) -> str:
        return next(self._targets)

    def describe_target(self) -> str:
        """Where a Describe goes: the usable targets in turn (a turn of
        their own: Describes do not move the predictions' turns on)."""
        usable = self.usable()
        return next(t for t in self._describe_targets if t in usable)

    def limit(self) -> float:
        """How many of its predictions may run at once: its ``max_running``
        (if set), and what its backends said they run at once
        (``concurrency`` in Describe) times its targets."""
        limit = float(self.settings.max_running or math.inf)
        if self._info is not None and self._info.concurrency:
            limit = min(limit, self._info.concurrency * len(self.settings.targets))
        return limit

    def mark(self, target: str, status: str) -> None:
        """*target*'s health is *status* (a ``grpc.health.v1`` name, or
        UNAVAILABLE: it cannot be reached)."""
        if self.health[target] not in (None, status):
            self.health_changes += 1
        self.health[target] = status

    def changes(self) -> int:
        """Its targets' lost connections and health changes so far: when
        this moves, its backend is asked again what it is."""
        lost = sum(self.backend.lost_connections(t) for t in self.settings.targets)
        return lost + self.health_changes

    def any_up(self) -> bool:
        """Whether a target is not known to be down or NOT_SERVING."""
        return any(self.health[t] not in _DOWN for t in self.settings.targets)

    def usable(self) -> list[str]:
        """The targets not known to be down or NOT_SERVING: all of them if
        none is (a prediction then tries them, retrying as for one)."""
        up = [t for t in self.settings.targets if self.health[t] not in _DOWN]
        return up or list(self.settings.targets)

    def take_target(self) -> str:
        """The target a Predict call goes to: among the usable ones, the
        one with the fewest calls in flight (in turn among equals), so that
        with admission at :meth:`limit` none gets more than its
        ``concurrency``. Give it back with :meth:`give_back` when the call
        ends."""
        usable = self.usable()
        fewest = min(self._calls[t] for t in usable)
        for _ in self.settings.targets:
            target = self.next_target()
            if target in usable and self._calls[target] == fewest:
                break
        self._calls[target] += 1
        return target

    def give_back(self, target: str) -> None:
        self._calls[target] -= 1

    @property
    def streams(self) -> bool:
        """Whether output is a stream of chunks (assumed until Describe says)."""
        if self._info is None:
            return True  # bridge.v1 is a streaming protocol
        return self._info.output_schema.get("x-cog-array-type") == "iterator"
