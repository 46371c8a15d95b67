"""The Quart-Trio app: its blueprints, and what every request goes
through first (Host check, CORS preflight, auth) and last (CORS headers,
errors as problem+json)."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .._compat.quart_trio import App
from ..core.service import Bridge
from ..errors import BridgeError, RetryLater, Unauthorized
from ..metrics import Metrics
from ..webhooks import WebhookSender
from . import models_api, openai_api, ops, predictions_api
from .common import Context, caller, context, no_content, problem
from .headers import check_host, cors_origin
from .stream import KeepAlive

__all__ = ["create_app"]

_CORS_HEADERS = "Authorization, Content-Type, Prefer, Cancel-After, Last-Event-ID, Cache-Control"
_CORS_EXPOSE = "Location, Preference-Applied, Retry-After"


def create_app(
    bridge: Bridge,
    metrics: Metrics,
    keep_alive: KeepAlive | None = None,
    webhooks: WebhookSender | None = None,
) -> QuartTrio:
    """The Quart-Trio app serving *bridge*, and *metrics* at /metrics; its
    streams' *keep_alive* clock is run by whoever serves it, and its
    predictions' webhooks are delivered by *webhooks* (none: checked, not
    delivered)."""
    app = App(__name__, static_folder="static", static_url_path="/static")
    settings = bridge.settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # The one timeout for a slow body (hypercorn's read_timeout stays off:
    # it would also cut a stream's connection, where the client sends
    # nothing): 408, then the connection closes.
    app.config["BODY_TIMEOUT"] = settings.body_timeout_seconds
    tokens = [t.encode() for t in sorted(settings.auth_tokens)]
    app.extensions["bridge"] = Context(
        bridge=bridge,
        settings=settings,
        metrics=metrics,
        tokens=tokens,
        metrics_tokens=[settings.metrics_token.encode()] if settings.metrics_token else tokens,
        keep_alive=keep_alive or KeepAlive(settings.ping_seconds),
        webhooks=webhooks,
    )
    for blueprint in (
        predictions_api.blueprint,
        models_api.blueprint,
        openai_api.blueprint,
        ops.blueprint,
    ):
        app.register_blueprint(blueprint)
    app.before_request(_check_request)
    app.after_request(_cors)
    app.register_error_handler(BridgeError, _bridge_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _is_stream_route() -> bool:
    """Whether this request is for a stream URL: decided by the route the
    request matched, never by how its path looks."""
    return request.endpoint == predictions_api.STREAM_ENDPOINT


async def _check_request() -> Response | None:
    check_host(request.headers.getlist("Host"), context().settings.allowed_hosts)
    if request.method == "OPTIONS":
        if request.routing_exception is not None:
            raise request.routing_exception  # an unknown path is 404
        return _cors_preflight()
    # Stream URLs carry an unguessable id and need no token, as on
    # Replicate (an EventSource cannot send one).
    if request.path.startswith("/v1/") and not _is_stream_route():
        caller()
    elif request.endpoint == ops.METRICS_ENDPOINT:
        caller(context().metrics_tokens)
    return None


def _cors_answer() -> tuple[str, bool] | None:
    allowed = context().settings.cors_allow_origins
    return cors_origin(request.headers.get("Origin"), allowed, _is_stream_route())


def _cors_preflight() -> Response:
    response = no_content()
    if _cors_answer() is not None:
        asked = request.headers.get("Access-Control-Request-Headers", "")
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = asked or _CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response


async def _cors(response: Response) -> Response:
    answer = _cors_answer()
    if answer is not None:
        origin, credentials = answer
        response.headers["Access-Control-Allow-Origin"] = origin
        if credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
    if context().settings.cors_allow_origins or _is_stream_route():
        response.vary.add("Origin")
    return response


def _openai_route() -> bool:
    """Whether this request is for OpenAI's API: its errors are OpenAI's
    error object, as its clients read them."""
    return request.blueprint == openai_api.blueprint.name


async def _bridge_error(exc: BridgeError) -> Response:
    response = openai_api.error_for(exc) if _openai_route() else problem(exc.problem())
    if isinstance(exc, RetryLater):
        response.headers["Retry-After"] = str(context().settings.retry_after_seconds)
    if isinstance(exc, openai_api.Failed):
        response.headers["x-should-retry"] = "false"
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="bridge"'
    return response


async def _http_error(exc: HTTPException) -> Response:
    if _openai_route():
        return openai_api.error_response(exc.code or 500, exc.description or exc.name)
    return problem({"title": exc.name, "detail": exc.description, "status": exc.code})
