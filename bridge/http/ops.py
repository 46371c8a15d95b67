"""What operators and browsers use: the page, health, metrics, the
OpenAPI document, and the webhook secret."""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from ..errors import NotFound, Unauthorized
from ..metrics import CONTENT_TYPE_LATEST
from ..webhooks import tenant_secret
from .common import caller, context, json_response
from .openapi import spec

__all__ = ["METRICS_ENDPOINT", "blueprint"]

blueprint = Blueprint("ops", __name__)

#: The /metrics route's endpoint: it has its own token (see bridge.http.app).
METRICS_ENDPOINT = "ops.prometheus"


@blueprint.get("/")
async def page() -> Response:
    return await current_app.send_static_file("index.html")


@blueprint.get("/health")
async def health() -> Response:
    """Status and readiness for anyone (a load balancer's probe needs no
    token); which models and targets, and how each is, only for a caller
    with a token when there are tokens (an [auth] token or the metrics
    token). Each backend is asked at most about once a second, however
    often this is (:meth:`~bridge.core.catalog.Catalog.check_health`)."""
    bridge = context().bridge
    # Every target of every model, all at once: the answer takes as long as
    # the slowest backend, not as long as all of them together.
    await bridge.catalog.check_health()
    # A target NOT_SERVING whose Describe said why its setup failed.
    broken = {
        name: {
            t: why
            for t, why in entry.setup_errors.items()
            if why and entry.health[t] == "NOT_SERVING"
        }
        for name, entry in bridge.catalog.models.items()
    }
    failed = {name: next(iter(whys.values())) for name, whys in broken.items() if whys}
    targets = {
        name: {t: _shown(status, t in broken[name]) for t, status in entry.health.items()}
        for name, entry in bridge.catalog.models.items()
    }
    # A model is as well as its best target.
    models = {name: min(seen.values(), key=_RANK.index) for name, seen in targets.items()}
    body = {"models": models, "targets": targets} if _may_see_backends() else {}
    if failed and body:  # why: the model's setup raised this
        body["setup_failed"] = failed
    if bridge.draining:
        # Not ready: load balancers stop sending; running streams go on.
        return json_response({"status": "draining", "ready": False} | body, 503)
    # Ready: every model can run predictions; ok: every target can.
    ready = all(status == "SERVING" for status in models.values())
    every = all(s == "SERVING" for seen in targets.values() for s in seen.values())
    return json_response({"status": "ok" if every else "degraded", "ready": ready} | body)


def _may_see_backends() -> bool:
    """Whether this caller may see model names and backend addresses:
    anyone without [auth] tokens, else a caller with one (or the metrics
    token)."""
    state = context()
    if not state.tokens:
        return True
    try:
        caller(state.tokens + state.metrics_tokens)
    except Unauthorized:
        return False
    return True


#: Health, best first.
_RANK = ["SERVING", "LOADING", "SETUP_FAILED", "UNKNOWN", "SERVICE_UNKNOWN", "UNAVAILABLE"]


def _shown(status: str | None, setup_failed: bool = False) -> str:
    """A target's status as /health shows it: a bridge.sdk backend says
    NOT_SERVING while its setup() runs (LOADING), and after it failed
    (SETUP_FAILED, as its Describe says)."""
    if status == "NOT_SERVING":
        return "SETUP_FAILED" if setup_failed else "LOADING"
    return status if status in _RANK else "UNKNOWN"


_SPEC = spec()


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    return json_response(_SPEC)


@blueprint.get("/metrics")
async def prometheus() -> Response:
    return Response(context().metrics.render(), content_type=CONTENT_TYPE_LATEST)


@blueprint.get("/v1/webhooks/default/secret")
async def webhook_secret() -> Response:
    webhooks = context().webhooks
    if webhooks is None:
        raise NotFound("webhooks are not enabled")
    # Each token has its own (Replicate keeps one per account), so no
    # tenant can sign deliveries that another's receiver would accept.
    return json_response({"key": tenant_secret(webhooks.secret, caller())})
