"""A Trio bridge that streams gRPC model backends to the web as server-sent events.

``serve(settings)`` runs the bridge; :mod:`bridge.sdk` serves a model.

The names below are imported when first used, so that ``python -m bridge
predict`` (a small HTTP client) and :mod:`bridge.sdk` (a model) pay only
for what they use, and a Ctrl-C while starting up finds the CLI's own
handling almost at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ConfigError, ModelSettings, Settings
    from .errors import (
        BackendProtocolError,
        BackendTimeout,
        BackendUnavailable,
        BadRequest,
        BridgeError,
        InvalidInput,
        ModelError,
        NotFound,
        PredictionError,
    )
    from .server import serve

_WHERE = {
    "ConfigError": "config",
    "ModelSettings": "config",
    "Settings": "config",
    "serve": "server",
    **dict.fromkeys(
        [
            "BackendProtocolError",
            "BackendTimeout",
            "BackendUnavailable",
            "BadRequest",
            "BridgeError",
            "InvalidInput",
            "ModelError",
            "NotFound",
            "PredictionError",
        ],
        "errors",
    ),
}

__all__ = [
    "BackendProtocolError",
    "BackendTimeout",
    "BackendUnavailable",
    "BadRequest",
    "BridgeError",
    "ConfigError",
    "InvalidInput",
    "ModelError",
    "ModelSettings",
    "NotFound",
    "PredictionError",
    "Settings",
    "serve",
]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
