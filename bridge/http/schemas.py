"""The bodies of the HTTP API, as types: the OpenAPI document's schemas are
generated from them (:func:`components`), not written by hand."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..core.predictions import Status
from ..sse import EVENT_NAMES
from ..validation import EVENTS

__all__ = ["components"]

_Doc = msgspec.Meta

WebhookEvent = Literal[EVENTS]  # type: ignore[valid-type]
EventName = Literal[EVENT_NAMES]  # type: ignore[valid-type]


class InvalidField(msgspec.Struct):
    type: str
    field: str
    description: str


class Problem(msgspec.Struct):
    """An error, as application/problem+json (RFC 9457)."""

    title: str
    detail: str
    status: int
    invalid_fields: list[InvalidField] | msgspec.UnsetType = msgspec.UNSET


class ModelPredictionRequest(msgspec.Struct):
    input: Annotated[dict[str, Any], _Doc(description="Checked against the model's schema.")] = {}
    stream: Annotated[
        bool,
        _Doc(
            description="Optional: streaming models always have a stream URL; true for a "
            "model whose output is one value is a 422."
        ),
    ] = False
    webhook: Annotated[str, _Doc(description="Absolute http(s) URL.")] = ""
    webhook_events_filter: list[WebhookEvent] = []


class PredictionRequest(ModelPredictionRequest, kw_only=True):
    version: Annotated[str, _Doc(description="A version id, `owner/name:id` or `owner/name`.")]


class PredictionURLs(msgspec.Struct):
    """web is the bridge's page, opened on this prediction."""

    get: str
    cancel: str
    web: str
    stream: str | msgspec.UnsetType = msgspec.UNSET


class Prediction(msgspec.Struct):
    id: str
    model: str
    version: str
    status: Status
    input: dict[str, Any]
    output: Annotated[Any, _Doc(description="The chunks so far (streaming models), or the value.")]
    logs: str
    error: str | None
    data_removed: Annotated[
        bool,
        _Doc(
            description="Its input, output and logs were let go of (retention_seconds, "
            "retention_count or max_retained_bytes): input is {}, output null; the rest "
            "stays until the metadata window ends."
        ),
    ]
    metrics: Annotated[
        dict[str, float],
        _Doc(
            description="predict_time, time_to_first_token, tokens_per_second, total_time "
            "(creation to completion) and what the model reported."
        ),
    ]
    created_at: Annotated[str, _Doc(extra_json_schema={"format": "date-time"})]
    started_at: str | None
    completed_at: str | None
    urls: PredictionURLs


class PredictionPage(msgspec.Struct):
    previous: str | None
    next: str | None
    results: list[Prediction]


class Version(msgspec.Struct):
    id: str
    created_at: str
    cog_version: str
    openapi_schema: dict[str, Any]


class Model(msgspec.Struct):
    url: str
    owner: str
    name: str
    visibility: Literal["public", "private"]
    run_count: int
    latest_version: Version | None


class OpenAIModel(msgspec.Struct):
    """A model as OpenAI's API lists it (its id: the model's name)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelPage(msgspec.Struct):
    """Every model, as Replicate's API (``results``) and OpenAI's
    (``object``, ``data``) list them, at once: both clients' listings read
    this one answer."""

    previous: None
    next: None
    results: list[Model]
    object: Literal["list"]
    data: list[OpenAIModel]


class Release(msgspec.Struct):
    """One release, made when the bridge started; its instances are the
    model's configured targets."""

    number: int
    model: str
    version: str
    created_at: str
    configuration: dict[str, Any]
    created_by: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Deployment(msgspec.Struct):
    owner: str
    name: str
    current_release: Release


class DeploymentPage(msgspec.Struct):
    previous: None
    next: None
    results: list[Deployment]


