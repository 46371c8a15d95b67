"""Settings: one frozen value, built once (defaults, then TOML) and passed in.

A config file names each model and where its backends listen::

    [models."demo/echo"]
    targets = ["127.0.0.1:50051"]

    [server]                      # all optional
    public_url = "https://bridge.example.com"   # else taken from each request
    keepalive_seconds = 15
"""

from __future__ import annotations

import base64
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "ModelSettings", "Settings"]

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$", re.IGNORECASE)


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "grpc-sse-bridge"


class ConfigError(ValueError):
    """Raised when a config file or value is not usable; says which and why."""


@dataclass(frozen=True)
class ModelSettings:
    name: str
    #: gRPC targets (``host:port``); several are used round-robin.
    targets: tuple[str, ...]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models: dict[str, ModelSettings] = field(default_factory=dict)
    #: Base of the absolute URLs in responses; None takes it from the request.
    public_url: str | None = None
    #: Idle streams get a ``: ping`` comment this often.
    keepalive_seconds: float = 15.0
    #: How long a create waits for the backend's Describe before going on.
    describe_timeout_seconds: float = 2.0
    #: Hypercorn's grace for open connections at shutdown.
    shutdown_timeout_seconds: float = 5.0
    #: Largest request body accepted.
    max_body_bytes: int = 1 << 20
    #: Listen backlog. Hypercorn's default (100) overflows when many clients
    #: connect at once, and the kernel then drops SYNs that clients resend
    #: only after 1, 3, 7 s (measured: 1,000 concurrent creates took 23 s).
    backlog: int = 2048
    #: Predictions per page of ``GET /v1/predictions``.
    page_size: int = 100
    #: Webhook signing secret (``whsec_<base64>``); None: the one stored in
    #: ``webhook_secret_file``, generated there on first start.
    webhook_secret: str | None = None
    webhook_secret_file: str = field(default_factory=lambda: str(_state_dir() / "webhook_secret"))
    #: How long a failing ``completed`` webhook is retried.
    webhook_retry_seconds: float = 60.0

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Settings:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> Settings:
        models = {}
        for name, spec in (data.get("models") or {}).items():
            if not _MODEL_NAME.match(name):
                raise ConfigError(f"model name {name!r} is not of the form owner/name")
            targets = spec.get("targets") if isinstance(spec, dict) else None
            if (
                not isinstance(targets, list)
                or not targets
                or not all(isinstance(t, str) and t for t in targets)
            ):
                raise ConfigError(f'[models."{name}"] needs targets = ["host:port", ...]')
            models[name] = ModelSettings(name, tuple(targets))
        server = dict(data.get("server") or {})
        settable = {f.name for f in fields(cls)} - {"models"}
        _check_keys("server", server, {k for k in settable if not k.startswith("webhook_")})
        webhooks = dict(data.get("webhooks") or {})
        _check_keys(
            "webhooks",
            webhooks,
            {k.removeprefix("webhook_") for k in settable if k.startswith("webhook_")},
        )
        secret = webhooks.get("secret")
        if secret is not None and not _is_secret(secret):
            raise ConfigError("[webhooks] secret must look like whsec_<base64 of 16+ bytes>")
        server |= {f"webhook_{k}": v for k, v in webhooks.items()}
        values = {**server, **{k: v for k, v in overrides.items() if v is not None}}
        if values.get("public_url"):
            values["public_url"] = values["public_url"].rstrip("/")
        return cls(models=models, **values)


def _check_keys(section: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"unknown [{section}] keys: {', '.join(sorted(unknown))}")


def _is_secret(value: object) -> bool:
    if not isinstance(value, str) or not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 16
    except ValueError:
        return False
