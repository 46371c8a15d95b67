"""A bridged service's descriptors from a descriptor set or .proto files,
and the method a model names: found, or refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.backends.generic import descriptors
from bridge.backends.generic.descriptors import find_method, types_from_protos, types_from_set
from bridge.config import ConfigError
from tests.helpers import descriptor_set

PROTO = """
syntax = "proto3";
package acme.llm.v1;
import "google/protobuf/timestamp.proto";

message GenerateRequest { string text = 1; google.protobuf.Timestamp at = 2; }
message GenerateResponse { string token = 1; }

service Generator {
  rpc Generate(GenerateRequest) returns (stream GenerateResponse);
  rpc Complete(GenerateRequest) returns (GenerateResponse);
  rpc Chat(stream GenerateRequest) returns (stream GenerateResponse);
}
"""


@pytest.fixture
def generator(tmp_path: Path) -> Path:
    return descriptor_set(tmp_path, "generator", PROTO)


def test_a_method_is_found_with_its_shape_and_types(generator: Path) -> None:
    pool = types_from_set(generator).pool
    generate = find_method(pool, "acme.llm.v1.Generator/Generate", str(generator))
    assert generate.path == "/acme.llm.v1.Generator/Generate"
    assert (generate.client_streaming, generate.server_streaming) == (False, True)
    assert generate.descriptor.input_type.full_name == "acme.llm.v1.GenerateRequest"
    # The imports came with the set: the request's Timestamp resolves.
    assert generate.descriptor.input_type.fields_by_name["at"].message_type.full_name == (
        "google.protobuf.Timestamp"
    )
    chat = find_method(pool, "acme.llm.v1.Generator/Chat", "")
    assert (chat.client_streaming, chat.server_streaming) == (True, True)
    complete = find_method(pool, "acme.llm.v1.Generator/Complete", "")
    assert (complete.client_streaming, complete.server_streaming) == (False, False)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("acme.llm.v1.Generator.Generate", "give it as package.Service/Method"),
        ("acme.llm.v1.Generator/", "give it as package.Service/Method"),
        ("acme.llm.v1.Nope/Generate", "no service acme.llm.v1.Nope in"),
        ("acme.llm.v1.Generator/Nope", "has no method Nope (it has: Chat, Complete, Generate)"),
    ],
)
def test_a_method_that_is_not_there_is_one_line(generator: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        find_method(types_from_set(generator).pool, name, str(generator))


def test_what_is_not_a_usable_descriptor_set_is_one_line(
    tmp_path: Path, generator: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        types_from_set(tmp_path / "missing.binpb")
    garbage = tmp_path / "garbage.binpb"
    garbage.write_bytes(b"\xff\xff\xff\xff not protobuf")
    with pytest.raises(ConfigError, match="not a descriptor set"):
        types_from_set(garbage)
    # Without --include_imports: the Timestamp's file is missing.
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(generator.read_bytes())
    alone = descriptor_pb2.FileDescriptorSet(
        file=[f for f in files.file if f.name == "generator.proto"]
    )
    partial = tmp_path / "alone.binpb"
    partial.write_bytes(alone.SerializeToString())
    with pytest.raises(ConfigError, match="its imports included"):
        types_from_set(partial)
    monkeypatch.setattr(descriptors, "MAX_DESCRIPTOR_BYTES", 100)
    with pytest.raises(ConfigError, match="larger than"):
        types_from_set(generator)


def test_proto_files_are_compiled_with_their_imports_and_comments(tmp_path: Path) -> None:
    """The first way: .proto files, relative to an include path, the
    well-known types found without a copy, comments kept."""
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "common.proto").write_text(
        'syntax = "proto3";\npackage acme;\nmessage Tag { string name = 1; }\n'
    )
    (tmp_path / "acme" / "llm.proto").write_text(
        'syntax = "proto3";\npackage acme;\nimport "acme/common.proto";\n'
        'import "google/protobuf/duration.proto";\n'
        "message Ask {\n  // What to continue.\n  string text = 1;\n  Tag tag = 2;\n"
        "  google.protobuf.Duration budget = 3;\n}\n"
        "service Llm { rpc Go(Ask) returns (stream Tag); }\n"
    )
    types = types_from_protos((str(tmp_path / "acme" / "llm.proto"),), (str(tmp_path),))
    method = find_method(types.pool, "acme.Llm/Go", "protos")
    assert method.descriptor.output_type.full_name == "acme.Tag"
    assert types.notes[("acme.Ask", "text")] == "What to continue."
    assert len(types.digest) == 16


def test_a_proto_that_does_not_compile_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nmessage A {\n  string text = 1\n}\n')
    with pytest.raises(ConfigError) as caught:
        types_from_protos((str(broken),), ())
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("protos: ") and "broken.proto:4:1:" in message, message
    with pytest.raises(ConfigError, match="cannot read"):
        types_from_protos((str(tmp_path / "missing.proto"),), ())
