"""Settings: one frozen value, built once (defaults, then TOML) and passed in.

A config file names each model and where its backends listen; everything
else is optional (README, "Operating it", lists every key)::

    [models."demo/echo"]
    targets = ["127.0.0.1:50051"]
    max_running = 8                 # this model's share
    first_output_seconds = 30       # deadlines, each off unless set
    idle_seconds = 10
    total_seconds = 300

    [server]
    public_url = "https://bridge.example.com"   # else taken from each request
    max_running = 256               # predictions running at once, all models
    max_queued = 1024               # waiting for a slot; past that, 429

    [auth]
    tokens = ["r8_..."]             # bearer tokens; none: no auth

    [cors]
    allow_origins = ["https://app.example.com"]

    [webhooks]
    secret = "whsec_..."            # else generated and kept
    allow_hosts = ["hooks.internal"]  # else public addresses only
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
    #: This model's limit on running predictions (None: only the global one).
    max_running: int | None = None
    #: How long a prediction keeps retrying a backend that cannot be reached
    #: before it fails with "model backend unavailable".
    start_timeout_seconds: float = 10.0
    #: Deadlines: from start to the first output, between outputs, and for
    #: the whole prediction (also the gRPC deadline; off unless set). The
    #: first two are on by default, so a backend that hangs ends in time.
    first_output_seconds: float | None = 120.0
    idle_seconds: float | None = 60.0
    total_seconds: float | None = None
    #: Output bytes one prediction may produce (None: the global cap).
    max_output_bytes: int | None = None


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    models: dict[str, ModelSettings] = field(default_factory=dict)
    #: Base of the absolute URLs in responses; None takes it from the request.
    public_url: str | None = None
    #: Idle streams get a ``: ping`` comment this often.
    keepalive_seconds: float = 15.0
    #: A reader whose connection accepts no data for this long is cut off
    #: (TCP_USER_TIMEOUT); it can reconnect and resume with Last-Event-ID.
    stall_seconds: float = 30.0
    #: An HTTP connection idle between requests is closed after this long.
    keep_alive_seconds: float = 5.0
    #: How long a create waits for the backend's Describe before going on.
    describe_timeout_seconds: float = 2.0
    #: At SIGTERM, running predictions may finish for this long, then are
    #: cancelled; then open connections get ``shutdown_timeout_seconds``.
    drain_seconds: float = 10.0
    shutdown_timeout_seconds: float = 5.0
    #: Largest request body accepted (413 above).
    max_body_bytes: int = 1 << 20
    #: Listen backlog. Hypercorn's default (100) overflows when many clients
    #: connect at once, and the kernel then drops SYNs that clients resend
    #: only after 1, 3, 7 s (measured: 1,000 concurrent creates took 23 s).
    backlog: int = 2048
    #: Predictions running at once (all models) and waiting for a slot;
    #: past both, creates get 429 with Retry-After.
    max_running: int = 256
    max_queued: int = 1024
    retry_after_seconds: int = 1
    #: Output and logs one prediction may keep, in bytes (each chunk or log
    #: line costs 8 bytes besides its text); past it, it fails.
    max_output_bytes: int = 8 << 20
    #: Every prediction's input, output and logs together, in bytes. To make
    #: room the data of the earliest ended predictions goes first (they stay
    #: listable with ``data_removed``); if running ones fill it, the one that
    #: asks for more fails and creates get 429.
    max_retained_bytes: int = 512 << 20
    #: Ended predictions are kept this long, and at most this many (then 404).
    retention_seconds: float = 3600.0
    retention_count: int = 10_000
    #: The longest ``Prefer: wait`` honoured (Replicate's is 60 s).
    max_wait_seconds: float = 60.0
    #: Predictions per page of ``GET /v1/predictions``, and the most bytes
    #: of JSON in one page (at least one prediction, whatever its size).
    page_size: int = 100
    max_page_bytes: int = 1 << 20
    #: Bearer tokens accepted; empty: no auth. Each token sees only the
    #: predictions it created.
    auth_tokens: frozenset[str] = frozenset()
    #: Origins allowed to call the API from a browser ("*": any).
    cors_allow_origins: tuple[str, ...] = ()
    #: Webhook signing secret (``whsec_<base64>``); None: the one stored in
    #: ``webhook_secret_file``, generated there on first start.
    webhook_secret: str | None = None
    webhook_secret_file: str = field(default_factory=lambda: str(_state_dir() / "webhook_secret"))
    #: How long a failing ``completed`` webhook is retried.
    webhook_retry_seconds: float = 60.0
    #: One delivery attempt's deadline, and deliveries at once to one host.
    webhook_timeout_seconds: float = 5.0
    webhook_host_connections: int = 4
    #: Hosts webhooks may go to whatever their addresses, and whether
    #: loopback, private and link-local addresses are allowed at all (both
    #: for development: by default webhooks go to public addresses only).
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_allow_private: bool = False

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Settings:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> Settings:
        _check_keys("top level", data, {"models", *_SECTIONS})
        models = {name: _model(name, spec) for name, spec in (data.get("models") or {}).items()}
        values: dict[str, Any] = {}
        names = [f.name for f in fields(cls) if f.name != "models"]
        for section, prefix in _SECTIONS.items():
            table = data.get(section) or {}
            if prefix:
                known = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
            else:
                known = {n for n in names if not n.startswith(_PREFIXES)}
            _check_keys(section, table, known)
            values |= {prefix + k: v for k, v in table.items()}
        values |= {k: v for k, v in overrides.items() if v is not None}
        if values.get("public_url"):
            values["public_url"] = values["public_url"].rstrip("/")
        if "auth_tokens" in values:
            values["auth_tokens"] = frozenset(_strings("[auth] tokens", values["auth_tokens"]))
        if "cors_allow_origins" in values:
            values["cors_allow_origins"] = tuple(
                o.rstrip("/")
                for o in _strings("[cors] allow_origins", values["cors_allow_origins"])
            )
        if "webhook_allow_hosts" in values:
            values["webhook_allow_hosts"] = tuple(
                _strings("[webhooks] allow_hosts", values["webhook_allow_hosts"])
            )
        secret = values.get("webhook_secret")
        if secret is not None and not _is_secret(secret):
            raise ConfigError("[webhooks] secret must look like whsec_<base64 of 16+ bytes>")
        return cls(models=models, **values)


#: TOML section -> prefix of its Settings fields ([server] has none).
_SECTIONS = {"server": "", "auth": "auth_", "cors": "cors_", "webhooks": "webhook_"}
_PREFIXES = tuple(p for p in _SECTIONS.values() if p)


def _model(name: str, spec: Any) -> ModelSettings:
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"model name {name!r} is not of the form owner/name")
    spec = dict(spec) if isinstance(spec, dict) else {}
    targets = spec.pop("targets", None)
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f'[models."{name}"] needs targets = ["host:port", ...]')
    known = {f.name for f in fields(ModelSettings)} - {"name", "targets"}
    _check_keys(f'models."{name}"', spec, known)
    return ModelSettings(name, tuple(_strings(f'[models."{name}"] targets', targets)), **spec)


def _strings(what: str, value: Any) -> list[str]:
    if not isinstance(value, list | tuple | frozenset | set) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ConfigError(f"{what} must be a list of non-empty strings")
    return list(value)


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
