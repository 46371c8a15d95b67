"""OpenAI's request bodies as a model's input: what a chat completion, a
completion or a response asks, mapped onto the fields the model's input
schema has (its ``properties``). Pure functions: the routes are in
:mod:`bridge.http.openai_api`.

The rules (docs/openai.md says them to users):

- A model whose schema has ``messages`` gets the conversation as OpenAI
  sent it. Otherwise ``prompt`` gets the last user message's text, and
  ``system_prompt`` (when the schema has it) the system messages'.
- ``max_tokens`` (``max_completion_tokens``, ``max_output_tokens``),
  ``temperature``, ``top_p``, ``stop`` and ``seed`` go to the inputs of the
  same name when the schema has them; the token limit also to
  ``max_new_tokens``.
- Any other top-level field that the schema names is passed as input
  (``extra_body={"delay_ms": 50}``); OpenAI's parameters the model cannot
  use are ignored, as vLLM does.
- A model's ``[models."x".openai]`` table renames these fields to its own
  inputs (``prompt = "text"``, ``max_tokens = "max_new_tokens"``,
  ``messages = "turns"``): :func:`mapped`.

The input is then validated against the schema like any other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import OPENAI_FIELDS
from ..errors import BadRequest

__all__ = [
    "Asked",
    "BadParam",
    "chat_input",
    "completion_input",
    "limit_of",
    "mapped",
    "openai_names",
    "responses_input",
    "takes_text",
]

#: Sampling parameters passed on under their own names.
_SAMPLING = ("temperature", "top_p", "stop", "seed")
#: Where a model takes its token limit.
_LIMITS = ("max_tokens", "max_new_tokens")
#: OpenAI's own body fields: read by the translation, never passed as they are.
_OPENAI = frozenset(
    {
        "model", "messages", "prompt", "input", "instructions", "stream", "stream_options",
        "max_tokens", "max_completion_tokens", "max_output_tokens", "n", *_SAMPLING,
    }
)  # fmt: skip
#: What a response object repeats of its request.
_ECHOED = ("instructions", "max_output_tokens", "temperature", "top_p")


class BadParam(BadRequest):
    """A 400 that names the request field at fault (OpenAI's ``param``)."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(detail)
        self.param = param


@dataclass(frozen=True)
class Asked:
    """What an OpenAI request asks of a model."""

    input: dict[str, Any]
    stream: bool
    #: Send a usage chunk last (``stream_options.include_usage``).
    include_usage: bool
    #: The token limit the model was given, if it takes one: reaching it
    #: is finish_reason ``length``.
    limit: int | None
    #: What the answer repeats of the request (a response's instructions,
    #: temperature...): these few fields, never the body, are kept.
    echo: dict[str, Any]


def chat_input(body: dict[str, Any], schema: dict[str, Any]) -> Asked:
    """A chat completion's body as *schema*'s input."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadParam("messages", "messages must be a non-empty list of messages")
    input = _conversation(messages, "messages", schema)
    return _asked(body, schema, input, "max_completion_tokens")


def completion_input(body: dict[str, Any], schema: dict[str, Any]) -> Asked:
    """A (legacy) completion's body as *schema*'s input."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadParam("prompt", "prompt must be a string (one prompt per request)")
    return _asked(body, schema, _text_input(prompt, None, "prompt", schema), "max_tokens")


def responses_input(body: dict[str, Any], schema: dict[str, Any]) -> Asked:
    """A response's body (``input``, ``instructions``) as *schema*'s input."""
    if body.get("previous_response_id") is not None:
        raise BadParam(
            "previous_response_id",
            "previous_response_id is not supported: send the whole conversation as input",
        )
    if body.get("tools"):
        raise BadParam("tools", "tools are not supported by this server")
    given, instructions = body.get("input"), body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise BadParam("instructions", "instructions must be a string")
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise BadParam("input", "input must be a string or a non-empty list of messages")
    if instructions:
        given = [{"role": "system", "content": instructions}, *given]
    return _asked(body, schema, _conversation(given, "input", schema), "max_output_tokens")


def _asked(
    body: dict[str, Any], schema: dict[str, Any], input: dict[str, Any], limit_field: str
) -> Asked:
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise BadParam("n", "n must be 1: this server writes one choice per request")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadParam("stream", "stream must be true or false")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadParam("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(options, dict) or type(options.get("include_usage", False)) is not bool:
            raise BadParam("stream_options", 'stream_options is {"include_usage": a boolean}')
    usage = bool(options and options.get("include_usage"))
    props = _properties(schema)
    limit = body.get(limit_field, body.get("max_tokens"))
    for name in _LIMITS:
        if limit is not None and name in props:
            input[name] = limit
    for name in _SAMPLING:
        if body.get(name) is not None and name in props:
            input[name] = body[name]
    for name, value in body.items():
        if name not in _OPENAI and name in props and name not in input:
            input[name] = value
    return Asked(
        input,
        bool(stream),
        bool(usage),
        limit_of(input),
        {name: body.get(name) for name in _ECHOED},
    )


def limit_of(input: dict[str, Any], names: Mapping[str, str] | None = None) -> int | None:
    """The token limit a model's *input* gives it (``max_tokens``, else
    ``max_new_tokens``; *names*, its OpenAI table, may call them
    otherwise), if any: reaching it is finish_reason ``length``."""
    names = names or {}
    return next((v for name in _LIMITS if type(v := input.get(names.get(name, name))) is int), None)


Translate = Callable[[dict[str, Any], dict[str, Any]], Asked]


def mapped(
    translate: Translate, body: dict[str, Any], schema: dict[str, Any], names: Mapping[str, str]
) -> Asked:
    """``translate(body, schema)`` for a model whose OpenAI table *names*
    its inputs for OpenAI's fields: the translation sees the schema with
    those inputs under OpenAI's names, and its input gets them back. Such
    an input given by its own name (``extra_body``) is passed too, unless
    OpenAI's field gave it."""
    if not names:
        return translate(body, schema)
    asked = translate(body, {"properties": _view(schema, names)})
    input = {names.get(name, name): value for name, value in asked.input.items()}
    props = _properties(schema)
    for own in names.values():  # an input asked for by its own name, too
        if own in body and own in props and own not in input and own not in _OPENAI:
            input[own] = body[own]
    return dataclasses.replace(asked, input=input)


def openai_names(schema: dict[str, Any], configured: Mapping[str, str]) -> dict[str, str]:
    """Which of the model's inputs each OpenAI field goes to: what its
    schema marks (``"x-openai": "max_tokens"`` on an input: bridge.sdk's
    ``Field(..., openai=...)``), and over that its ``[models."x".openai]``
    table."""
    marked = {
        mark: name
        for name, prop in _properties(schema).items()
        if isinstance(prop, dict) and (mark := prop.get("x-openai")) in OPENAI_FIELDS
    }
    return marked | dict(configured)


def takes_text(schema: dict[str, Any], names: Mapping[str, str]) -> bool:
    """Whether OpenAI's prompt or messages has an input to go to."""
    view = _view(schema, names)
    return "prompt" in view or "messages" in view


def _view(schema: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """*schema*'s properties with the inputs *names* maps to under
    OpenAI's names (the rest as they are)."""
    props = _properties(schema)
    view = {name: value for name, value in props.items() if name not in names.values()}
    for openai, own in names.items():
        if own in props:
            view[openai] = props[own]
    return view


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    return props if isinstance(props, dict) else {}


def _conversation(messages: list[Any], param: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The messages as input: as they are, or as prompt and system prompt."""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadParam(f"{param}[{i}]", f"{param}[{i}] must be an object with a role")
    if "messages" in _properties(schema):
        return {"messages": messages}
    # A text model: every message must be text (an image it would never see).
    texts = [
        "" if m.get("content") is None and m["role"] != "user"  # an assistant's tool call
        else _text(m.get("content"), f"{param}[{i}].content")
        for i, m in enumerate(messages)
    ]  # fmt: skip
    roles = [m["role"] for m in messages]
    system = [t for t, role in zip(texts, roles, strict=True) if role in ("system", "developer")]
    if "user" not in roles:
        raise BadParam(param, f"{param} has no user message: the model needs a prompt")
    prompt = texts[len(roles) - 1 - roles[::-1].index("user")]
    return _text_input(prompt, "\n\n".join(system) or None, param, schema)


def _text_input(
    prompt: str, system: str | None, param: str, schema: dict[str, Any]
) -> dict[str, Any]:
    # A model with neither messages nor prompt is driven by the fields its
    # schema names (extra_body); its schema says what is missing.
    props = _properties(schema)
    input: dict[str, Any] = {"prompt": prompt} if "prompt" in props else {}
    if system is not None and "system_prompt" in props:
        input["system_prompt"] = system
    return input


def _text(content: Any, param: str) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise BadParam(param, f"{param}: only text parts are supported")
            if not isinstance(part.get("text"), str):
                raise BadParam(param, f"{param}: a text part's text must be a string")
            texts.append(part["text"])
        return "".join(texts)
    raise BadParam(param, f"{param} must be a string or a list of text parts")
