"""A request message type as its model's input schema (issue 32's input):
what the schema accepts, protobuf's own JSON parser accepts, and what it
refuses is refused before anything runs, by the bridge's own validator."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from bridge.backends.generic.schema import comments, message_schema
from bridge.errors import InvalidInput
from bridge.validation import check_patterns, validate_input
from tests.helpers import descriptor_set

PROTO = """
syntax = "proto3";
package acme.kinds.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/struct.proto";

// A request with every kind of field.
message Kinds {
  // The prompt.
  string text = 1;
  optional int32 count = 2;
  repeated string tags = 3;
  map<string, int64> weights = 4;
  Color color = 5;
  Kinds child = 6;  // the same kind, nested
  oneof choice {
    string a = 7;
    int32 b = 8;
  }
  bytes blob = 9;
  google.protobuf.Timestamp at = 10;
  google.protobuf.Int32Value maybe = 11;
  uint64 big = 12;
  double ratio = 13;
  map<int32, string> ids_by_number = 14;
  repeated Inner inners = 15;
  google.protobuf.Struct extra = 16;
  message Inner { bool on = 1; }
}

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
}
"""


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, descriptor_pb2.FileDescriptorSet]:
    out = descriptor_set(tmp_path_factory.mktemp("protos"), "kinds", PROTO)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindMessageTypeByName("acme.kinds.v1.Kinds"), files


GOOD = [
    {},
    {
        "text": "hi",
        "count": 3,
        "tags": ["a", "b"],
        "weights": {"x": 5, "y": "-7"},
        "color": "RED",
        "child": {"text": "c", "child": {"child": {}}},
        "a": "one",
        "blob": "aGk=",
        "at": "2026-12-07T00:00:00Z",
        "maybe": 4,
        "big": "18446744073709551615",
        "ratio": "NaN",
        "ids_by_number": {"1": "x"},
        "inners": [{"on": True}],
        "extra": {"any": ["json", 1]},
    },
    {"idsByNumber": {"-2": "y"}, "b": 2, "ratio": 0.5, "big": 7},  # lowerCamel, as the parser takes
]

BAD = [
    ({"count": 2**31}, "count"),
    ({"color": "BLUE"}, "color"),
    ({"a": "x", "b": 1}, "a"),  # two fields of one oneof
    ({"unknown": 1}, "unknown"),
    ({"tags": "x"}, "tags"),
    ({"child": {"count": "three"}}, "count"),  # through the recursion
    ({"big": -1}, "big"),
    ({"weights": {"x": 1.5}}, "weights"),
    ({"ids_by_number": {"one": "x"}}, "one"),
    ({"inners": [{"on": "yes"}]}, "on"),
]


@pytest.mark.parametrize("value", GOOD, ids=["empty", "every-field", "camel-case"])
def test_what_the_schema_accepts_protobuf_parses(kinds: Any, value: dict[str, Any]) -> None:
    descriptor, _ = kinds
    schema = message_schema(descriptor)
    check_patterns(schema, "input")  # the bridge's bounded engine runs its patterns
    validate_input(schema, value)
    json_format.ParseDict(value, message_factory.GetMessageClass(descriptor)())


@pytest.mark.parametrize(("value", "named"), BAD, ids=[str(b[0])[:40] for b in BAD])
def test_what_protobuf_refuses_the_schema_refuses_first(
    kinds: Any, value: dict[str, Any], named: str
) -> None:
    descriptor, _ = kinds
    with pytest.raises(InvalidInput) as refused:
        validate_input(message_schema(descriptor), value)
    assert named in str(refused.value.detail) + str(getattr(refused.value, "errors", ""))
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(value, message_factory.GetMessageClass(descriptor)())


def test_comments_become_descriptions(kinds: Any) -> None:
    descriptor, files = kinds
    (file,) = [f for f in files.file if f.name == "kinds.proto"]
    schema = message_schema(descriptor, comments(file))
    assert schema["description"] == "A request with every kind of field."
    assert schema["properties"]["text"]["description"] == "The prompt."
    assert schema["properties"]["child"]["description"] == "the same kind, nested"
    assert schema["properties"]["child"]["$ref"] == "#/$defs/acme.kinds.v1.Kinds"
    assert "description" not in message_schema(descriptor)["properties"]["text"]
