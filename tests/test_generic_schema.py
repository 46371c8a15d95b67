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
    string c_d = 17;
  }
  bytes blob = 9;
  google.protobuf.Timestamp at = 10;
  google.protobuf.Int32Value maybe = 11;
  uint64 big = 12;
  double ratio = 13;
  map<int32, string> ids_by_number = 14;
  repeated Inner inners = 15;
  google.protobuf.Struct extra = 16;
  float scale = 18;
  sint64 offset = 19;
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
    {  # each at its type's edge
        "offset": "-9223372036854775808",
        "big": "018446744073709551615",
        "scale": 3.4e38,
        "ids_by_number": {"-2147483648": "y", "2147483647": "z"},
    },
]

BAD = [
    ({"count": 2**31}, "count"),
    ({"color": "BLUE"}, "color"),
    ({"a": "x", "b": 1}, "a"),  # two fields of one oneof
    ({"a": "x", "cD": "y"}, "cD"),  # ... one of them by its lowerCamel name
    ({"unknown": 1}, "unknown"),
    ({"tags": "x"}, "tags"),
    ({"child": {"count": "three"}}, "count"),  # through the recursion
    ({"big": -1}, "big"),
    ({"big": "18446744073709551616"}, "big"),  # past uint64, as a string
    ({"offset": "9223372036854775808"}, "offset"),
    ({"offset": "-9223372036854775809"}, "offset"),
    ({"scale": 3.5e38}, "scale"),  # past a 32-bit float
    ({"ids_by_number": {"2147483648": "x"}}, "2147483648"),  # past int32, as a key
    ({"weights": {"x": 1.5}}, "weights"),
    ({"ids_by_number": {"one": "x"}}, "one"),
    ({"inners": [{"on": "yes"}]}, "on"),
]


@pytest.mark.parametrize("value", GOOD, ids=["empty", "every-field", "camel-case", "edges"])
def test_what_the_schema_accepts_protobuf_parses(kinds: Any, value: dict[str, Any]) -> None:
    descriptor, _ = kinds
    schema = message_schema(descriptor)
    check_patterns(schema, "input")  # the bridge's bounded engine runs its patterns
    validate_input(schema, value)
    json_format.ParseDict(value, message_factory.GetMessageClass(descriptor)())


def test_a_field_by_both_its_names_is_refused(kinds: Any) -> None:
    """protobuf's parser would take the last silently: refused first, in
    words (as two fields of one oneof are)."""
    descriptor, _ = kinds
    both = {"ids_by_number": {"1": "x"}, "idsByNumber": {"2": "y"}}
    with pytest.raises(InvalidInput) as refused:
        validate_input(message_schema(descriptor), both)
    assert refused.value.detail == (
        "input.idsByNumber: ids_by_number and idsByNumber cannot both be given"
    )
    with pytest.raises(InvalidInput) as refused:
        validate_input(message_schema(descriptor), {"child": {"a": "x", "cD": "y"}})
    assert refused.value.detail == "input.child.cD: a and cD cannot both be given"


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


#: protovalidate's annotations, as they travel: the extension (1159 on
#: FieldOptions) and the rule messages' field numbers of
#: buf/validate/validate.proto, restated here with only the rules the
#: bridge reads (a user's descriptor set carries the real file).
VALIDATE = """
syntax = "proto2";
package buf.validate;
import "google/protobuf/descriptor.proto";
extend google.protobuf.FieldOptions { optional FieldRules field = 1159; }
message FieldRules {
  optional bool required = 25;
  oneof type {
    DoubleRules double = 2;
    Int32Rules int32 = 3;
    SInt64Rules sint64 = 8;
    StringRules string = 14;
    RepeatedRules repeated = 18;
    MapRules map = 19;
  }
}
message DoubleRules {
  optional double const = 1;
  oneof less_than { double lt = 2; double lte = 3; }
  oneof greater_than { double gt = 4; double gte = 5; }
  optional bool finite = 8;
}
message Int32Rules {
  optional int32 const = 1;
  oneof less_than { int32 lt = 2; int32 lte = 3; }
  oneof greater_than { int32 gt = 4; int32 gte = 5; }
  repeated int32 in = 6;
}
message SInt64Rules { oneof greater_than { sint64 gt = 4; sint64 gte = 5; } }
message StringRules {
  optional uint64 min_len = 2;
  optional uint64 max_len = 3;
  optional string pattern = 6;
  oneof well_known { bool email = 12; bool uuid = 22; }
}
message RepeatedRules {
  optional uint64 min_items = 1;
  optional uint64 max_items = 2;
  optional bool unique = 3;
  optional FieldRules items = 4;
}
message MapRules { optional uint64 max_pairs = 2; }
"""

