"""OpenAI's API over the same predictions: chat completions, completions and
responses, streamed or not.

Each request is an ordinary prediction (``chatcmpl-<id>``, ``cmpl-<id>``,
``resp_<id>``: gettable, listed and cancellable by its id), created by
:meth:`bridge.core.service.Bridge.create` with the input
:mod:`bridge.http.openai_input` maps from the body. The request owns it: a
client that hangs up, streaming or waiting, cancels it (the backend sees
CANCELLED), as the direct streaming create does.

A stream follows the prediction's log as records
(:func:`bridge.http.stream.follow`): every output chunk that came in
one batch becomes one delta (a batch larger than a slice, several), in
OpenAI's framing (a :class:`_Shape` per API). Errors are OpenAI's error
object (see :func:`error_for`); one after the stream began is a ``data: {"error": ...}`` line (a
``response.failed`` event for responses), and the stream ends.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
from prometheus_client import Gauge
from quart import Blueprint, Response, request

from .. import sse
from .._compat.quart_trio import when_request_ends
from ..core.events import SLICE_BYTES, Record
from ..core.models import ModelEntry
from ..core.predictions import Prediction, Status
from ..errors import BackendUnavailable, BridgeError, InvalidInput, NotFound
from . import schemas, stream
from .common import caller_owner, context, forwarded, json_body
from .headers import cancel_after
from .openai_input import (
    Asked,
    BadParam,
    chat_input,
    completion_input,
    limit_of,
    mapped,
    openai_names,
    responses_input,
    takes_text,
)

__all__ = ["Failed", "blueprint", "error_for", "error_response"]

blueprint = Blueprint("openai", __name__)

_CANCELED = "the prediction was canceled"


class ModelNotFound(NotFound):
    """``model`` names no model or deployment served here."""

    code = "model_not_found"


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> Response:
    """OpenAI's error object with *status*: the shape OpenAI's clients read."""
    if status == 401:
        kind, code = "authentication_error", "invalid_api_key"
    elif status == 429:
        kind, code = "rate_limit_error", "rate_limit_exceeded"
    elif status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return Response(msgspec.json.encode(body), status=status, content_type="application/json")


def error_for(exc: BridgeError) -> Response:
    """*exc* as OpenAI's error object (a schema failure: a 400 naming the
    input field, as OpenAI's own validation answers)."""
    if isinstance(exc, InvalidInput):
        field = exc.invalid_fields[0].get("field") if exc.invalid_fields else None
        return error_response(400, exc.detail, field)
    return error_response(
        exc.status, exc.detail, getattr(exc, "param", None), getattr(exc, "code", None)
    )


# -- creating ------------------------------------------------------------------


def _entry(name: Any) -> ModelEntry:
    if not isinstance(name, str) or not name:
        raise BadParam("model", "model is required: a model or deployment name")
    catalog = context().bridge.catalog
    if name in catalog.models:
        return catalog.model(name)
    try:
        return catalog.deployment(name)
    except NotFound:
        raise ModelNotFound(f"the model {name!r} does not exist here") from None


async def _create(translate: Callable[[dict[str, Any], dict[str, Any]], Asked]) -> Started:
    """The prediction a request asks for, owned by the request. (What is
    kept of the request is a few fields: its body is let go of here.)"""
    bridge = context().bridge
    deadline = cancel_after(request.headers.get("Cancel-After"))
    body, size = await json_body()
    entry = _entry(body.get("model"))
    info = await bridge.catalog.info(entry)
    if info is None:
        raise BackendUnavailable(f"the backend of {entry.name} cannot say what it serves")
    names = openai_names(info.input_schema, entry.settings.openai)
    asked = mapped(translate, body, info.input_schema, names)
    # The rule a user cannot guess: where the prompt goes.
    hint = (
        f"{entry.name} has no input named prompt or messages: its config can say which "
        f'input OpenAI\'s prompt goes to ([models."{entry.name}".openai] prompt = "<input>")'
    )
    if not asked.input and not takes_text(info.input_schema, names):
        param = next((p for p in ("messages", "prompt", "input") if p in body), "messages")
        raise BadParam(param, f"the prompt would go nowhere: {hint}")
    try:
        prediction = await bridge.create(
            entry,
            asked.input,
            cancel_after=deadline,
            owner=caller_owner(),
            input_size=size,
            forwarded=forwarded(entry),
        )
    except InvalidInput as exc:
        if takes_text(info.input_schema, names):
            raise
        raise InvalidInput(f"{exc}; {hint}", exc.invalid_fields) from None
    when_request_ends(lambda: bridge.cancel(prediction))
    return Started(prediction, asked.stream, asked.include_usage, asked.limit, asked.echo)


