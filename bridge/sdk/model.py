"""A model as the SDK serves it: its predictor, and the schemas its
signature gives (:class:`Model`), with the names a model file uses
(:class:`Predictor`, :class:`Field`, :data:`Log`, :data:`Metrics`)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import types
import typing
from collections.abc import Callable
from typing import Any

from ..backends import wire
from .batch import BatchPredictor

__all__ = [
    "Field",
    "Log",
    "Metrics",
    "Model",
    "Predictor",
    "input_object",
    "input_property",
    "input_schema_for",
    "output_schema_for",
]


class Predictor:
    """Cog-style base class; subclassing it is optional (any object with a
    ``predict`` method will do)."""

    def setup(self) -> None:
        """Load weights and other slow state; called once before serving."""

    #: The model: called with the inputs as keyword arguments (its
    #: signature is the input schema); returns the output, or yields it.
    predict: Callable[..., Any]


#: Yield ``Log("...")`` from ``predict`` to emit a log line.
Log = wire.LogLine

#: Yield ``Metrics({...})`` from ``predict`` to report numbers it measured.
Metrics = wire.MetricsUpdate


@dataclasses.dataclass(frozen=True)
class Field:
    """What an input is for, and its limits, for its schema (and the page's
    form)::

        def predict(prompt: Annotated[str, Field("What to write about")],
                    words: Annotated[int, Field("How many", ge=1, le=500)] = 100):
    """

    description: str | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None
    #: The OpenAI request field this input takes (``"max_tokens"``: the
    #: token limit): the bridge's OpenAI routes pass it here.
    openai: str | None = None

    def schema(self) -> dict[str, Any]:
        keys = {
            "description": self.description,
            "minimum": self.ge,
            "maximum": self.le,
            "minLength": self.min_length,
            "maxLength": self.max_length,
            "enum": list(self.choices) if self.choices is not None else None,
            "x-openai": self.openai,
        }
        return {key: value for key, value in keys.items() if value is not None}


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _schema_for(annotation: Any) -> dict[str, Any]:
    """A JSON schema for a parameter annotation (the common cases only)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(annotation)
        schema = _schema_for(inner)
        for extra in extras:
            if isinstance(extra, Field):
                schema |= extra.schema()
        return schema
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _schema_for(args[0]) if len(args) == 1 else {}
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return {"type": "array", "items": _schema_for(item)}
    if origin is dict:
        return {"type": "object"}
    json_type = _JSON_TYPES.get(annotation)
    return {"type": json_type} if json_type else {}


def input_property(name: str, order: int) -> dict[str, Any]:
    """What every input's schema starts with, as Cog writes it: a title made
    from its name, and its place in the form (``x-order``)."""
    return {"title": name.replace("_", " ").title(), "x-order": order}


def input_object(
    properties: dict[str, Any], required: list[str], *, closed: bool = True
) -> dict[str, Any]:
    """The input schema around its *properties*, as Cog writes it; *closed*:
    no other field (the bridge answers 422 for one, before anything runs)."""
    schema: dict[str, Any] = {"type": "object", "title": "Input", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def input_schema_for(func: Callable[..., Any], skip: int = 0) -> dict[str, Any]:
    """The input schema of a predict function, from its signature (after
    its first *skip* parameters)."""
    hints = typing.get_type_hints(func, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    params = list(inspect.signature(func).parameters.values())[skip:]
    for order, param in enumerate(
        p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
    ):
        prop = input_property(param.name, order)
        prop |= _schema_for(hints.get(param.name, param.annotation))
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is not None:
            prop["default"] = param.default
        properties[param.name] = prop
    # Only what the signature takes (unless it takes **kwargs): another field
    # is a 422, not a prediction failing with "unexpected keyword argument".
    closed = not any(p.kind is p.VAR_KEYWORD for p in params)
    return input_object(properties, required, closed=closed)


def output_schema_for(func: Callable[..., Any]) -> dict[str, Any]:
    """Streaming output (a generator) is a concatenated iterator of strings."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        return copy.deepcopy(wire.TEXT_STREAM_SCHEMA)
    return {"title": "Output"}


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    """Undo protobuf Struct's numbers-are-doubles for integer fields."""
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "array" and isinstance(value, list):
        return [_coerce(v, schema.get("items", {})) for v in value]
    return value


class Model:
    """A predict function or predictor object, described for the bridge.

    *concurrency*: how many predictions it runs at once, advertised in
    ``Describe`` (the bridge sends no more) and kept to here (more wait
    their turn). By default 1 for a predictor class, as Cog does (a model
    on a GPU runs one generation at a time), and no limit for a function
    or a :class:`BatchPredictor` (a batching engine bounds its batch itself).

    *multiplexed*: whether ``Describe`` offers the bridge ``Stream`` (many
    predictions on one call, a write carrying all their news); off, the
    bridge uses ``Predict`` as it does for any backend that does not offer it.
    """

    def __init__(
        self,
        name: str,
        predictor: Any,  # a function, a predictor class, or an object with predict
        *,
        version: str | None = None,
        input_schema: dict[str, Any] | None = None,
        output_schema: dict[str, Any] | None = None,
        concurrency: int | None = None,
        multiplexed: bool = True,
    ) -> None:
        batched = isinstance(predictor, BatchPredictor) or (
            inspect.isclass(predictor) and issubclass(predictor, BatchPredictor)
        )
        if concurrency is None:
            concurrency = 1 if inspect.isclass(predictor) and not batched else 0
        if concurrency < 0:
            raise ValueError(f"concurrency must be 0 (no limit) or more, not {concurrency}")
        if inspect.isclass(predictor):
            predictor = predictor()
        self._setup: Callable[[], None] | None = getattr(predictor, "setup", None)
        self.multiplexed = multiplexed
        #: The model, if it steps its predictions together (else None).
        self.batch: BatchPredictor | None = predictor if batched else None
        func = predictor.add if batched else (
            predictor if inspect.isroutine(predictor) else predictor.predict
        )  # fmt: skip
        self.predict: Callable[..., Any] = func
        if input_schema is None:
            input_schema = input_schema_for(func, skip=1 if batched else 0)
        if output_schema is None:
            output_schema = wire.TEXT_STREAM_SCHEMA if batched else output_schema_for(func)
        in_schema, out_schema = input_schema, copy.deepcopy(output_schema)
        if version is None:
            spec = json.dumps([name, in_schema, out_schema], sort_keys=True).encode()
            version = hashlib.sha256(spec).hexdigest()
        self.info = wire.ModelInfo(name, version, in_schema, out_schema, concurrency)

    def setup(self) -> None:
        if self._setup is not None:
            self._setup()

    def coerce_input(self, raw: dict[str, Any]) -> dict[str, Any]:
        props = self.info.input_schema.get("properties", {})
        return {k: _coerce(v, props.get(k, {})) for k, v in raw.items()}
