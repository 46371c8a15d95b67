"""What every part of the store works with."""

from __future__ import annotations

from dataclasses import dataclass

import coredis

from ..config import Settings
from .keys import Keys
from .scripts import Scripts

__all__ = ["Db"]


@dataclass(frozen=True)
class Db:
    """The client (every command but the blocking read), the keys under
    the store's prefix, the scripts, and the settings."""

    client: coredis.Redis[bytes]
    keys: Keys
    scripts: Scripts
    settings: Settings

    @classmethod
    def of(cls, client: coredis.Redis[bytes], settings: Settings) -> Db:
        return cls(client, Keys(settings.store_key_prefix), Scripts(client), settings)
