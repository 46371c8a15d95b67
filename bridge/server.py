"""Run the bridge: ``serve(settings, task_status=...)`` owns everything.

Ownership, outermost first::

    serve()
    └── the store                    in memory, or Redis (its writer and reader tasks)
        └── open_grpc_loop()         the asyncio thread with every gRPC call
        └── HTTP client              webhook deliveries
            └── predictions nursery  a task per prediction and per webhook
                └── hypercorn        HTTP connections, readers of predictions

At shutdown: the bridge drains (health answers 503, creates get 503, running
predictions may finish for ``drain_seconds``), then running predictions are
cancelled (their streams get ``error`` + ``done`` saying to retry), hypercorn
closes the connections (under a hard deadline of ours, since a client that
stopped reading could hold it open), the nursery ends, the loop thread
closes its channels and exits, and a Redis store writes what is left.
"""

from __future__ import annotations

import gc
import logging
import resource
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import hypercorn.config
import trio
from hypercorn.config import Sockets

from .backends.generic.backend import ServiceBackend, bind_services
from .backends.grpc_loop import GrpcLoop, open_grpc_loop
from .config import Settings
from .core.service import Bridge
from .core.store import MemoryStore, PredictionStore
from .errors import ListenError
from .http import create_app
from .http.server import ConnectionLimits, serve_http
from .http.stream import KeepAlive
from .metrics import Metrics
from .offload import Offload
from .store_redis import open_redis_store
from .webhooks import WebhookPolicy, WebhookSender, load_or_create_secret, open_webhook_client

__all__ = ["StopNow", "connection_limit", "listen", "serve"]

log = logging.getLogger(__name__)


def _webhook_sender(
    settings: Settings,
    http_client: httpx.AsyncClient,
    nursery: trio.Nursery,
    policy: WebhookPolicy,
) -> WebhookSender:
    secret = load_or_create_secret(settings.webhook_secret, Path(settings.webhook_secret_file))
    return WebhookSender(
        http_client,
        secret,
        nursery,
        policy=policy,
        retry_for=settings.webhook_retry_seconds,
        timeout=settings.webhook_timeout_seconds,
        host_connections=settings.webhook_host_connections,
        max_bytes=settings.webhook_max_bytes,
    )


def _hypercorn_config(settings: Settings) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.backlog = settings.backlog
    config.keep_alive_timeout = settings.keep_alive_seconds
    config.graceful_timeout = settings.shutdown_timeout_seconds
    config.accesslog = None
    # hypercorn's own lines ("Running on ...", the line the README says to
    # wait for) under the bridge's logger: not "hypercorn.error", whose
    # name alarms whoever reads it.
    config.errorlog = logging.getLogger("bridge.server")
    # HTTPS (and with it HTTP/2, by ALPN) when a certificate is configured.
    config.certfile, config.keyfile = settings.certfile, settings.keyfile
    # A TLS handshake not done in time frees its connection (hypercorn
    # waits 60 s: cheap slots for clients that never say hello).
    config.ssl_handshake_timeout = settings.tls_handshake_seconds
    return config


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    stop_now: StopNow | None = None,
    store: PredictionStore | None = None,
    sockets: Sockets | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until *shutdown_trigger* returns (forever if None); reports the
    bound port through *task_status*. Once *stop_now* goes (a second
    signal), shutdown skips what is left of its waits: the drain, and the
    connections' grace. Predictions are kept in *store* (None: in Redis
    with ``[store] url``, else in memory). It listens on *sockets* if
    given (a worker of ``serve --workers``: see :func:`listen`).

    (One sequence, from wiring the parts to shutting them down in order,
    read top to bottom: longer than most functions here.)"""
    stop_now = stop_now or StopNow()
    config = _hypercorn_config(settings)
    policy = WebhookPolicy(
        settings.webhook_allow_hosts, allow_private=settings.webhook_allow_private
    )
    offload = Offload()  # one worker thread for big work, whoever asks
    # Bridged services' types (protoc, files): a config error before anything opens.
    services = await trio.to_thread.run_sync(bind_services, settings)
    async with (
        _open_store(settings, store) as store,
        open_grpc_loop(offload=offload) as grpc_loop,
        open_webhook_client(
            policy, request_seconds=settings.webhook_timeout_seconds
        ) as http_client,
        trio.open_nursery() as predictions,
    ):
        _secure_backends(settings, grpc_loop)
        metrics = Metrics()  # what the predictions do, counted
        backends = {
            name: ServiceBackend(grpc_loop, settings.models[name], binding)
            for name, binding in services.items()
        }
        bridge = Bridge(settings, grpc_loop, predictions, store, offload, metrics, backends)
        metrics.watch(bridge)
        webhooks = _webhook_sender(settings, http_client, predictions, policy)
        keep_alive = KeepAlive(settings.ping_seconds)
        predictions.start_soon(keep_alive.run)
        predictions.start_soon(bridge.watch_targets)
        app = create_app(bridge, metrics, keep_alive, webhooks)
        stop_http = trio.Event()
        if sockets is None:
            sockets = listen(settings)
        limits = ConnectionLimits(
            max_connections=settings.max_connections or connection_limit(),
            h2c=settings.h2c,
            stall_seconds=settings.stall_seconds,
        )
        async with trio.open_nursery() as http:
            binds = await http.start(
                partial(
                    serve_http,
                    app,
                    config,
                    sockets,
                    limits,
                    shutdown_trigger=stop_http.wait,
                )
            )
            port = int(binds[0].rsplit(":", 1)[1])
            scheme = "https" if settings.certfile else "http"
            bridge.base_url = settings.public_url or f"{scheme}://{settings.host}:{port}"
            # What startup made lives as long as the process: out of the
            # collector's way (measured: a full collection went from 190 to
            # 50 ms, the stall every stream sees; gap max 340 ms to 150).
            gc.freeze()
            log.info("bridge listening on %s://%s:%d", scheme, settings.host, port)
            task_status.started(port)
            try:
                await (shutdown_trigger or trio.sleep_forever)()
                log.info("draining: up to %g s for running predictions", settings.drain_seconds)
                with stop_now.cuts(trio.CancelScope()):
                    await bridge.drain(settings.drain_seconds)
            finally:
                bridge.close()
                # Pending webhooks get the shutdown grace to be delivered.
                webhooks.close(settings.shutdown_timeout_seconds)
                keep_alive.stop()
                stop_http.set()
                # Hypercorn waits for open connections; its own deadline is
                # graceful_timeout, and we add a hard one around it (a
                # second signal cuts it short).
                http.cancel_scope.deadline = (
                    trio.current_time() + settings.shutdown_timeout_seconds + 1
                )
                stop_now.cuts(http.cancel_scope)
        log.info("bridge stopped")


@asynccontextmanager
async def _open_store(
    settings: Settings, store: PredictionStore | None
) -> AsyncIterator[PredictionStore]:
    """*store*, or the one the settings name: Redis (open while the bridge
    runs) or this process's memory."""
    if store is not None:
        yield store
    elif settings.store_url is not None:
        async with open_redis_store(settings) as redis_store:
            yield redis_store
    else:
        yield MemoryStore(settings)