@dataclass(frozen=True)
class Started:
    prediction: Prediction
    stream: bool
    include_usage: bool
    limit: int | None
    echo: dict[str, Any]

    @property
    def usage(self) -> tuple[int, int]:
        return _token_counts(self.prediction)

    @property
    def finish_reason(self) -> Finish:
        """``length`` when the model stopped at the token limit it was given."""
        return _finish_reason(self.prediction, self.limit)

    @property
    def failure(self) -> str | None:
        """Why it did not succeed, once it ended (None if it did)."""
        status = self.prediction.status
        if status is Status.FAILED:
            return self.prediction.error or "the prediction failed"
        return _CANCELED if status is Status.CANCELED else None


#: Why a choice ended.
Finish = Literal["stop", "length"]


def _finish_reason(p: Prediction, limit: int | None) -> Finish:
    return "length" if limit is not None and _token_counts(p)[1] >= limit else "stop"


#: The largest token count taken from a model's metrics (more is a
#: backend's error, not a count).
MAX_TOKEN_COUNT = 1 << 40


def _token_counts(p: Prediction) -> tuple[int, int]:
    """(prompt tokens, completion tokens): the model's own counts (metrics
    ``input_token_count``, ``output_token_count``) when it sent them as
    whole numbers from 0 to :data:`MAX_TOKEN_COUNT`, else 0 and the output
    chunks."""
    return (
        _count(p.metrics.get("input_token_count"), 0),
        _count(p.metrics.get("output_token_count"), p.events.output_count),
    )


def _count(value: float | None, otherwise: int) -> int:
    if value is None or not 0 <= value <= MAX_TOKEN_COUNT or value != int(value):
        return otherwise  # absent, negative, huge, fractional or NaN
    return int(value)


# -- streaming ------------------------------------------------------------------


class _Shape(Protocol):
    """How one API frames a prediction's stream."""

    def opening(self) -> bytes: ...

    def delta(self, text: str) -> bytes: ...

    def ending(self) -> Iterator[bytes]:
        """The end of the stream, in pieces of about a slice at most."""
        ...


def _data(body: Any) -> bytes:
    # JSON escapes every line break: a chunk can never break the frame.
    return sse.data_frame(msgspec.json.encode(body))


def _text(record: Record) -> str:
    return record.data if record.name == "output" else ""


async def _sse(
    started: Started, shape: _Shape, clock: stream.KeepAlive, clients: Gauge
) -> AsyncIterator[bytes]:
    """The stream: a ``: ping`` when quiet (log lines and empty chunks
    write nothing here)."""
    quiet = stream.Quiet(clock.seconds)
    events = started.prediction.events
    with stream.streaming(clients):
        yield shape.opening()
        async for records in stream.follow(events, 0, events.read_records, clock, quiet):
            if records and (text := "".join(map(_text, records))):
                yield shape.delta(text)
            elif quiet.ping_due():
                yield sse.KEEPALIVE
            else:
                continue
            quiet.wrote()
        for piece in shape.ending():
            yield piece


def _stream_response(started: Started, shape: _Shape) -> Response:
    # (The body runs outside the app's context: it is handed what it needs.)
    state = context()
    return stream.sse_response(_sse(started, shape, state.keep_alive, state.metrics.stream_clients))


