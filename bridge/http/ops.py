"""What operators and browsers use: the page, health, metrics, the
OpenAPI document, and the webhook secret."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, current_app

from ..core.models import ModelEntry
from ..errors import NotFound
from ..metrics import CONTENT_TYPE_LATEST
from ..webhooks import tenant_secret
from .common import caller, context, json_response
from .openapi import spec

__all__ = ["METRICS_ENDPOINT", "blueprint"]

blueprint = Blueprint("ops", __name__)

#: The /metrics route's endpoint: it has its own token (see bridge.http.app).
METRICS_ENDPOINT = "ops.prometheus"

#: The longest a health check waits for one backend.
HEALTH_CHECK_SECONDS = 1.0


@blueprint.get("/")
async def page() -> Response:
    return await current_app.send_static_file("index.html")


@blueprint.get("/health")
async def health() -> Response:
    bridge = context().bridge
    models = dict.fromkeys(bridge.catalog.models, "UNAVAILABLE")

    async def check(entry: ModelEntry) -> None:
        with trio.move_on_after(HEALTH_CHECK_SECONDS):
            status = await bridge.grpc.check_health(entry.next_target())
            # A bridge.sdk backend says NOT_SERVING while setup() runs.
            models[entry.name] = "LOADING" if status == "NOT_SERVING" else status

    # All at once: the answer takes as long as the slowest backend, not
    # as long as all of them together.
    async with trio.open_nursery() as nursery:
        for entry in bridge.catalog.models.values():
            nursery.start_soon(check, entry)
    if bridge.draining:
        # Not ready: load balancers stop sending; running streams go on.
        return json_response({"status": "draining", "ready": False, "models": models}, 503)
    ready = all(status == "SERVING" for status in models.values())
    return json_response(
        {"status": "ok" if ready else "degraded", "ready": ready, "models": models}
    )


_SPEC = spec()


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    return json_response(_SPEC)


@blueprint.get("/metrics")
async def prometheus() -> Response:
    return Response(context().metrics.render(), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/v1/webhooks/default/secret")
async def webhook_secret() -> Response:
    webhooks = context().bridge.webhooks
    if webhooks is None:
        raise NotFound("webhooks are not enabled")
    # Each token has its own (Replicate keeps one per account), so no
    # tenant can sign deliveries that another's receiver would accept.
    return json_response({"key": tenant_secret(webhooks.secret, caller())})