class SSEEvent(msgspec.Struct):
    """One event of a stream: output chunks in order, log lines, an error
    (data {"detail"}), then exactly one done (data {}, {"reason":"canceled"}
    or {"reason":"error"})."""

    event: EventName
    id: Annotated[str, _Doc(pattern="^[0-9]+:[0-9]+$")]
    data: str


class Health(msgspec.Struct):
    status: Literal["ok", "degraded", "draining"]
    ready: bool
    models: dict[str, str]


class WebhookSecret(msgspec.Struct):
    key: str


# -- OpenAI's API -----------------------------------------------------------------


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """An error on OpenAI's routes, as OpenAI's clients read it."""

    error: OpenAIErrorDetail


_PASSED = _Doc(
    description="max_tokens, temperature, top_p, stop and seed go to the model's inputs of "
    "the same name (the token limit also to max_new_tokens); any other field the model's "
    "input schema names is passed as input; the rest is ignored."
)


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct):
    """A chat completion: the model's ``messages`` as sent, else the last user
    message as its ``prompt`` and the system messages as its
    ``system_prompt``."""

    model: Annotated[str, _Doc(description="A model or deployment name.", examples=["demo/echo"])]
    messages: Annotated[list[ChatMessage], _PASSED]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class CompletionRequest(msgspec.Struct):
    """A (legacy) completion: ``prompt`` is the model's prompt."""

    model: Annotated[str, _Doc(description="A model or deployment name.", examples=["demo/echo"])]
    prompt: Annotated[str | list[str], _PASSED]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None


class ResponseRequest(msgspec.Struct):
    """A response: ``input`` a prompt or messages, ``instructions`` the system
    message; ``previous_response_id`` and ``tools`` are a 400."""

    model: Annotated[str, _Doc(description="A model or deployment name.", examples=["demo/echo"])]
    input: Annotated[str | list[ChatMessage], _PASSED]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: int | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(msgspec.Struct):
    role: Literal["assistant"]
    content: str
    refusal: None


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(msgspec.Struct):
    id: Annotated[str, _Doc(description="chatcmpl-<prediction id>")]
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]


class TextCompletion(msgspec.Struct):
    id: Annotated[str, _Doc(description="cmpl-<prediction id>")]
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class OutputText(msgspec.Struct):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class OutputMessage(msgspec.Struct):
    type: Literal["message"]
    id: Annotated[str, _Doc(description="msg_<prediction id>")]
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class ResponseError(msgspec.Struct):
    code: Literal["server_error"]
    message: str


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class OpenAIResponse(msgspec.Struct):
    """A response, as openai-python reads it (what it echoes of the request
    is null when the response is read again: only the input is kept)."""

    id: Annotated[str, _Doc(description="resp_<prediction id>")]
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed", "cancelled"]
    error: ResponseError | None
    incomplete_details: dict[str, str] | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage]
    parallel_tool_calls: bool
    temperature: float | None
    tool_choice: Literal["none"]
    tools: list[Any]
    top_p: float | None
    text: dict[str, Any]
    metadata: dict[str, str]
    usage: ResponseUsage | None


class OpenAIStreamLine(msgspec.Struct):
    """A line of a chat or completion stream: ``data: <chunk JSON>``, a
    ``data: {"error": ...}`` if the model fails, and ``data: [DONE]`` last."""

    data: str


_TYPES = (
    Problem,
    PredictionRequest,
    ModelPredictionRequest,
    Prediction,
    PredictionPage,
    Version,
    Model,
    OpenAIModel,
    ModelPage,
    Deployment,
    DeploymentPage,
    SSEEvent,
    Health,
    WebhookSecret,
    OpenAIError,
    ChatCompletionRequest,
    CompletionRequest,
    ResponseRequest,
    ChatCompletion,
    TextCompletion,
    OpenAIResponse,
    OpenAIStreamLine,
)


def components() -> dict[str, Any]:
    """The document's ``components.schemas``, generated from the types."""
    _, schemas = msgspec.json.schema_components(_TYPES, ref_template="#/components/schemas/{name}")
    return schemas