def _error_line(message: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return _data({"error": error})


async def _ended(started: Started) -> Started:
    """*started* once its prediction ended (a non-streaming answer)."""
    await started.prediction.events.wait_closed()
    failure = started.failure
    if failure is not None:
        raise Failed(failure)
    return started


class Failed(BridgeError):
    """A prediction that failed (or was canceled) before a non-streaming
    answer was sent: answered with ``x-should-retry: false``, which OpenAI's
    clients obey (a retry would be a new prediction, undoing a cancel)."""

    status = 500
    title = "Prediction failed"


async def _answer(p: Prediction, build: Callable[[str], msgspec.Struct]) -> Response:
    """The JSON answer *build* makes of *p*'s output text, in a worker
    thread when the output is large (the snapshot is taken here first)."""
    offload = context().bridge.offload
    snapshot = p.events.snapshot()

    def encode() -> bytes:
        text = "".join(o if isinstance(o, str) else json.dumps(o) for o in snapshot.outputs())
        return msgspec.json.encode(build(text))

    return Response(await offload(p.kept_bytes, encode), content_type="application/json")


# -- chat completions ------------------------------------------------------------


class _Chat:
    """``chat.completion.chunk`` lines, then ``data: [DONE]``."""

    object = "chat.completion.chunk"

    def __init__(self, started: Started) -> None:
        self.started = started
        p = started.prediction
        self.head = {
            "id": f"chatcmpl-{p.id}", "object": self.object,
            "created": int(p.created_at), "model": p.model,
        }  # fmt: skip

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _data({**self.head, "choices": [choice]})

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, text: str) -> bytes:
        return self._chunk({"content": text})

    def ending(self) -> Iterator[bytes]:
        started = self.started
        if started.failure is not None:
            yield _error_line(started.failure)
            return
        out = [self._chunk({}, started.finish_reason)]
        if started.include_usage:
            out.append(_data({**self.head, "choices": [], "usage": _usage(started)}))
        yield b"".join([*out, sse.data_frame(b"[DONE]")])


def _usage(started: Started) -> dict[str, int]:
    prompt, completion = started.usage
    total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


@blueprint.post("/v1/chat/completions")
async def create_chat_completion() -> Response:
    started = await _create(chat_input)
    if started.stream:
        return _stream_response(started, _Chat(started))
    return await _whole(await _ended(started), "chat.completion", "chatcmpl")


async def _whole(started: Started, kind: str, prefix: str) -> Response:
    """The non-streaming answer: one choice, once the prediction ended."""
    p = started.prediction
    id, created, finish = f"{prefix}-{p.id}", int(p.created_at), started.finish_reason
    usage = schemas.Usage(**_usage(started))

    def build(text: str) -> msgspec.Struct:
        if kind == "chat.completion":
            message = schemas.AssistantMessage("assistant", text, None)
            chat = schemas.ChatChoice(0, message, None, finish)
            return schemas.ChatCompletion(id, "chat.completion", created, p.model, [chat], usage)
        choice = schemas.CompletionChoice(0, text, None, finish)
        return schemas.TextCompletion(id, "text_completion", created, p.model, [choice], usage)

    return await _answer(p, build)


# -- completions (legacy) ---------------------------------------------------------


class _Completion(_Chat):
    """``text_completion`` lines, then ``data: [DONE]``."""

    object = "text_completion"

    def __init__(self, started: Started) -> None:
        super().__init__(started)
        self.head["id"] = f"cmpl-{started.prediction.id}"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        text = delta.get("content", "")
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return _data({**self.head, "choices": [choice]})

    def opening(self) -> bytes:
        return b""


@blueprint.post("/v1/completions")
async def create_completion() -> Response:
    started = await _create(completion_input)
    if started.stream:
        return _stream_response(started, _Completion(started))
    return await _whole(await _ended(started), "text_completion", "cmpl")


# -- responses ------------------------------------------------------------------

_RESPONSE_STATUS = {
    Status.STARTING: "in_progress",
    Status.PROCESSING: "in_progress",
    Status.SUCCEEDED: "completed",
    Status.FAILED: "failed",
    Status.CANCELED: "cancelled",
}


def _response(
    p: Prediction, text: str, limit: int | None, echo: dict[str, Any], status: str = ""
) -> schemas.OpenAIResponse:
    """*p* as OpenAI's response object, its output *text* so far; *limit*:
    the token limit its model was given; *echo*: what it repeats of its
    request."""
    status = status or _RESPONSE_STATUS[p.status]
    incomplete = None
    if status == "completed" and _finish_reason(p, limit) == "length":
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    error = None
    if status in ("failed", "cancelled"):
        error = schemas.ResponseError("server_error", p.error or _CANCELED)
    message_status: Literal["in_progress", "completed", "incomplete"] = (
        "completed" if status == "completed" else "in_progress"
    )
    if status not in ("completed", "in_progress"):
        message_status = "incomplete"
    part = schemas.OutputText("output_text", text, [])
    item = schemas.OutputMessage("message", f"msg_{p.id}", message_status, "assistant", [part])
    prompt, completion = _token_counts(p)
    usage = None
    if status != "in_progress":
        usage = schemas.ResponseUsage(
            prompt, {"cached_tokens": 0}, completion, {"reasoning_tokens": 0}, prompt + completion
        )
    return schemas.OpenAIResponse(
        id=f"resp_{p.id}", object="response", created_at=int(p.created_at),
        status=status, error=error, incomplete_details=incomplete,  # type: ignore[arg-type]
        instructions=echo.get("instructions"), max_output_tokens=echo.get("max_output_tokens"),
        model=p.model, output=[item] if text or status != "in_progress" else [],
        parallel_tool_calls=False, temperature=echo.get("temperature"),
        tool_choice="none", tools=[], top_p=echo.get("top_p"),
        text={"format": {"type": "text"}}, metadata={}, usage=usage,
    )  # fmt: skip


