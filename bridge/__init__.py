"""A Trio bridge that streams gRPC model backends to the web as server-sent events.

``serve(settings)`` runs the bridge; :mod:`bridge.sdk` serves a model.
"""

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
