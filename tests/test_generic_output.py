"""A plain path in ``[output]`` is read from the message itself, and gives
what JMESPath over the message's JSON gives (bytes as text)."""

from __future__ import annotations

import re
from typing import Any

import jmespath
import pytest
from google.protobuf import json_format, message_factory

from bridge.backends.generic.descriptors import types_from_set
from bridge.backends.generic.output import Output, message_json
from bridge.config import ConfigError, OutputSettings
from tests.helpers import descriptor_set

PROTO = """
syntax = "proto3";
package out.v1;
import "google/protobuf/struct.proto";

message Chunk {
  oneof value { string text = 1; google.protobuf.Value json = 2; }
  bytes raw = 3;
  Kind kind = 4;
  repeated string tags = 5;
  int64 count = 6;
}
enum Kind { KIND_UNSPECIFIED = 0; WORD = 1; }
message Output { repeated Chunk chunks = 1; Chunk first = 2; }
message Response {
  Output output = 1;
  repeated Output outputs = 2;
  string log = 3;
  map<string, Chunk> named = 4;
  Kind kind = 5;
  int32 n = 6;
  optional int32 maybe = 7;
  google.protobuf.Struct meta = 8;
  repeated int64 counts = 9;
}
"""

EXPRESSIONS = [
    "output.chunks[].text",
    "output.chunks[].raw",
    "output.chunks[].kind",
    "output.chunks[].tags",
    "output.chunks[].tags[]",
    "output.chunks[].count",
    "outputs[].chunks[].text",
    "outputs[].first.text",
    "output.first.text",
    "output.first.tags",
    "output.first.tags[]",
    "log",
    "kind",
    "n",
    "maybe",
    "counts",
    "counts[]",
]

MESSAGES: list[dict[str, Any]] = [
    {},
    {"log": "a line"},
    {"output": {}},
    {"output": {"chunks": [{"text": "a"}, {"json": 1}, {"text": ""}, {"raw": "eHk="}]}},
    {"output": {"chunks": [{"kind": "WORD", "tags": ["p", "q"], "count": "7"}, {"tags": ["r"]}]}},
    {"outputs": [{"chunks": [{"text": "x"}]}, {}, {"first": {"text": "y"}, "chunks": [{}]}]},
    {"output": {"first": {"text": "only", "tags": ["t"]}}},
    {"kind": "WORD", "n": 3, "maybe": 0, "counts": ["1", "2"]},
    {"kind": "KIND_UNSPECIFIED", "n": 0, "outputs": [{}, {}]},
]


@pytest.fixture(scope="module")
def response(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pool = types_from_set(descriptor_set(tmp_path_factory.mktemp("out"), "out", PROTO)).pool
    return pool.FindMessageTypeByName("out.v1.Response")


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_a_plain_path_reads_the_message_as_jmespath_reads_its_json(
    response: Any, expression: str
) -> None:
    output = Output(OutputSettings(text=expression), response)
    assert not output.needs_json  # read from the message: no JSON made
    assert output.text is not None
    make = message_factory.GetMessageClass(response)
    for value in MESSAGES:
        message = json_format.ParseDict(value, make())
        fast = output.text(message, None)  # type: ignore[arg-type]
        slow = jmespath.search(expression, message_json(message, text_bytes=True))
        # The same value (a 64-bit integer: a number here, JSON's string there).
        assert fast == _int64_as_number(slow), (expression, value, fast, slow)


def _int64_as_number(value: Any) -> Any:
    if isinstance(value, list):
        return [_int64_as_number(v) for v in value]
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


@pytest.mark.parametrize(
    "expression",
    ["output.chunks", "output.first", "named", "log[]", "output.first[].text", "named.a.text",
     "meta.k"],
)  # fmt: skip
def test_what_a_path_cannot_read_from_the_message_goes_over_the_json(
    response: Any, expression: str
) -> None:
    assert Output(OutputSettings(text=expression), response).needs_json


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("output.chunks.text", "chunks is a list; chunks[].text reads each item's"),
        ("log.text", "log is not a message"),
        ("output.chunk[].text", "out.v1.Output has no field 'chunk'"),
    ],
)
def test_a_path_that_does_not_fit_the_type_is_refused(
    response: Any, expression: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Output(OutputSettings(text=expression), response)


def test_an_expression_that_fails_on_a_message_says_which(response: Any) -> None:
    """join() over a null is JMESPath's error, not the backend's."""
    from bridge.errors import BackendProtocolError

    output = Output(OutputSettings(text="join('', [log])"), response)
    make = message_factory.GetMessageClass(response)
    assert output.items(make(log="a"))[0][0].chunks == ["a"]  # type: ignore[attr-defined]
    with pytest.raises(BackendProtocolError, match=r"\[output\] text could not be read"):
        output.items(make())
