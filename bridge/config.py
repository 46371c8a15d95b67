"""Settings: one frozen value, built once (defaults, then TOML) and passed in.

A config file names each model and where its backends listen; everything
else is optional (docs/operating.md lists every key)::

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

    [deployments."acme/storyteller"]
    model = "demo/story"            # served as this deployment too

    [auth]
    tokens = ["r8_..."]             # bearer tokens; none: no auth

    [metrics]
    token = "..."                   # for /metrics; else the [auth] tokens

    [cors]
    allow_origins = ["https://app.example.com"]

    [webhooks]
    secret = "whsec_..."            # else generated and kept
    allow_hosts = ["hooks.internal"]  # else public addresses only

    [store]
    url = "redis://127.0.0.1:6379/0"  # predictions shared by every bridge

Every value is type- and range-checked when the file is loaded (msgspec, one
C extension that converts and checks a whole table at once), and an error
names the file, the key and what its value must be: ``bridge.toml: [server]
port: expected `int`, got `str```. Values built in code
(``Settings(port=0)``) are trusted as they are.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

__all__ = ["RENAMED", "ConfigError", "DeploymentSettings", "ModelSettings", "Settings"]

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.-]*$", re.IGNORECASE)


def _state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "grpc-sse-bridge"


class ConfigError(ValueError):
    """Raised when a config file or value is not usable; says which and why."""


# The types values must have, checked by msgspec when a config is loaded.
Text = Annotated[str, msgspec.Meta(min_length=1)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: any free port
Count = Annotated[int, msgspec.Meta(ge=1)]
Bytes = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Grace = Annotated[float, msgspec.Meta(ge=0)]  # seconds; 0: none
URL = Annotated[str, msgspec.Meta(pattern=r"^https?://[^/?#\s]+")]
Secret = Annotated[str, msgspec.Meta(pattern=r"^whsec_")]
RedisURL = Annotated[str, msgspec.Meta(pattern=r"^(rediss?|unix)://")]


class OutputSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a bridged service's response messages become a prediction's
    events: JMESPath expressions over each message's proto3 JSON (see
    docs/grpc-services.md). None of them set: each message is one output."""

    #: Text chunks: the output concatenates, as a language model's does.
    text: Text | None = None
    logs: Text | None = None
    #: A non-empty value fails the prediction with it.
    error: Text | None = None
    #: True: this message is the last of the prediction.
    done: Text | None = None
    #: Metric name -> expression of its (numeric) value.
    metrics: dict[Text, Text] = msgspec.field(default_factory=dict)


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    #: gRPC targets (``host:port``): replicas of one model. A prediction goes
    #: to the one with the fewest calls in flight among those whose health
    #: is not known bad (see health_check_seconds). A target naming several
    #: addresses (``dns:///name:port``, ``ipv4:a:port,b:port``) is balanced
    #: by gRPC itself (round_robin, client-side health checking).
    targets: Annotated[tuple[Text, ...], msgspec.Meta(min_length=1)]
    #: With several targets, each one's ``grpc.health.v1`` is checked this
    #: often; one that is down or NOT_SERVING gets no new predictions until
    #: it answers SERVING again (a call that cannot reach it takes it out at
    #: once).
    health_check_seconds: Seconds = 2.0
    #: This model's limit on running predictions (None: only the global one).
    max_running: Count | None = None
    #: How long a prediction keeps retrying a backend that cannot be reached
    #: before it fails with "model backend unavailable".
    start_timeout_seconds: Seconds = 10.0
    #: How long a prediction waits for a backend whose model is still
    #: loading (its setup() running: it refuses predictions as loading).
    load_timeout_seconds: Seconds = 600.0
    #: Deadlines: from start to the first output, between outputs, and for
    #: the whole prediction (also the gRPC deadline; off unless set). The
    #: first two are on by default, so a backend that hangs ends in time.
    first_output_seconds: Seconds | None = 120.0
    idle_seconds: Seconds | None = 60.0
    total_seconds: Seconds | None = None
    #: Output bytes one prediction may produce (None: the global cap).
    max_output_bytes: Bytes | None = None
    #: TLS to the backends (plaintext unless set): their certificates are
    #: checked against ca_file (PEM; None: the system's roots), and with
    #: client_cert and client_key (PEM) the bridge shows its own (mutual TLS).
    tls: bool = False
    ca_file: Text | None = None
    client_cert: Text | None = None
    client_key: Text | None = None
    #: A method of any gRPC service, bridged as this model
    #: (``package.Service/Method``; None: the backend speaks bridge.v1),
    #: with its types from .proto files (and their include paths), a
    #: descriptor set, or the service's reflection: one of the three.
    #: Relative paths are relative to the config file.
    method: Text | None = None
    protos: tuple[Text, ...] = ()
    proto_path: tuple[Text, ...] = ()
    descriptor_set: Text | None = None
    reflection: bool = False
    #: What its response messages mean (default: each is one output).
    output: OutputSettings = msgspec.field(default_factory=OutputSettings)
    #: Request fields set here, which a user may not set.
    input: dict[Text, Any] = msgspec.field(default_factory=dict)
    #: gRPC metadata sent with every call, and request headers forwarded
    #: as metadata (lowercase names).
    metadata: dict[Text, str] = msgspec.field(default_factory=dict)
    forward_headers: tuple[Text, ...] = ()
    #: OpenAI's request fields -> this model's inputs (``prompt = "text"``),
    #: where its inputs are not named as OpenAI's (docs/openai.md).
    openai: dict[Text, Text] = msgspec.field(default_factory=dict)

    @property
    def generic(self) -> bool:
        """Whether the backend is any gRPC service (a method is named)."""
        return self.method is not None


class DeploymentSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A deployment (Replicate's ``owner/name`` that runs a model): here, a
    second name for a configured model."""

    name: str
    #: The configured model it serves.
    model: str


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: Text = "127.0.0.1"
    port: Port = 8000
    #: Bridge processes serving the port (``serve --workers``): one per
    #: core. More than one needs ``[store] url`` (the workers share it).
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    models: dict[str, ModelSettings] = msgspec.field(default_factory=dict)
    deployments: dict[str, DeploymentSettings] = msgspec.field(default_factory=dict)
    #: Base of the absolute URLs in responses; None takes it from the request.
    public_url: URL | None = None
    #: Host names requests may name (``.example.com``: it and any name
    #: under it); empty: any valid one. Others get 400.
    allowed_hosts: tuple[Text, ...] = ()
    #: Idle streams get a ``: ping`` comment this often (``keepalive_seconds``
    #: before 2026-12, still read with a warning: see :data:`RENAMED`).
    ping_seconds: Seconds = 15.0
    #: A reader whose connection accepts no data for this long is cut off
    #: (TCP_USER_TIMEOUT); it can reconnect and resume with Last-Event-ID.
    stall_seconds: Seconds = 30.0
    #: An HTTP connection idle between requests is closed after this long.
    keep_alive_seconds: Seconds = 5.0
    #: How long a create waits for the backend's Describe before going on.
    describe_timeout_seconds: Seconds = 2.0
    #: How long a backend's Describe answer (version, schemas) is used
    #: before it is asked again (a redeployed backend's new schema counts
    #: within this long).
    describe_ttl_seconds: Seconds = 60.0
    #: At SIGTERM, running predictions may finish for this long, then are
    #: cancelled; then open connections get ``shutdown_timeout_seconds``.
    drain_seconds: Grace = 10.0
    shutdown_timeout_seconds: Grace = 5.0
    #: Largest request body accepted (413 above).
    max_body_bytes: Bytes = 1 << 20
    #: A request body not all received this long after its head is
    #: answered 408 and its connection closed.
    body_timeout_seconds: Seconds = 60.0
    #: HTTP connections open at once; past it, accepting pauses until one
    #: closes. None: from the open-file limit, leaving room for gRPC,
    #: webhooks and files (see :func:`bridge.server.connection_limit`).
    max_connections: Count | None = None
    #: Whether cleartext HTTP/2 is spoken (an ``Upgrade: h2c`` or the
    #: prior-knowledge preface); off: HTTP/1.1 only, unless over TLS.
    h2c: bool = False
    #: A certificate (PEM, its chain after it) and its key: the bridge then
    #: serves HTTPS only, with HTTP/2 offered by ALPN. Both or neither.
    certfile: Text | None = None
    keyfile: Text | None = None
    #: A TLS handshake not done this long after the connection was
    #: accepted is dropped, and its socket closed (hypercorn waits 60 s).
    tls_handshake_seconds: Seconds = 10.0
    #: Listen backlog. Hypercorn's default (100) overflows when many clients
    #: connect at once, and the kernel then drops SYNs that clients resend
    #: only after 1, 3, 7 s (measured: 1,000 concurrent creates took 23 s).
    backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 2048
    #: Predictions running at once (all models) and waiting for a slot;
    #: past both, creates get 429 with Retry-After.
    max_running: Count = 256
    max_queued: Annotated[int, msgspec.Meta(ge=0)] = 1024
    retry_after_seconds: Count = 1
    #: Output and logs one prediction may keep, in bytes (each chunk or log
    #: line costs 8 bytes besides its text); past it, it fails.
    max_output_bytes: Bytes = 8 << 20
    #: Every prediction's input, output and logs together, in bytes. To make
    #: room the data of the earliest ended predictions goes first (they stay
    #: listable with ``data_removed``); if running ones fill it, the one that
    #: asks for more fails and creates get 429.
    max_retained_bytes: Bytes = 512 << 20
    #: Ended predictions keep their input, output and logs this long, and
    #: at most this many of them do; then their data goes (``data_removed``).
    retention_seconds: Grace = 3600.0
    retention_count: Annotated[int, msgspec.Meta(ge=0)] = 10_000
    #: Ended predictions stay listable and gettable (their metadata: about
    #: 1.6 kB each) this long, and at most this many; then they are 404.
    #: At least the data window and count.
    metadata_retention_seconds: Grace = 7 * 86400.0
    metadata_retention_count: Annotated[int, msgspec.Meta(ge=0)] = 50_000
    #: The longest ``Prefer: wait`` honoured (Replicate's is 60 s).
    max_wait_seconds: Seconds = 60.0
    #: Predictions per page of ``GET /v1/predictions``, and the most bytes
    #: of JSON in one page (at least one prediction, whatever its size).
    page_size: Count = 100
    max_page_bytes: Bytes = 1 << 20
    #: Bearer tokens accepted; empty: no auth. Each token sees only the
    #: predictions it created.
    auth_tokens: frozenset[Text] = frozenset()
    #: The bearer token /metrics asks for; None: the [auth] tokens (and
    #: with no auth either, none).
    metrics_token: Text | None = None
    #: Origins allowed to call the API from a browser ("*": any).
    cors_allow_origins: tuple[Text, ...] = ()
    #: Webhook signing secret (``whsec_<base64>``); None: the one stored in
    #: ``webhook_secret_file``, generated there on first start.
    webhook_secret: Secret | None = None
    webhook_secret_file: Text = msgspec.field(
        default_factory=lambda: str(_state_dir() / "webhook_secret")
    )
    #: How long a failing ``completed`` webhook is retried.
    webhook_retry_seconds: Grace = 60.0
    #: One delivery attempt's deadline, and deliveries at once to one host.
    webhook_timeout_seconds: Seconds = 5.0
    webhook_host_connections: Count = 4
    #: Rendered bodies held at once by every delivery together (each
    #: attempt renders when it has its share; waiting ones hold none).
    webhook_max_bytes: Bytes = 64 << 20
    #: Hosts webhooks may go to whatever their addresses, and whether
    #: loopback, private and link-local addresses are allowed at all (both
    #: for development: by default webhooks go to public addresses only).
    webhook_allow_hosts: tuple[Text, ...] = ()
    webhook_allow_private: bool = False
    #: Where predictions are kept: None, in this process's memory; a Redis
    #: URL (``redis://host:port/db``, ``rediss://`` for TLS,
    #: ``unix:///path``): there, shared by every bridge given the same URL
    #: and key prefix.
    store_url: RedisURL | None = None
    #: What every key the bridge writes to Redis starts with.
    store_key_prefix: Text = "bridge:"
    #: A bridge process that stops (killed, its machine gone) holds a
    #: lease in Redis that lapses; within this long another one fails the
    #: predictions it was running, so no reader waits for them forever.
    store_lease_seconds: Seconds = 10.0
    #: The least time between the starts of two writes of a process'
    #: predictions to Redis: under load, what came in this long goes in one
    #: script call (Kafka's ``linger.ms``). 0, the default: each as soon as
    #: the last is done (nothing waits to fill a batch). Readers see events
    #: once Redis holds them, so this is the most a token waits for its
    #: write beyond the round trip; it buys CPU where CPU is short.
    store_write_gap_seconds: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Settings:
        """Settings from the TOML file at *path* (then *overrides*, None
        ones ignored); a :class:`ConfigError` names the file, the key and
        what its value must be."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        try:
            return cls.from_dict(data, base=Path(path).parent, **overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        extra_models: dict[str, tuple[str, ...]] | None = None,
        base: Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from a config file's tables, each value type- and
        range-checked; *extra_models* (name: targets) are served too, unless
        the file configures a model of the same name. Relative paths of
        bridged services' types are relative to *base*."""
        _check_keys("top level", data, {"models", "deployments", *_SECTIONS})
        extra = {name: {"targets": list(t)} for name, t in (extra_models or {}).items()}
        models = extra | _table(data, "models")
        deployments = _table(data, "deployments")
        values: dict[str, Any] = {}
        for section, prefix in _SECTIONS.items():
            table = _renamed(section, _table(data, section))
            _check_keys(section, table, _section_keys(section))
            values |= {prefix + key: value for key, value in table.items()}
        values |= {k: v for k, v in overrides.items() if v is not None}
        values["models"] = {name: _model(name, spec, base) for name, spec in models.items()}
        values["deployments"] = {
            name: _deployment(name, spec, values["models"]) for name, spec in deployments.items()
        }
        try:
            settings = msgspec.convert(values, cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(_where(exc, _setting_key)) from None
        if settings.webhook_secret is not None and not _is_secret(settings.webhook_secret):
            raise ConfigError("[webhooks] secret must look like whsec_<base64 of 16+ bytes>")
        if (settings.certfile is None) != (settings.keyfile is None):
            raise ConfigError("[server] certfile and keyfile go together: set both or neither")
        for key in ("certfile", "keyfile"):
            path = getattr(settings, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"[server] {key}: cannot read {path}")
        if settings.workers > 1 and settings.store_url is None:
            raise ConfigError(
                f"[server] workers = {settings.workers} needs [store] url: the workers "
                "share their predictions through Redis (one process keeps them in memory)"
            )
        for window in ("seconds", "count"):
            data_bound = getattr(settings, f"retention_{window}")
            if getattr(settings, f"metadata_retention_{window}") < data_bound:
                raise ConfigError(
                    f"[server] metadata_retention_{window} must be at least "
                    f"retention_{window} ({data_bound:g})"
                )
        return msgspec.structs.replace(
            settings,
            public_url=settings.public_url and settings.public_url.rstrip("/"),
            cors_allow_origins=tuple(o.rstrip("/") for o in settings.cors_allow_origins),
            allowed_hosts=tuple(h.lower().rstrip(".") for h in settings.allowed_hosts),
        )


#: Settings renamed, by section: the old name, still read (with a
#: warning) for a release or two, and the new one.
RENAMED: dict[str, dict[str, str]] = {
    # The SSE ping, beside keep_alive_seconds (an idle HTTP connection).
    "server": {"keepalive_seconds": "ping_seconds"},
}


def _renamed(section: str, table: dict[str, Any]) -> dict[str, Any]:
    """*table* with each renamed key under its new name, a warning logged
    for each; both names at once is an error."""
    for old, new in RENAMED.get(section, {}).items():
        if old not in table:
            continue
        if new in table:
            raise ConfigError(f"[{section}] {old} is the old name of {new}: set only {new}")
        log.warning("[%s] %s is deprecated: it is now %s (same meaning)", section, old, new)
        table = {(new if key == old else key): value for key, value in table.items()}
    return table


#: TOML section -> prefix of its Settings fields ([server] has none).
_SECTIONS = {
    "server": "",
    "auth": "auth_",
    "metrics": "metrics_",
    "cors": "cors_",
    "webhooks": "webhook_",
    "store": "store_",
}
_PREFIXES = tuple(p for p in _SECTIONS.values() if p)


def _section_keys(section: str) -> set[str]:
    names = set(Settings.__struct_fields__) - {"models"}
    prefix = _SECTIONS[section]
    if prefix:
        return {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    return {n for n in names if not n.startswith(_PREFIXES)}


def _setting_key(field: str) -> str:
    """``[section] key`` for a Settings field name."""
    for section, prefix in _SECTIONS.items():
        if prefix and field.startswith(prefix):
            return f"[{section}] {field.removeprefix(prefix)}"
    return f"[server] {field}"


def _where(exc: msgspec.ValidationError, key: Any) -> str:
    """msgspec's ``Expected `int`, got `str` - at `$.port``` as
    ``[server] port: expected `int`, got `str```."""
    what, _, path = str(exc).partition(" - at `$.")
    field, _, inner = path.rstrip("`").partition("[")
    where = key(field) + (f"[{inner}" if inner else "")
    return f"{where}: {what[:1].lower()}{what[1:]}"


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    table = data.get(key) or {}
    if not isinstance(table, dict):
        raise ConfigError(f"[{key}] must be a table")
    return table


def _model(name: str, spec: Any, base: Path | None = None) -> ModelSettings:
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"model name {name!r} is not of the form owner/name")
    if not isinstance(spec, dict) or "targets" not in spec:
        raise ConfigError(f'[models."{name}"] needs targets = ["host:port", ...]')
    _check_keys(f'models."{name}"', spec, set(ModelSettings.__struct_fields__) - {"name"})
    try:
        model = msgspec.convert({**spec, "name": name}, ModelSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_where(exc, lambda field: f'[models."{name}"] {field}')) from None
    where = f'[models."{name}"]'
    files = {"ca_file": model.ca_file, "client_cert": model.client_cert}
    files["client_key"] = model.client_key
    if not model.tls and any(files.values()):
        raise ConfigError(f"{where} ca_file, client_cert and client_key need tls = true")
    if (model.client_cert is None) != (model.client_key is None):
        raise ConfigError(f"{where} client_cert and client_key go together: set both or neither")
    for key, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{where} {key}: cannot read {path}")
    unknown = set(model.openai) - set(OPENAI_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where} openai: {', '.join(sorted(unknown))} is not one of OpenAI's fields "
            f"a model may rename ({', '.join(OPENAI_FIELDS)})"
        )
    return _service(model, where, base)


#: What a model's OpenAI table may rename (bridge/http/openai_input.py's rules).
OPENAI_FIELDS = (
    "prompt", "system_prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
)  # fmt: skip


#: The keys that only a model naming a method may set.
_SERVICE_KEYS = ("protos", "proto_path", "descriptor_set", "reflection", "output", "input")


def _service(model: ModelSettings, where: str, base: Path | None) -> ModelSettings:
    """*model*, checked as a bridged service (one source of types) with
    its paths made relative to *base* (the config file's directory)."""
    _check_metadata(model, where)
    if model.method is None:
        set_ = [key for key in _SERVICE_KEYS if getattr(model, key) != getattr(_NATIVE, key)]
        if set_:
            raise ConfigError(f'{where} {", ".join(set_)}: only with method = "pkg.Service/Method"')
        return model
    sources = [bool(model.protos), model.descriptor_set is not None, model.reflection]
    if sum(sources) != 1:
        raise ConfigError(
            f"{where} method needs its types from one of protos = [...], "
            'descriptor_set = "FILE" or reflection = true'
        )
    if model.proto_path and not model.protos:
        raise ConfigError(f"{where} proto_path goes with protos")

    def here(path: str) -> str:
        return str(base / path) if base is not None and not os.path.isabs(path) else path

    return msgspec.structs.replace(
        model,
        protos=tuple(map(here, model.protos)),
        proto_path=tuple(map(here, model.proto_path)),
        descriptor_set=model.descriptor_set and here(model.descriptor_set),
    )


#: A gRPC metadata key the bridge may send as text: lowercase, not grpc's
#: own (``grpc-*``), not binary (``-bin``, whose values are bytes).
_METADATA_KEY = re.compile(r"^(?!grpc-)[0-9a-z_.-]+(?<!-bin)$")
#: A text metadata value: printable ASCII, as gRPC's wire format has it.
METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")


def _check_metadata(model: ModelSettings, where: str) -> None:
    for key, value in model.metadata.items():
        if not _METADATA_KEY.match(key):
            raise ConfigError(
                f"{where} metadata {key!r}: gRPC metadata keys are lowercase letters, digits, "
                "_ . and -, not grpc-* nor -bin"
            )
        if not isinstance(value, str) or not METADATA_VALUE.match(value):
            raise ConfigError(f"{where} metadata {key!r}: a value is printable ASCII text")
    bad = [h for h in model.forward_headers if not _METADATA_KEY.match(h)]
    if bad:
        raise ConfigError(
            f"{where} forward_headers {bad[0]!r}: a header name in lowercase, as its gRPC "
            "metadata key (letters, digits, _ . and -; not grpc-* nor -bin)"
        )


#: A model with nothing set: what _SERVICE_KEYS are when not set.
_NATIVE = ModelSettings(name="-", targets=("-",))


def _deployment(name: str, spec: Any, models: dict[str, ModelSettings]) -> DeploymentSettings:
    where = f'[deployments."{name}"]'
    if not _MODEL_NAME.match(name):
        raise ConfigError(f"deployment name {name!r} is not of the form owner/name")
    if not isinstance(spec, dict):
        raise ConfigError(f'{where} must be a table: model = "owner/name"')
    _check_keys(f'deployments."{name}"', spec, {"model"})
    model = spec.get("model")
    if model not in models:
        raise ConfigError(f"{where} model must name a model configured in [models], not {model!r}")
    return DeploymentSettings(name, model)


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
