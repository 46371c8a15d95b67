"""HTTP routes: thin, each mapping a request to one call on :class:`Bridge`.

The API is Replicate's predictions API; errors are
``application/problem+json``; the stream is SSE framed by :mod:`bridge.sse`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from . import sse
from .errors import BadRequest, BridgeError
from .predictions import EventLog, Prediction
from .service import Bridge

__all__ = ["create_app"]

_SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def _problem(body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body),
        status=body["status"],
        content_type="application/problem+json",
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


async def _json_body() -> dict[str, Any]:
    raw = await request.get_data(as_text=False)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


async def sse_body(events: EventLog, start: int, keepalive: float) -> AsyncIterator[bytes]:
    """The stream from event *start* on: everything already logged at once,
    then each new batch as it comes, a keep-alive comment when idle, and the
    end of the response after the log closes (after ``done``)."""
    cursor = start
    while True:
        batch = events.read(cursor)
        if batch:
            cursor += len(batch)
            yield b"".join(sse.encode_event(e.name, e.id, e.data) for e in batch)
        elif events.closed:
            return
        else:
            with trio.move_on_after(keepalive) as idle:
                await events.wait_beyond(cursor)
            if idle.cancelled_caught:
                yield sse.KEEPALIVE


def create_app(bridge: Bridge) -> QuartTrio:
    """The Quart-Trio app serving *bridge*."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = bridge.settings.max_body_bytes
    settings = bridge.settings

    def base_url() -> str:
        return settings.public_url or request.host_url.rstrip("/")

    def prediction_response(prediction: Prediction, status: int = 200) -> Response:
        return _json(prediction.to_json(base_url()), status)

    @app.errorhandler(BridgeError)
    async def bridge_error(exc: BridgeError) -> Response:
        return _problem(exc.problem())

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return _problem({"title": exc.name, "detail": exc.description, "status": exc.code})

    @app.post("/v1/predictions")
    async def create_prediction() -> Response:
        body = await _json_body()
        ref = body.get("version")
        if not isinstance(ref, str) or not ref:
            raise BadRequest('"version" is required: a version id or "owner/name:version"')
        entry, version = await bridge.resolve_version(ref)
        prediction = await bridge.create(entry, body.get("input", {}), version=version)
        return prediction_response(prediction, 201)

    @app.post("/v1/models/<owner>/<name>/predictions")
    async def create_model_prediction(owner: str, name: str) -> Response:
        body = await _json_body()
        entry = bridge.model(f"{owner}/{name}")
        prediction = await bridge.create(entry, body.get("input", {}))
        return prediction_response(prediction, 201)

    @app.get("/v1/predictions/<prediction_id>")
    async def get_prediction(prediction_id: str) -> Response:
        return prediction_response(bridge.get(prediction_id))

    @app.get("/v1/predictions/<prediction_id>/stream")
    async def stream_prediction(prediction_id: str) -> Response:
        prediction = bridge.get(prediction_id)
        start = 0
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id:
            try:
                start = prediction.events.index_after(last_event_id)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        response = Response(
            sse_body(prediction.events, start, settings.keepalive_seconds),
            status=200,
            content_type="text/event-stream",
            headers=_SSE_HEADERS,
        )
        response.timeout = None  # Quart would cut the stream at 60 s
        return response

    @app.get("/health")
    async def health() -> Response:
        models = {}
        for entry in bridge.models.values():
            with trio.move_on_after(1.0):
                models[entry.name] = await bridge.grpc.check_health(entry.next_target())
            models.setdefault(entry.name, "UNAVAILABLE")
        ready = all(status == "SERVING" for status in models.values())
        return _json({"status": "ok" if ready else "degraded", "ready": ready, "models": models})

    return app
