"""Run the bridge: ``serve(settings, task_status=...)`` owns everything.

Ownership, outermost first::

    serve()
    └── open_grpc_loop()             the asyncio thread with every gRPC call
        └── HTTP client              webhook deliveries
            └── predictions nursery  a task per prediction and per webhook
                └── hypercorn        HTTP connections, readers of predictions

At shutdown the order reverses: running predictions are cancelled (their
streams get ``error`` + ``done``), hypercorn closes the connections (with its
own hard deadline, since a client that stopped reading could hold it open),
the nursery ends, and the loop thread closes its channels and exits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import httpx
import hypercorn.config
import hypercorn.trio
import trio

from .app import create_app
from .backends.grpc_loop import open_grpc_loop
from .config import Settings
from .service import Bridge
from .webhooks import WebhookSender, load_or_create_secret

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until *shutdown_trigger* returns (forever if None); reports the
    bound port through *task_status*."""
    config = hypercorn.config.Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.backlog = settings.backlog
    config.graceful_timeout = settings.shutdown_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    secret = load_or_create_secret(settings.webhook_secret, Path(settings.webhook_secret_file))
    async with (
        open_grpc_loop() as grpc_loop,
        httpx.AsyncClient(follow_redirects=False) as http_client,
        trio.open_nursery() as predictions,
    ):
        webhooks = WebhookSender(http_client, secret, retry_for=settings.webhook_retry_seconds)
        bridge = Bridge(settings, grpc_loop, predictions, webhooks)
        app = create_app(bridge)
        stop_http = trio.Event()
        async with trio.open_nursery() as http:
            binds = await http.start(
                partial(hypercorn.trio.serve, app, config, shutdown_trigger=stop_http.wait)
            )
            port = int(binds[0].rsplit(":", 1)[1])
            bridge.base_url = settings.public_url or f"http://{settings.host}:{port}"
            log.info("bridge listening on http://%s:%d", settings.host, port)
            task_status.started(port)
            try:
                await (shutdown_trigger or trio.sleep_forever)()
            finally:
                bridge.close()
                stop_http.set()
                # Hypercorn waits for open connections; its own deadline is
                # graceful_timeout, and we add a hard one around it.
                http.cancel_scope.deadline = (
                    trio.current_time() + settings.shutdown_timeout_seconds + 1
                )
        log.info("bridge stopped")
