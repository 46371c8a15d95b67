"""Configured models: where their backends are, what they said they are, and
how Replicate's API shows them (model and version objects)."""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Iterator
from typing import Any

from ..backends.interface import ModelInfo
from ..config import ModelSettings
from .predictions import iso_time

__all__ = ["ModelEntry", "deployment_json"]

#: Health statuses that keep new predictions off a target.
_DOWN = frozenset({"UNAVAILABLE", "NOT_SERVING", "SERVICE_UNKNOWN"})

#: What versions report as ``cog_version``: not a Cog version (the Python
#: client then applies no pre-0.3.9 compatibility rules to the schema).
COG_VERSION = "grpc-sse-bridge/bridge.v1"


class ModelEntry:
    """A configured model and the last thing its backend's Describe said."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.owner, _, self.short_name = settings.name.partition("/")
        self.run_count = 0
        self._info: ModelInfo | None = None
        self._described_at = 0.0
        self._targets: Iterator[str] = itertools.cycle(settings.targets)
        #: Predict calls in flight to each target.
        self._calls: collections.Counter[str] = collections.Counter()
        #: Each target's ``grpc.health.v1`` status, as last seen (checked,
        #: or a call that could not reach it); None: not known yet.
        self.health: dict[str, str | None] = dict.fromkeys(settings.targets)

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    @info.setter
    def info(self, info: ModelInfo) -> None:
        if self._info is None or self._info.version != info.version:
            self._described_at = time.time()
        self._info = info

    def next_target(self) -> str:
        return next(self._targets)

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
        self.health[target] = status

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

    def version_json(self) -> dict[str, Any] | None:
        """Replicate's version object, or None before the backend described it."""
        if self._info is None:
            return None
        return {
            "id": self._info.version,
            "created_at": iso_time(self._described_at),
            "cog_version": COG_VERSION,
            "openapi_schema": {
                "openapi": "3.0.2",
                "info": {"title": self.name, "version": self._info.version},
                "paths": {},
                "components": {
                    "schemas": {
                        "Input": self._info.input_schema,
                        "Output": self._info.output_schema,
                    }
                },
            },
        }

    def model_json(self, base_url: str) -> dict[str, Any]:
        """Replicate's model object."""
        return {
            "url": f"{base_url}/v1/models/{self.name}",
            "owner": self.owner,
            "name": self.short_name,
            "description": None,
            "visibility": "public",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "cover_image_url": None,
            "run_count": self.run_count,
            "default_example": None,
            "latest_version": self.version_json(),
        }


def deployment_json(name: str, entry: ModelEntry, created_at: float) -> dict[str, Any]:
    """Replicate's deployment object for deployment *name* serving *entry*,
    whose backend has described itself. One release, made when this bridge
    started; its instances are the model's configured targets."""
    assert entry.info is not None, "a deployment shows its model's version"
    owner, _, short_name = name.partition("/")
    targets = len(entry.settings.targets)
    return {
        "owner": owner,
        "name": short_name,
        "current_release": {
            "number": 1,
            "model": entry.name,
            "version": entry.info.version,
            "created_at": iso_time(created_at),
            "created_by": {
                "type": "organization",
                "username": owner,
                "name": owner,
                "github_url": None,
            },
            "configuration": {
                "hardware": "bridge.v1",
                "min_instances": targets,
                "max_instances": targets,
            },
        },
    }