class StopNow:
    """What a second SIGINT or SIGTERM cuts short. :meth:`go` cancels every
    wait registered with :meth:`cuts`, and any registered later; the
    shutdown then goes on at once, in the same order."""

    def __init__(self) -> None:
        self.going = False
        self._scopes: list[trio.CancelScope] = []

    def cuts(self, scope: trio.CancelScope) -> trio.CancelScope:
        """Register *scope* (returned, to be entered or already running)."""
        if self.going:
            scope.cancel()
        else:
            self._scopes.append(scope)
        return scope

    def go(self) -> None:
        self.going = True
        for scope in self._scopes:
            scope.cancel()


#: File descriptors kept for everything but HTTP connections: gRPC
#: channels, the webhook pool (256 at most), files, the listening sockets.
FD_RESERVE = 512


def connection_limit() -> int:
    """The default ``max_connections``: the open-file limit, raised to its
    hard limit first (as nginx's ``worker_rlimit_nofile`` and Redis do),
    less :data:`FD_RESERVE`; at least 64."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return max(64, soft - FD_RESERVE)


def _secure_backends(settings: Settings, grpc_loop: GrpcLoop) -> None:
    """TLS to the targets of each model with ``tls = true``."""
    for model in settings.models.values():
        if model.tls:
            ca, key, cert = (
                Path(path).read_bytes() if path is not None else None
                for path in (model.ca_file, model.client_key, model.client_cert)
            )
            for target in model.targets:
                grpc_loop.secure(target, ca, key, cert)


def listen(settings: Settings) -> Sockets:
    """Hypercorn's listening sockets for *settings*, with TCP_USER_TIMEOUT set (accepted
    connections inherit it): a reader whose connection takes no data for
    *stall_seconds* (zero window) is cut off by the kernel. Hypercorn writes
    under a shielded scope, so nothing in the app could unblock that write;
    the reader can reconnect and resume with Last-Event-ID. An address that
    cannot be listened on is a :class:`ListenError` saying which."""
    config, stall_seconds = _hypercorn_config(settings), settings.stall_seconds
    try:
        sockets = config.create_sockets()
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {', '.join(config.bind)}: {exc.strerror or exc}"
        ) from None
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, max(1, int(stall_seconds * 1000)))
        sock.listen(config.backlog)
    return sockets


_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)  # Linux
