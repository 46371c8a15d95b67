"""Translation between bridge.v1 protobuf messages and plain Python values.

Protobuf types stop here: the rest of the bridge sees the plain types of
the backend interface (:mod:`bridge.backends.interface`), which this module
re-exports for the model side.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema
from google.protobuf import json_format, struct_pb2

from bridge._proto.v1 import predictor_pb2 as pb

from .. import strictjson
from .interface import LogLine, MetricsUpdate, ModelInfo, OutputChunks, Started, StreamItem

#: The UNAVAILABLE status message of a backend whose model is still loading
#: (``setup()`` has not returned): the bridge keeps such predictions
#: waiting, up to the model's ``load_timeout_seconds``.
LOADING = "model is loading"
#: How the FAILED_PRECONDITION message of a backend whose model's setup
#: failed begins (the reason follows: Describe's setup_error).
SETUP_FAILED = "model setup failed: "

__all__ = [
    "LOADING",
    "SETUP_FAILED",
    "TEXT_STREAM_SCHEMA",
    "LogLine",
    "MetricsUpdate",
    "ModelInfo",
    "OutputChunks",
    "Started",
    "StreamItem",
    "json_chunk",
    "log_response",
    "metrics_response",
    "model_info_from_pb",
    "model_info_to_pb",
    "output_response",
    "predict_request",
    "request_input",
    "stream_item_from_pb",
]


def predict_request(prediction_id: str, input: dict[str, Any]) -> pb.PredictRequest:
    request = pb.PredictRequest(id=prediction_id)
    request.input.update(input)
    return request


def request_input(request: pb.PredictRequest) -> dict[str, Any]:
    input: dict[str, Any] = json_format.MessageToDict(request.input)
    return input


def stream_item_from_pb(response: pb.PredictResponse) -> StreamItem:
    kind = response.WhichOneof("kind")
    if kind == "output":
        chunks = response.output.chunks
        texts = [c.text for c in chunks]
        if all(texts):  # every chunk is non-empty text: no oneof to look at
            return OutputChunks(texts)
        return OutputChunks([_chunk_value(c) for c in chunks])
    if kind == "log":
        return LogLine(response.log)
    if kind == "metrics":
        values = dict(response.metrics.values)
        if not all(math.isfinite(v) for v in values.values()):
            raise ValueError(f"metrics that are not finite numbers ({values})")
        return MetricsUpdate(values)
    raise ValueError(f"a PredictResponse carrying nothing this bridge knows ({kind!r})")


def _chunk_value(chunk: pb.Chunk) -> Any:
    if chunk.WhichOneof("value") == "json":
        try:
            return json_format.MessageToDict(chunk.json)
        except ValueError as exc:  # NaN or Infinity
            raise ValueError(f"an output chunk that is not JSON ({exc})") from None
    return chunk.text


def output_response(chunks: list[Any]) -> pb.PredictResponse:
    out = pb.Output()
    for value in chunks:
        if isinstance(value, str):
            out.chunks.add(text=value)
        else:
            out.chunks.append(json_chunk(value))
    return pb.PredictResponse(output=out)


def json_chunk(value: Any) -> pb.Chunk:
    """The chunk of a JSON output value; ValueError for one that is not JSON."""
    json_value = struct_pb2.Value()
    try:
        json_format.ParseDict(value, json_value)
    except (json_format.ParseError, TypeError, AttributeError) as exc:
        raise ValueError(f"an output that is not JSON ({type(value).__name__}): {exc}") from None
    return pb.Chunk(json=json_value)


def log_response(line: str) -> pb.PredictResponse:
    return pb.PredictResponse(log=line)


def metrics_response(values: dict[str, float]) -> pb.PredictResponse:
    return pb.PredictResponse(metrics=pb.Metrics(values=values))


def model_info_from_pb(response: pb.DescribeResponse) -> ModelInfo:
    """What a Describe said; raises ValueError, naming what is wrong, for a
    schema that is not a JSON object or not a JSON Schema."""
    return ModelInfo(
        name=response.name,
        version=response.version,
        input_schema=_schema("input", response.input_schema_json),
        output_schema=_schema("output", response.output_schema_json),
        concurrency=response.concurrency,
        setup_error=response.setup_error,
    )


#: The output schema of a model that streams text: chunks that concatenate
#: (Cog's and Replicate's iterator of strings), as an SDK generator's and a
#: bridged service's ``[output] text`` are.
TEXT_STREAM_SCHEMA: dict[str, Any] = {
    "type": "array",
    "title": "Output",
    "items": {"type": "string"},
    "x-cog-array-type": "iterator",
    "x-cog-array-display": "concatenate",
}

#: The most a backend's schema may be: characters of its JSON, and levels
#: of objects and arrays (a schema's nested schema is two). Every use of a
#: schema (validation, listings, the page's form) walks it; these keep
#: that walk short, and never deeper than Python's recursion limit.
MAX_SCHEMA_CHARS = 1 << 20
MAX_SCHEMA_DEPTH = 64


def _schema(which: str, text: str) -> dict[str, Any]:
    if len(text) > MAX_SCHEMA_CHARS:
        raise ValueError(f"an {which} schema of more than {MAX_SCHEMA_CHARS} characters")
    too_deep = f"an {which} schema nested more than {MAX_SCHEMA_DEPTH} levels deep"
    try:
        schema = strictjson.loads(text or "{}")
    except RecursionError:  # deeper than the parser goes
        raise ValueError(too_deep) from None
    except ValueError as exc:
        raise ValueError(f"an {which} schema that is not JSON ({exc})") from None
    if _deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise ValueError(too_deep)
    if not isinstance(schema, dict):
        raise ValueError(f"an {which} schema that is not a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"an {which} schema that is not a JSON Schema ({exc.message})") from None
    return schema


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether *value* nests objects and arrays more than *limit* deep
    (walked with a stack of its own, not Python's)."""
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def model_info_to_pb(info: ModelInfo) -> pb.DescribeResponse:
    return pb.DescribeResponse(
        name=info.name,
        version=info.version,
        input_schema_json=strictjson.dumps(info.input_schema),
        output_schema_json=strictjson.dumps(info.output_schema),
        concurrency=info.concurrency,
        setup_error=info.setup_error,
    )
