"""HTTP routes: thin, each mapping a request to one call on :class:`Bridge`.

The API is Replicate's predictions API; errors are
``application/problem+json``; the stream is SSE framed by :mod:`bridge.sse`.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import trio
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from . import stream, strictjson
from .errors import (
    BackendUnavailable,
    BadRequest,
    BridgeError,
    Gone,
    NotFound,
    RetryLater,
    Unauthorized,
)
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .models import ModelEntry, deployment_json
from .openapi import spec
from .predictions import Prediction
from .service import Bridge
from .validation import parse_json
from .webhooks import tenant_secret

__all__ = ["create_app"]

_CORS_HEADERS = "Authorization, Content-Type, Prefer, Cancel-After, Last-Event-ID, Cache-Control"
_CORS_EXPOSE = "Location, Preference-Applied, Retry-After"


def _no_content() -> Response:
    """A 204: no body, so no Content-Type (Quart would say text/html)."""
    response = Response(b"", status=204)
    del response.headers["Content-Type"]
    return response


def _problem(body: dict[str, Any]) -> Response:
    return Response(
        strictjson.dumps(body),
        status=body["status"],
        content_type="application/problem+json",
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(strictjson.dumps(body), status=status, content_type="application/json")


async def _json_body(bridge: Bridge) -> tuple[dict[str, Any], int]:
    """The request's JSON object (a large one parsed in a worker thread),
    and its size in bytes."""
    raw = await request.get_data(as_text=False) or b"{}"
    body = await bridge.offload(len(raw), parse_json, raw)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body, len(raw)


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait(?:\s*=\s*(\d+))?(?=$|[,;\s])", re.IGNORECASE)


def prefer_wait(header: str | None, longest: float) -> float | None:
    """Seconds asked for by ``Prefer: wait`` / ``wait=N``, at least 1 and at
    most *longest*; None if the header asks for no wait."""
    match = _PREFER_WAIT.search(header or "")
    if match is None:
        return None
    digits = match[1].lstrip("0") if match[1] else None
    # More digits than any wait needs is the longest (int() of thousands
    # of digits raises, and costs quadratic time).
    seconds = longest if digits is None or len(digits) > 9 else int(digits or 0)
    return float(min(max(seconds, 1), longest))


_DURATION = re.compile(
    r"(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9}(?:\.\d{1,6})?)s)?", re.IGNORECASE
)

#: What ``Cancel-After`` may ask for: at least a second, at most a day.
CANCEL_AFTER_RANGE = (1.0, 86400.0)


def cancel_after(header: str | None) -> float | None:
    """Seconds from ``Cancel-After`` (``30s``, ``5m``, ``1h30m``, ``90``:
    hours, minutes and seconds, or plain seconds); None if absent. Raises
    :class:`BadRequest` for anything else, or out of range."""
    if header is None:
        return None
    text = header.strip()
    plain = re.fullmatch(r"\d{1,9}(?:\.\d{1,6})?", text)
    parts = None if plain else _DURATION.fullmatch(text)
    if plain:
        seconds = float(text)
    elif parts is not None and text:
        hours, minutes, secs = (float(p) if p else 0.0 for p in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise BadRequest(
            f"Cancel-After {header[:40]!r} is not a duration: write seconds (90) or "
            "hours, minutes and seconds (30s, 5m, 1h30m)"
        )
    low, high = CANCEL_AFTER_RANGE
    if not low <= seconds <= high:
        raise BadRequest(
            f"Cancel-After must be from {low:g} s to {high:g} s (24h); {header[:40]!r} "
            f"is {seconds:g} s"
        )
    return seconds


#: A Host header: a name, an IPv4 address or a bracketed IPv6 one, and an
#: optional port (RFC 9110 7.2, RFC 3986 3.2.2).
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?")


def check_host(values: list[str], allowed: tuple[str, ...]) -> None:
    """Raise :class:`BadRequest` unless *values* (the request's Host
    headers) are none or empty, or one valid ``host[:port]`` that *allowed* (if any
    are) names: ``example.com`` exactly, ``.example.com`` it and any name
    under it (as Django's ``ALLOWED_HOSTS``)."""
    values = [v for v in values if v]  # an empty Host is none (RFC 9112 3.2)
    if not values:
        return
    match = _HOST.fullmatch(values[0]) if len(values) == 1 else None
    if match is None or (match[2] is not None and int(match[2]) > 65535):
        raise BadRequest(f"Host {values[0][:80]!r} is not a valid host[:port]")
    if not allowed:
        return
    name = match[1].lower().rstrip(".")
    for pattern in allowed:
        if name == pattern.lstrip(".") or (pattern.startswith(".") and name.endswith(pattern)):
            return
    raise BadRequest(f"Host {name!r} is not one this bridge serves ([server] allowed_hosts)")


_request_ends: ContextVar[list[Callable[[], object]]] = ContextVar("request_ends")


def when_request_ends(callback: Callable[[], object]) -> None:
    """Call *callback* once the current request is over, however it ends:
    answered, its client gone (before, during or after the answer's
    headers), or the server shutting down."""
    _request_ends.get().append(callback)


class _HTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's request handling, with the last message of a response
    sent under a shield.

    Hypercorn handles that message all the way to the connection's fate:
    it ends the response, tells the app ``http.disconnect``, then either
    recycles the connection (restarting its keep-alive timer) or closes it
    (``Connection: close``, HTTP/1.0). Quart-Trio cancels the request's
    nursery as soon as it receives that disconnect, which lands while the
    same task is still inside hypercorn's send, so neither the recycle nor
    the close ever happened: every connection stayed open for as long as the
    client liked. The shielded part is bounded: an empty body, a chunked
    terminator and a socket close (hypercorn shields its writes anyway).

    It also runs the callbacks given to :func:`when_request_ends`.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        async def send_last_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        callbacks: list[Callable[[], object]] = []
        token = _request_ends.set(callbacks)
        try:
            await super().__call__(receive, send_last_shielded)
        finally:
            _request_ends.reset(token)
            for callback in callbacks:
                callback()


class _App(QuartTrio):
    asgi_http_class = _HTTPConnection


def create_app(bridge: Bridge) -> QuartTrio:
    """The Quart-Trio app serving *bridge*."""
    app = _App(__name__, static_folder="static", static_url_path="/static")
    api_spec = spec()
    metrics = Metrics(bridge)
    app.config["MAX_CONTENT_LENGTH"] = bridge.settings.max_body_bytes
    # The one timeout for a slow body (hypercorn's read_timeout stays off:
    # it would also cut a stream's connection, where the client sends
    # nothing): 408, then the connection closes.
    app.config["BODY_TIMEOUT"] = bridge.settings.body_timeout_seconds
    settings = bridge.settings
    token_bytes = [t.encode() for t in sorted(settings.auth_tokens)]
    # /metrics: its own token if set, else the API's tokens (none: open).
    metrics_tokens = [settings.metrics_token.encode()] if settings.metrics_token else token_bytes

    def base_url() -> str:
        """Where this request reached the bridge: ``public_url`` if set, else
        its checked Host (see :func:`check_host`), else the address the
        bridge listens on (an HTTP/1.0 request may send no Host)."""
        if settings.public_url:
            return settings.public_url
        host = request.headers.get("Host")
        return f"{request.scheme}://{host}" if host else bridge.base_url

    async def prediction_response(
        prediction: Prediction, status: int = 200, replace: dict[str, Any] | None = None
    ) -> Response:
        """*prediction*'s JSON, with *replace*'s fields replaced."""
        body = await bridge.encode(prediction, base_url(), **(replace or {}))
        return Response(body, status=status, content_type="application/json")

    @app.errorhandler(BridgeError)
    async def bridge_error(exc: BridgeError) -> Response:
        response = _problem(exc.problem())
        if isinstance(exc, RetryLater):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="bridge"'
        return response

    def caller(accepted: list[bytes] | None = None) -> str | None:
        """The caller's token, checked against *accepted* (by default the
        [auth] tokens); None when there are none to check against."""
        accepted = token_bytes if accepted is None else accepted
        if not accepted:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        sent = token.strip().encode()
        # Compared in constant time with every configured token (no early
        # exit), so timing tells nothing of how much of a token matched.
        match = False
        for known in accepted:
            match |= hmac.compare_digest(sent, known)
        if scheme.lower() not in ("bearer", "token") or not match:
            raise Unauthorized("send Authorization: Bearer <token> with a valid token")
        return sent.decode()

    def is_stream_route() -> bool:
        """Whether this request is for a stream URL: decided by the route the
        request matched, never by how its path looks."""
        return request.endpoint == "stream_prediction"

    @app.before_request
    async def authenticate() -> Response | None:
        check_host(request.headers.getlist("Host"), settings.allowed_hosts)
        if request.method == "OPTIONS":
            if request.routing_exception is not None:
                raise request.routing_exception  # an unknown path is 404
            return cors_preflight()
        # Stream URLs carry an unguessable id and need no token, as on
        # Replicate (an EventSource cannot send one).
        if request.path.startswith("/v1/") and not is_stream_route():
            caller()
        elif request.endpoint == "prometheus":
            caller(metrics_tokens)
        return None

    def cors_origin() -> tuple[str, bool] | None:
        """The ``Access-Control-Allow-Origin`` for this request and whether
        credentials are allowed with it; None: no CORS answer.

        Stream URLs are capability URLs (130 random bits, no token), so
        they answer any origin, reflected with credentials: the seed's
        ``new EventSource(url, {withCredentials: true})`` works from any
        page. Everything else follows ``[cors] allow_origins``: a listed
        origin is reflected with credentials; ``"*"`` lets any other origin
        read answers, as ``*`` without credentials, never reflected."""
        origin = request.headers.get("Origin")
        if not origin:
            return None
        allowed = settings.cors_allow_origins
        if is_stream_route() or origin.rstrip("/") in allowed:
            return origin, True
        if "*" in allowed:
            return "*", False
        return None

    def cors_preflight() -> Response:
        response = _no_content()
        if cors_origin() is not None:
            asked = request.headers.get("Access-Control-Request-Headers", "")
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = asked or _CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    @app.after_request
    async def cors(response: Response) -> Response:
        answer = cors_origin()
        if answer is not None:
            origin, credentials = answer
            response.headers["Access-Control-Allow-Origin"] = origin
            if credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        if settings.cors_allow_origins or is_stream_route():
            response.vary.add("Origin")
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _problem({"title": exc.name, "detail": exc.description, "status": exc.code})

    def stream_response(
        prediction: Prediction, start: int = 0, *, owned: bool = False, status: int = 200
    ) -> Response:
        """The SSE response for *prediction*. A stream that *owned* it holds it
        for the request's lifetime: if the request ends before the
        prediction, however it ends, the prediction is cancelled (a finished
        one stays as it is)."""
        if owned:
            when_request_ends(lambda: bridge.cancel(prediction))
        return stream.stream_response(
            prediction.events,
            start,
            keepalive=settings.keepalive_seconds,
            clients=metrics.stream_clients,
            status=status,
            location=f"{base_url()}/v1/predictions/{prediction.id}" if owned else None,
        )

    async def create(
        entry: ModelEntry, body: dict[str, Any], size: int, version: str | None
    ) -> Response:
        # Headers are read before anything is created: a bad one must not
        # leave a prediction running behind an error.
        direct = "text/event-stream" in request.headers.get("Accept", "")
        wait = prefer_wait(request.headers.get("Prefer"), settings.max_wait_seconds)
        deadline = cancel_after(request.headers.get("Cancel-After"))
        prediction = await bridge.create(
            entry,
            body.get("input", {}),
            version=version,
            webhook=body.get("webhook"),
            webhook_events_filter=body.get("webhook_events_filter"),
            stream=body.get("stream"),
            cancel_after=deadline,
            owner=caller(),
            input_size=size,
            base_url=base_url(),
        )
        if direct:
            # The OpenAI-style use: this response is the stream, and it owns
            # the prediction.
            return stream_response(prediction, owned=True, status=201)
        if wait is None:
            return await prediction_response(prediction, 201)
        with trio.move_on_after(wait):
            await prediction.events.wait_closed()
        # Replicate's clients read any status but "starting" as final here,
        # and then poll with output_iterator(), which skips the output
        # already in this answer: so one still running shows as a starting
        # prediction, with no output yet. Polling then yields it all.
        running = {"status": "starting", "output": None, "started_at": None}
        replace = {} if prediction.done else running
        response = await prediction_response(prediction, 201, replace)
        response.headers["Preference-Applied"] = "wait"
        return response

    @app.post("/v1/predictions")
    async def create_prediction() -> Response:
        body, size = await _json_body(bridge)
        ref = body.get("version")
        if not isinstance(ref, str) or not ref:
            raise BadRequest('"version" is required: a version id or "owner/name:version"')
        entry, version = await bridge.resolve_version(ref)
        return await create(entry, body, size, version)

    @app.post("/v1/models/<owner>/<name>/predictions")
    async def create_model_prediction(owner: str, name: str) -> Response:
        body, size = await _json_body(bridge)
        return await create(bridge.model(f"{owner}/{name}"), body, size, None)

    @app.post("/v1/deployments/<owner>/<name>/predictions")
    async def create_deployment_prediction(owner: str, name: str) -> Response:
        body, size = await _json_body(bridge)
        return await create(bridge.deployment(f"{owner}/{name}"), body, size, None)

    async def deployment_response(name: str) -> dict[str, Any]:
        entry = bridge.deployment(name)
        if await bridge.try_describe(entry) is None:
            raise BackendUnavailable(f"the backend of {entry.name} cannot say what it serves")
        return deployment_json(name, entry, bridge.started_at)

    @app.get("/v1/deployments/<owner>/<name>")
    async def get_deployment(owner: str, name: str) -> Response:
        return _json(await deployment_response(f"{owner}/{name}"))

    @app.get("/v1/deployments")
    async def list_deployments() -> Response:
        results = []
        for name, deployment in settings.deployments.items():
            if await bridge.known_info(bridge.models[deployment.model]) is not None:
                results.append(await deployment_response(name))
        return _json({"previous": None, "next": None, "results": results})

    @app.get("/v1/predictions")
    async def list_predictions() -> Response:
        base = base_url()
        try:
            page = await bridge.page(
                request.args.get("cursor"),
                caller(),
                lambda p: bridge.encode(p, base),
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None

        def link(cursor: str | None) -> str:
            url = f"{base}/v1/predictions?{urlencode({'cursor': cursor})}" if cursor else None
            return json.dumps(url)

        body = b'{"previous": %b, "next": %b, "results": [%b]}' % (
            link(page.previous).encode(),
            link(page.next).encode(),
            b", ".join(page.results),
        )
        return Response(body, content_type="application/json")

    @app.get("/v1/predictions/<prediction_id>")
    async def get_prediction(prediction_id: str) -> Response:
        return await prediction_response(bridge.get(prediction_id, caller()))

    @app.post("/v1/predictions/<prediction_id>/cancel")
    async def cancel_prediction(prediction_id: str) -> Response:
        # No body is read: clients send none, or an empty one.
        prediction = bridge.get(prediction_id, caller())
        return await prediction_response(await bridge.cancel_and_wait(prediction))

    @app.get("/v1/predictions/<prediction_id>/stream")
    async def stream_prediction(prediction_id: str) -> Response:
        prediction = bridge.get(prediction_id)
        if prediction.data_removed:
            raise Gone(f"prediction {prediction_id}'s output was removed (data_removed)")
        if request.method == "HEAD":
            # The headers a GET would get, at once: a HEAD never waits for
            # the prediction (nor holds what is pipelined behind it).
            return stream.head_response()
        start = 0
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id:
            try:
                start = prediction.events.index_after(last_event_id)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            events = prediction.events
            if events.closed and start >= len(events):
                # The client has seen the end: 204 tells an EventSource to
                # stop reconnecting (an empty 200 would have it reconnect
                # forever).
                return _no_content()
            if start > len(events):
                raise BadRequest(
                    f"Last-Event-ID {last_event_id!r} is past the end of this "
                    f"prediction's events ({len(events)} so far)"
                )
        return stream_response(prediction, start)

    @app.get("/v1/models")
    async def list_models() -> Response:
        base = base_url()
        for entry in bridge.models.values():
            await bridge.known_info(entry)
        results = [entry.model_json(base) for entry in bridge.models.values()]
        return _json({"previous": None, "next": None, "results": results})

    @app.get("/")
    async def page() -> Response:
        return await app.send_static_file("index.html")

    @app.get("/v1/models/<owner>/<name>")
    async def get_model(owner: str, name: str) -> Response:
        entry = bridge.model(f"{owner}/{name}")
        await bridge.try_describe(entry)
        return _json(entry.model_json(base_url()))

    @app.get("/v1/models/<owner>/<name>/versions/<version_id>")
    async def get_version(owner: str, name: str, version_id: str) -> Response:
        entry = bridge.model(f"{owner}/{name}")
        if await bridge.try_describe(entry) is None:
            raise BackendUnavailable(f"the backend of {entry.name} cannot say what it serves")
        version = entry.version_json()
        if version is None or version["id"] != version_id:
            raise NotFound(f"version {version_id} of {entry.name} is not served here")
        return _json(version)

    @app.get("/v1/webhooks/default/secret")
    async def webhook_secret() -> Response:
        if bridge.webhooks is None:
            raise NotFound("webhooks are not enabled")
        # Each token has its own (Replicate keeps one per account), so no
        # tenant can sign deliveries that another's receiver would accept.
        return _json({"key": tenant_secret(bridge.webhooks.secret, caller())})

    @app.get("/health")
    async def health() -> Response:
        models = dict.fromkeys(bridge.models, "UNAVAILABLE")

        async def check(entry: ModelEntry) -> None:
            with trio.move_on_after(1.0):
                status = await bridge.grpc.check_health(entry.next_target())
                # A bridge.sdk backend says NOT_SERVING while setup() runs.
                models[entry.name] = "LOADING" if status == "NOT_SERVING" else status

        # All at once: the answer takes as long as the slowest backend, not
        # as long as all of them together.
        async with trio.open_nursery() as nursery:
            for entry in bridge.models.values():
                nursery.start_soon(check, entry)
        if bridge.draining:
            # Not ready: load balancers stop sending; running streams go on.
            return _json({"status": "draining", "ready": False, "models": models}, 503)
        ready = all(status == "SERVING" for status in models.values())
        return _json({"status": "ok" if ready else "degraded", "ready": ready, "models": models})

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(api_spec)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), content_type=CONTENT_TYPE_LATEST)

    return app