class _Responses:
    """The named events of OpenAI's response stream, each numbered. Its
    ending repeats the whole text four times: each is read from the log
    a slice at a time as it is written, never held whole."""

    def __init__(self, started: Started) -> None:
        self.started = started
        self.id = f"msg_{started.prediction.id}"
        self.sequence = 0

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse.named_frame(kind, msgspec.json.encode(body))

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.id, "output_index": 0, "content_index": 0}

    def opening(self) -> bytes:
        p = self.started.prediction
        response = _response(p, "", None, self.started.echo, "in_progress")
        item = {
            "type": "message", "id": self.id, "status": "in_progress",
            "role": "assistant", "content": [],
        }  # fmt: skip
        return b"".join(
            [
                self._event("response.created", response=response),
                self._event("response.in_progress", response=response),
                self._event("response.output_item.added", output_index=0, item=item),
                self._event(
                    "response.content_part.added",
                    **self._at(),
                    part={"type": "output_text", "text": "", "annotations": []},
                ),
            ]
        )

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])

    def ending(self) -> Iterator[bytes]:
        # The events are encoded with a marker no request can know where
        # the text goes; the text is written there from the log.
        marker = f"text-{secrets.token_hex(16)}"
        p = self.started.prediction
        response = _response(p, marker, self.started.limit, self.started.echo)
        if self.started.failure is not None:
            yield from self._with_text(marker, "response.failed", response=response)
            return
        item = response.output[0]
        at = self._at()
        yield from self._with_text(marker, "response.output_text.done", **at, text=marker)
        yield from self._with_text(marker, "response.content_part.done", **at, part=item.content[0])
        yield from self._with_text(marker, "response.output_item.done", output_index=0, item=item)
        yield from self._with_text(marker, f"response.{response.status}", response=response)

    def _with_text(self, marker: str, kind: str, **fields: Any) -> Iterator[bytes]:
        """Event *kind*, the output text written in place of *marker*."""
        before, after = self._event(kind, **fields).split(marker.encode())
        yield before
        events = self.started.prediction.events
        cursor, part = 0, 0
        while cursor < len(events):
            records, cursor, part = events.read_records(cursor, SLICE_BYTES, part)
            if text := "".join(map(_text, records)):
                yield msgspec.json.encode(text)[1:-1]  # a JSON string's inside
        yield after


@blueprint.post("/v1/responses")
async def create_response() -> Response:
    started = await _create(responses_input)
    if started.stream:
        return _stream_response(started, _Responses(started))
    # A failure is in the response object (status failed): answered 200.
    await started.prediction.events.wait_closed()
    p, limit, echo = started.prediction, started.limit, started.echo
    return await _answer(p, lambda text: _response(p, text, limit, echo))


@blueprint.get("/v1/responses/<response_id>")
async def get_response(response_id: str) -> Response:
    if not response_id.startswith("resp_"):
        raise NotFound(f"no response {response_id!r}: a response id starts with resp_")
    bridge = context().bridge
    p = await bridge.get(response_id.removeprefix("resp_"), caller_owner())
    # Only the input is kept of the request: the limit is read from it, as
    # when it was created; instructions and the like are null.
    entry = bridge.catalog.models.get(p.model)
    names: dict[str, str] = {}
    if entry is not None:
        names = openai_names(entry.info.input_schema if entry.info else {}, entry.settings.openai)
    limit = limit_of(await bridge.offload(p.input_size, lambda: p.input), names)
    return await _answer(p, lambda text: _response(p, text, limit, {}))