ANNOTATED = """
syntax = "proto3";
package acme.rules.v1;
import "google/api/field_behavior.proto";
import "validate.proto";

message Ask {
  string prompt = 1 [(google.api.field_behavior) = REQUIRED,
                     (buf.validate.field).string = {min_len: 1, max_len: 20, pattern: "^[a-z ]+$"}];
  int32 max_new_tokens = 2 [(buf.validate.field).int32 = {gt: 0, lte: 512}];
  double temperature = 3 [(buf.validate.field).double = {gte: 0, lte: 2, finite: true}];
  repeated string stop = 4 [(buf.validate.field).repeated = {
    max_items: 2, unique: true, items: {string: {min_len: 1}}}];
  int32 mode = 5 [(buf.validate.field).int32 = {in: [1, 2, 4]}];
  sint64 offset = 6 [(buf.validate.field).sint64.gte = -5];
  string user_id = 7 [
    (buf.validate.field).required = true, (buf.validate.field).string.uuid = true];
  map<string, string> tags = 8 [(buf.validate.field).map.max_pairs = 1];
}
"""


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    where = tmp_path_factory.mktemp("rules")
    (where / "validate.proto").write_text(VALIDATE)
    path = descriptor_set(where, "ask", ANNOTATED)
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindMessageTypeByName("acme.rules.v1.Ask")


ASK = {"prompt": "once upon", "userId": "0f8e7c8a-3a5e-4c1e-9d0b-5b6f2a1c9e00"}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"user_id": ASK["userId"]}, "prompt"),  # REQUIRED, by field_behavior
        ({"prompt": "x"}, "user"),  # required, by buf.validate (either spelling)
        ({**ASK, "prompt": ""}, "prompt"),
        ({**ASK, "prompt": "x" * 21}, "prompt"),
        ({**ASK, "prompt": "Once"}, "prompt"),  # the pattern
        ({**ASK, "max_new_tokens": 0}, "max_new_tokens"),
        ({**ASK, "max_new_tokens": 513}, "max_new_tokens"),
        ({**ASK, "temperature": 2.5}, "temperature"),
        ({**ASK, "temperature": "NaN"}, "temperature"),  # finite
        ({**ASK, "stop": ["a", "b", "c"]}, "stop"),
        ({**ASK, "stop": ["a", "a"]}, "stop"),
        ({**ASK, "stop": [""]}, "stop"),
        ({**ASK, "mode": 3}, "mode"),
        ({**ASK, "offset": -6}, "offset"),
        ({**ASK, "tags": {"a": "1", "b": "2"}}, "tags"),
    ],
)
def test_validation_annotations_become_bounds(annotated: Any, value: dict, named: str) -> None:
    schema = message_schema(annotated)
    check_patterns(schema, "input")
    validate_input(schema, ASK)  # the good one passes
    with pytest.raises(InvalidInput) as refused:
        validate_input(schema, value)
    assert named in str(refused.value.detail) + str(refused.value.invalid_fields), refused.value


