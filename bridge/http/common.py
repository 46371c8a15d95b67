"""What every route shares: the bridge it serves, and the answers it gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from quart import Response, current_app, request

from .. import strictjson
from .._compat.quart_trio import when_request_ends
from ..config import METADATA_VALUE, Settings
from ..core.models import ModelEntry
from ..core.predictions import Prediction, owner_of
from ..core.service import Bridge
from ..errors import BadRequest
from ..metrics import Metrics
from ..validation import parse_json
from ..webhooks import WebhookSender
from . import stream
from .headers import bearer_token
from .replicate_json import encode_prediction, prediction_url
from .stream import KeepAlive

__all__ = [
    "Context",
    "base_url",
    "caller",
    "caller_owner",
    "context",
    "json_body",
    "json_response",
    "no_content",
    "prediction_response",
    "problem",
    "stream_response",
]


@dataclass(frozen=True)
class Context:
    """The app's state, set once by :func:`bridge.http.create_app`."""

    bridge: Bridge
    settings: Settings
    metrics: Metrics
    #: The [auth] tokens (none: the API is open).
    tokens: list[bytes]
    #: Who may read /metrics: its own token if set, else the API's.
    metrics_tokens: list[bytes]
    #: The streams' keep-alive clock (run by whoever serves the app).
    keep_alive: KeepAlive
    #: Who delivers webhooks (None: none are delivered).
    webhooks: WebhookSender | None = None


def context() -> Context:
    """The current app's :class:`Context`."""
    return cast(Context, current_app.extensions["bridge"])


def no_content() -> Response:
    """A 204: no body, so no Content-Type (Quart would say text/html)."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response


def problem(body: dict[str, Any]) -> Response:
    return Response(
        strictjson.dumps(body), status=body["status"], content_type="application/problem+json"
    )


def json_response(body: Any, status: int = 200) -> Response:
    return Response(strictjson.dumps(body), status=status, content_type="application/json")


async def json_body() -> tuple[dict[str, Any], int]:
    """The request's JSON object (a large one parsed in a worker thread),
    and its size in bytes."""
    raw = await request.get_data(as_text=False) or b"{}"
    body = await context().bridge.offload(len(raw), parse_json, raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body, len(raw)


def base_url() -> str:
    """Where this request reached the bridge: ``public_url`` if set, else
    its Host (checked before any route runs), else the address the bridge
    listens on (an HTTP/1.0 request may send no Host)."""
    bridge = context().bridge
    if bridge.settings.public_url:
        return bridge.settings.public_url
    host = request.headers.get("Host")
    return f"{request.scheme}://{host}" if host else bridge.base_url


def caller(accepted: list[bytes] | None = None) -> str | None:
    """The caller's token, checked against *accepted* (by default the
    [auth] tokens); None when there are none to check against."""
    tokens = context().tokens if accepted is None else accepted
    return bearer_token(request.headers.get("Authorization"), tokens)


def caller_owner() -> str | None:
    """The caller as the predictions it creates record it (their owner:
    :func:`~bridge.core.predictions.owner_of` its token); None without auth."""
    token = caller()
    return None if token is None else owner_of(token)


#: The most a request's forwarded headers may carry (names and values):
#: gRPC's default bound on a call's metadata, beyond which a service
#: refuses the call.
MAX_FORWARDED_BYTES = 8192


def forwarded(entry: ModelEntry) -> tuple[tuple[str, str], ...]:
    """The request headers *entry* forwards to its backend (its
    ``forward_headers``), as gRPC metadata: the ones the request has."""
    names = entry.settings.forward_headers
    if not names:
        return ()
    headers = request.headers
    pairs = tuple((name, value) for name in names for value in headers.getlist(name))
    for name, value in pairs:
        if not METADATA_VALUE.match(value):
            raise BadRequest(
                f"header {name}: its value goes to the model as gRPC metadata, "
                "which is printable ASCII"
            )
    if sum(len(name) + len(value) for name, value in pairs) > MAX_FORWARDED_BYTES:
        raise BadRequest(
            f"the headers forwarded to the model ({', '.join(names)}) are over "
            f"{MAX_FORWARDED_BYTES} bytes, gRPC's default bound on metadata"
        )
    return pairs


async def prediction_response(
    prediction: Prediction, status: int = 200, replace: dict[str, Any] | None = None
) -> Response:
    """*prediction*'s JSON, with *replace*'s fields replaced."""
    body = await encode_prediction(
        prediction, base_url(), context().bridge.offload, **(replace or {})
    )
    return Response(body, status=status, content_type="application/json")


def stream_response(
    prediction: Prediction, start: int = 0, *, owned: bool = False, status: int = 200
) -> Response:
    """The SSE response for *prediction* from event *start* on. A stream
    that *owned* it holds it for the request's lifetime: if the request ends
    before the prediction, however it ends, the prediction is cancelled (a
    finished one stays as it is)."""
    state = context()
    if owned:
        bridge = state.bridge
        when_request_ends(lambda: bridge.cancel(prediction))
    body = stream.sse_body(prediction.events, start, state.keep_alive, state.metrics.stream_clients)
    location = prediction_url(base_url(), prediction.id) if owned else None
    return stream.sse_response(body, status=status, location=location)
