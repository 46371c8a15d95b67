"""Replicate's predictions API: create (by version, model or deployment),
list, get, cancel, and each prediction's stream."""

from __future__ import annotations

from functools import partial
from typing import Any
from urllib.parse import urlencode

import msgspec
import trio
from quart import Blueprint, Response, request

from ..core.models import ModelEntry
from ..core.predictions import Prediction
from ..core.service import Bridge
from ..errors import BadRequest, Gone, InvalidInput
from ..validation import stream_asked, validate_webhook
from ..webhooks import WebhookPolicy, tenant_secret
from . import stream
from .common import (
    base_url,
    caller,
    caller_owner,
    context,
    forwarded,
    json_body,
    no_content,
    prediction_response,
    stream_response,
)
from .headers import cancel_after, prefer_wait
from .replicate_json import encode_prediction

__all__ = ["STREAM_ENDPOINT", "blueprint"]

blueprint = Blueprint("predictions", __name__)

#: The fields of a create's body (Replicate's); the model's input is in ``input``.
CREATE_FIELDS = frozenset({"input", "version", "webhook", "webhook_events_filter", "stream"})


async def _render(bridge: Bridge, base: str, prediction: Prediction) -> bytes:
    return await encode_prediction(prediction, base, bridge.offload)


#: The stream route's endpoint: it needs no token (see bridge.http.app).
STREAM_ENDPOINT = "predictions.stream_prediction"


async def _create(
    entry: ModelEntry, body: dict[str, Any], size: int, version: str | None
) -> Response:
    bridge, settings = context().bridge, context().settings
    # Headers are read before anything is created: a bad one must not
    # leave a prediction running behind an error.
    direct = "text/event-stream" in request.headers.get("Accept", "")
    wait = prefer_wait(request.headers.get("Prefer"), settings.max_wait_seconds)
    deadline = cancel_after(request.headers.get("Cancel-After"))
    # The request's own options, checked in the order errors are reported,
    # before the input (bridge.create) and before anything is created.
    bridge.check_open()
    webhook = body.get("webhook")
    events_filter = validate_webhook(webhook, body.get("webhook_events_filter"))
    webhooks = context().webhooks
    if webhook is not None:
        await (webhooks.policy if webhooks is not None else WebhookPolicy()).check(webhook)
    streamed = stream_asked(body.get("stream"))
    try:
        prediction = await bridge.create(
            entry,
            body.get("input", {}),
            version=version,
            stream=streamed,
            cancel_after=deadline,
            owner=caller_owner(),
            input_size=size,
            forwarded=forwarded(entry),
        )
    except InvalidInput as exc:
        # {"prompt": "x"} for {"input": {"prompt": "x"}}: say so.
        unwrapped = sorted(str(k)[:40] for k in body if k not in CREATE_FIELDS)[:5]
        if "input" in body or not unwrapped:
            raise
        hint = f"; {', '.join(unwrapped)} given beside input, not in it"
        raise InvalidInput(f'{exc}{hint}: send {{"input": {{...}}}}', exc.invalid_fields) from None
    if webhook and webhooks is not None:
        # Its webhooks carry the URLs this request was given.
        secret = tenant_secret(webhooks.secret, caller())
        render = partial(_render, bridge, base_url())
        webhooks.start(prediction, webhook, events_filter, render, secret)
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


@blueprint.post("/v1/predictions")
async def create_prediction() -> Response:
    body, size = await json_body()
    ref = body.get("version")
    if not isinstance(ref, str) or not ref:
        raise BadRequest('"version" is required: a version id or "owner/name:version"')
    entry, version = await context().bridge.catalog.resolve_version(ref)
    return await _create(entry, body, size, version)


@blueprint.post("/v1/models/<owner>/<name>/predictions")
async def create_model_prediction(owner: str, name: str) -> Response:
    body, size = await json_body()
    return await _create(context().bridge.catalog.model(f"{owner}/{name}"), body, size, None)


@blueprint.post("/v1/deployments/<owner>/<name>/predictions")
async def create_deployment_prediction(owner: str, name: str) -> Response:
    body, size = await json_body()
    return await _create(context().bridge.catalog.deployment(f"{owner}/{name}"), body, size, None)


@blueprint.get("/v1/predictions")
async def list_predictions() -> Response:
    bridge, base = context().bridge, base_url()
    try:
        page = await bridge.store.page(
            request.args.get("cursor"), caller_owner(), partial(_render, bridge, base)
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None

    def link(cursor: str | None) -> str | None:
        return f"{base}/v1/predictions?{urlencode({'cursor': cursor})}" if cursor else None

    # The results are encoded already: put in the page as they are.
    body = msgspec.json.encode(
        {
            "previous": link(page.previous),
            "next": link(page.next),
            "results": [msgspec.Raw(result) for result in page.results],
        }
    )
    return Response(body, content_type="application/json")


@blueprint.get("/v1/predictions/<prediction_id>")
async def get_prediction(prediction_id: str) -> Response:
    return await prediction_response(await context().bridge.get(prediction_id, caller_owner()))


@blueprint.post("/v1/predictions/<prediction_id>/cancel")
async def cancel_prediction(prediction_id: str) -> Response:
    # No body is read: clients send none, or an empty one.
    bridge = context().bridge
    prediction = await bridge.get(prediction_id, caller_owner())
    return await prediction_response(await bridge.cancel_and_wait(prediction))


@blueprint.get("/v1/predictions/<prediction_id>/stream")
async def stream_prediction(prediction_id: str) -> Response:
    prediction = await context().bridge.get(prediction_id)
    if prediction.data_removed:
        raise Gone(f"prediction {prediction_id}'s output was removed (data_removed)")
    if request.method == "HEAD":
        # The headers a GET would get, at once: a HEAD never waits for
        # the prediction (nor holds what is pipelined behind it).
        return stream.head_response()
    start = 0
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id:
        events = prediction.events
        try:
            start = events.index_after(last_event_id)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if events.closed and start >= len(events):
            # The client has seen the end: 204 tells an EventSource to
            # stop reconnecting (an empty 200 would have it reconnect
            # forever).
            return no_content()
        if start > len(events):
            raise BadRequest(
                f"Last-Event-ID {last_event_id!r} is past the end of this "
                f"prediction's events ({len(events)} so far)"
            )
    return stream_response(prediction, start)