FIXED = """
syntax = "proto3";
package acme.fixed.v1;
import "google/api/field_behavior.proto";

message Ask {
  string model_id = 1 [(google.api.field_behavior) = REQUIRED];
  string text = 2;
  Ask follow_up = 3;  // the same kind: model_id required in it, as the proto says
  oneof tenant { string team = 4; string user_name = 5; }
  string region = 6 [(google.api.field_behavior) = REQUIRED];
}
message Answer { string text = 1; }
service Asker { rpc Send(Ask) returns (stream Answer); }
"""
#: What a 422 for an unknown input of FIXED's Ask lists: the user's inputs.
INPUTS = " (its inputs: followUp, follow_up, text)"


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ({"text": "hi"}, None),
        ({"text": "hi", "follow_up": {"model_id": "m2", "region": "eu"}}, None),
        (
            {"text": "hi", "follow_up": {"region": "eu"}},
            "input.follow_up.model_id: model_id is required",
        ),
        ({"region": "us"}, "input.region: region is not an input of this model" + INPUTS),
        ({"modelId": "other"}, "input.modelId: modelId is not an input of this model" + INPUTS),
        ({"userName": "me"}, "input.userName: userName is not an input of this model" + INPUTS),
    ],
)
def test_a_fixed_input_is_neither_taken_nor_required(
    tmp_path_factory: pytest.TempPathFactory, value: dict[str, Any], refused: str | None
) -> None:
    """A field the config fixes (here one the proto marks REQUIRED, and one
    of a oneof, whose other fields go with it) is not the user's: not
    required of them, not accepted from them; a nested message of the
    same type keeps its own rules."""
    from bridge.backends.generic.backend import bind
    from bridge.backends.generic.descriptors import types_from_set
    from bridge.config import ModelSettings

    types = types_from_set(descriptor_set(tmp_path_factory.mktemp("fixed"), "fixed", FIXED))
    settings = ModelSettings(
        "acme/ask", ("127.0.0.1:1",), method="acme.fixed.v1.Asker/Send",
        descriptor_set="fixed.binpb", input={"model_id": "m7", "team": "red", "region": "eu"},
    )  # fmt: skip
    schema = bind(settings, types, "its descriptor set").info.input_schema
    if refused is None:
        validate_input(schema, value)
    else:
        with pytest.raises(InvalidInput) as error:
            validate_input(schema, value)
        assert error.value.detail == refused


@pytest.mark.parametrize("pattern", ["^[[:alpha:]]+$", "^a{,3}$", "^(?P<word>[a-z]+)$", "^a\\\\z"])
def test_a_pattern_in_re2s_own_syntax_is_left_to_the_service(
    tmp_path_factory: pytest.TempPathFactory, pattern: str
) -> None:
    """Read as JSON Schema's (ECMA-262) it would mean something else, or
    not compile on the bridge's engine: no bound, rather than a wrong one."""
    where = tmp_path_factory.mktemp("re2")
    (where / "validate.proto").write_text(VALIDATE)
    proto = ANNOTATED.replace('pattern: "^[a-z ]+$"', f'pattern: "{pattern}"')
    files = descriptor_pb2.FileDescriptorSet.FromString(
        descriptor_set(where, "ask", proto).read_bytes()
    )
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    schema = message_schema(pool.FindMessageTypeByName("acme.rules.v1.Ask"))
    assert "pattern" not in schema["properties"]["prompt"]
    check_patterns(schema, "input")
    validate_input(schema, {**ASK, "prompt": "abc"})


def test_a_proto2_required_field_is_required(tmp_path_factory: pytest.TempPathFactory) -> None:
    proto = 'syntax = "proto2";\npackage old.v1;\nmessage Ask { required string q = 1; }\n'
    out = descriptor_set(tmp_path_factory.mktemp("proto2"), "old", proto)
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    schema = message_schema(pool.FindMessageTypeByName("old.v1.Ask"))
    with pytest.raises(InvalidInput) as refused:
        validate_input(schema, {})  # not a message protobuf can send
    assert refused.value.detail == "input.q: q is required"
