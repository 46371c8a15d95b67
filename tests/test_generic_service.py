"""Any gRPC service, one config table away: a service written without the
bridge (its own proto, every RPC shape) bridged as a model, end to end
through a real bridge, real gRPC servers and HTTP."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2

from bridge.backends.generic.descriptors import types_from_set
from bridge.config import ConfigError, ModelSettings, OutputSettings, Settings
from bridge.server import serve
from tests.backends import RawServer
from tests.conftest import StartBridge, create, ended, poll_until, read_stream
from tests.helpers import descriptor_set

PROTO = """
syntax = "proto3";
package acme.llm.v1;

// Ask for a continuation.
message GenerateRequest {
  // What to continue.
  string text = 1;
  int32 max_new_tokens = 2;
  string model_id = 3;
  // Fail after the first token, as the service reports errors.
  bool fail = 4;
  // Send one token, then nothing (until cancelled).
  bool hang = 5;
  // Fail with this gRPC status (a code name) before any token.
  string status = 6;
  // A recursive type: its depth is the answer's one token.
  Node tree = 7;
  // Answer one token of this many KiB.
  int32 big_kib = 8;
}
message Node { Node child = 1; }
message Token { string text = 1; bytes raw = 2; }
message Usage { int64 completion_tokens = 1; }
message GenerateResponse {
  Token token = 1;
  string log_line = 2;
  string error_message = 3;
  bool is_final = 4;
  Usage usage = 5;
}

service Generator {
  rpc Generate(GenerateRequest) returns (stream GenerateResponse);
  rpc Complete(GenerateRequest) returns (GenerateResponse);
  // Stays open after its last answer, as inference servers' streams do.
  rpc Chat(stream GenerateRequest) returns (stream GenerateResponse);
  rpc Collect(stream GenerateRequest) returns (GenerateResponse);
}
"""


def _rich_status() -> bytes:
    """A google.rpc.Status with a BadRequest and a DebugInfo detail."""
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=3, message="bad request")
    violation = {"field": "max_new_tokens", "description": "must be at most 512"}
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status.details.add().Pack(error_details_pb2.DebugInfo(detail="see shard 7"))
    return status.SerializeToString()


LLM = OutputSettings(
    text="token.text",
    logs="log_line",
    error="error_message",
    done="is_final",
    metrics={"output_token_count": "usage.completion_tokens"},
)


class Acme:
    """The service, as its team wrote it: no bridge in sight."""

    def __init__(self, types_file: Path) -> None:
        self.pool = pool = types_from_set(types_file).pool
        self.Request = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("acme.llm.v1.GenerateRequest")
        )
        self.Response = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("acme.llm.v1.GenerateResponse")
        )
        #: Calls the service saw cancelled, by method.
        self.cancelled: dict[str, threading.Event] = {
            name: threading.Event() for name in ("Generate", "Chat")
        }
        #: The metadata of the last call.
        self.metadata: dict[str, str] = {}

    def handler(self) -> grpc.GenericRpcHandler:
        def kind(make: Any, fn: Any) -> Any:
            return make(
                fn,
                request_deserializer=self.Request.FromString,
                # bytes as they are: a message that does not decode
                response_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            "acme.llm.v1.Generator",
            {
                "Generate": kind(grpc.unary_stream_rpc_method_handler, self.generate),
                "Complete": kind(grpc.unary_unary_rpc_method_handler, self.complete),
                "Chat": kind(grpc.stream_stream_rpc_method_handler, self.chat),
                "Collect": kind(grpc.stream_unary_rpc_method_handler, self.collect),
            },
        )

    def _tokens(self, request: Any) -> Iterator[Any]:
        words = request.text.split()[: request.max_new_tokens or None]
        for word in words:
            yield self.Response(token={"text": word + " ", "raw": word.encode()})
        yield self.Response(is_final=True, usage={"completion_tokens": len(words)})

    async def generate(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.metadata = {k: v for k, v in context.invocation_metadata()}
        if request.status == "INVALID_ARGUMENT":  # as Google's APIs answer
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad request",
                trailing_metadata=(("grpc-status-details-bin", _rich_status()),),
            )
        if request.status == "LONG_ERROR":
            yield self.Response(error_message="e" * 10_000)
            return
        if request.status:
            await context.abort(grpc.StatusCode[request.status], "told to fail")
        if request.big_kib:
            yield self.Response(token={"raw": b"x" * (request.big_kib << 10)})
            return
        if request.HasField("tree"):
            depth, node = 0, request.tree
            while node.HasField("child"):
                depth, node = depth + 1, node.child
            yield self.Response(token={"text": f"{depth} deep"})
            return
        yield self.Response(log_line=f"generating with {request.model_id or 'no model'}")
        try:
            for response in self._tokens(request):
                yield response
                if request.fail:
                    yield self.Response(error_message="out of memory")
                    return
                if request.hang:
                    await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled["Generate"].set()
            raise

    async def complete(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.status == "GARBAGE":
            return b"\xff\xff\xff\xff\x0f\x01"
        return self.Response(token={"text": request.text.upper()})

    async def chat(self, requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for request in requests:
                for response in self._tokens(request):
                    yield response
            await asyncio.sleep(3600)  # never ends by itself
        except asyncio.CancelledError:
            self.cancelled["Chat"].set()
            raise

    async def collect(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        texts = [request.text async for request in requests]  # until the half-close
        return self.Response(token={"text": " ".join(texts)})


@pytest.fixture(scope="module")
def acme_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return descriptor_set(tmp_path_factory.mktemp("acme"), "generator", PROTO)


@pytest.fixture(scope="module")
def acme(acme_types: Path) -> Iterator[tuple[Acme, str]]:
    service = Acme(acme_types)
    with RawServer(service.handler()) as server:
        yield service, server.target


def model(acme_types: Path, method: str, **options: Any) -> dict[str, Any]:
    return {"method": f"acme.llm.v1.Generator/{method}", "descriptor_set": str(acme_types)} | (
        options
    )


async def bridged(
    start_bridge: StartBridge, target: str, options: dict[str, Any]
) -> httpx.AsyncClient:
    url = await start_bridge({"acme/llm": target}, {"acme/llm": options})
    return httpx.AsyncClient(base_url=url, timeout=30)


async def test_a_streaming_method_is_a_language_model(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    options = model(acme_types, "Generate", output=LLM, input={"model_id": "acme-7b"})
    async with await bridged(start_bridge, target, options) as client:
        schema = (await client.get("/v1/models/acme/llm")).json()["latest_version"]
        properties = schema["openapi_schema"]["components"]["schemas"]["Input"]["properties"]
        assert properties["text"]["description"] == "What to continue."
        assert "model_id" not in properties  # fixed by the config
        prediction = await create(
            client, "acme/llm", {"text": "Once upon a time", "max_new_tokens": 3}
        )
        events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert [e.data for e in events if e.event == "output"] == ["Once ", "upon ", "a "]
        assert events[-1].event == "done"
        done = await ended(client, prediction["id"])
        assert done["status"] == "succeeded"
        assert done["output"] == ["Once ", "upon ", "a "]
        assert done["logs"] == "generating with acme-7b\n"
        assert done["metrics"]["output_token_count"] == 3
        refused = await create(client, "acme/llm", {"text": "x", "model_id": "other"}, status=422)
        assert "model_id" in refused["detail"]


async def test_the_error_field_fails_the_prediction_with_its_text(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    async with await bridged(
        start_bridge, target, model(acme_types, "Generate", output=LLM)
    ) as client:
        prediction = await create(client, "acme/llm", {"text": "one two", "fail": True})
        done = await ended(client, prediction["id"])
        assert (done["status"], done["error"], done["output"]) == (
            "failed",
            "out of memory",
            ["one "],
        )
        prediction = await create(client, "acme/llm", {"text": "x", "status": "LONG_ERROR"})
        done = await ended(client, prediction["id"])
        assert done["error"] == "e" * 1999 + "…"  # bounded


async def test_a_cancel_reaches_the_service(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    service, target = acme
    service.cancelled["Generate"].clear()
    async with await bridged(
        start_bridge, target, model(acme_types, "Generate", output=LLM)
    ) as client:
        prediction = await create(client, "acme/llm", {"text": "one two", "hang": True})
        async with client.stream("GET", prediction["urls"]["stream"]) as stream:
            async for line in stream.aiter_lines():
                if line == "event: output":
                    break
        await client.post(f"/v1/predictions/{prediction['id']}/cancel")
        done = await ended(client, prediction["id"])
        assert done["status"] == "canceled"
        await trio.to_thread.run_sync(service.cancelled["Generate"].wait, 10)
        assert service.cancelled["Generate"].is_set()


async def test_a_status_fails_the_prediction_as_predict_does(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    async with await bridged(
        start_bridge, target, model(acme_types, "Generate", output=LLM)
    ) as client:
        prediction = await create(client, "acme/llm", {"text": "x", "status": "RESOURCE_EXHAUSTED"})
        done = await ended(client, prediction["id"])
        assert done["status"] == "failed"
        assert done["error"] == "model backend error RESOURCE_EXHAUSTED: told to fail"
        # A google.rpc.Status trailer's readable details follow the message.
        prediction = await create(client, "acme/llm", {"text": "x", "status": "INVALID_ARGUMENT"})
        done = await ended(client, prediction["id"])
        assert done["error"] == (
            "model backend error INVALID_ARGUMENT: bad request "
            "(max_new_tokens: must be at most 512)"
        )  # and not the DebugInfo ("see shard 7"): not for the API's users


async def test_each_message_is_an_output_by_default(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    async with await bridged(start_bridge, target, model(acme_types, "Generate")) as client:
        prediction = await create(client, "acme/llm", {"text": "hi", "model_id": "m"})
        done = await ended(client, prediction["id"])
        assert done["output"] == [
            {"log_line": "generating with m"},
            {"token": {"text": "hi ", "raw": "aGk="}},  # proto names; bytes as base64
            {"is_final": True, "usage": {"completion_tokens": "1"}},  # int64: a string
        ]


@pytest.mark.parametrize("text", ["token.raw", "not_null(token.raw)"])
async def test_an_expression_on_bytes_gives_text(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path, text: str
) -> None:
    """A plain path (read from the message) and any other expression (over
    its JSON) alike: bytes as UTF-8, not base64."""
    _service, target = acme
    options = model(acme_types, "Generate", output=OutputSettings(text=text))
    async with await bridged(start_bridge, target, options) as client:
        prediction = await create(client, "acme/llm", {"text": "one two"})
        done = await ended(client, prediction["id"])
        assert done["output"] == ["one", "two"]


def nested(depth: int) -> dict[str, Any]:
    """A Node *depth* children deep."""
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"child": node}
    return node


async def test_recursive_deep_and_huge_messages_are_bounded(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    url = await start_bridge(
        {"acme/llm": target, "acme/raw": target},
        {
            "acme/llm": model(acme_types, "Generate", output=LLM),
            "acme/raw": model(acme_types, "Generate", max_output_bytes=1 << 20),
        },
        max_body_bytes=1 << 20,
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # A recursive type takes what the body's nesting bound allows...
        prediction = await create(client, "acme/llm", {"tree": nested(28)})
        assert (await ended(client, prediction["id"]))["output"] == ["28 deep"]
        # ... and no more, refused before anything runs.
        deep = await client.post(
            "/v1/models/acme/llm/predictions", json={"input": {"tree": nested(40)}}
        )
        assert deep.status_code == 400 and "nests deeper than 32 levels" in deep.json()["detail"]
        huge = await client.post(
            "/v1/models/acme/llm/predictions", json={"input": {"text": "x " * (1 << 19)}}
        )
        assert huge.status_code == 413
        # An answer over gRPC's 4 MiB message limit fails the prediction.
        prediction = await create(client, "acme/llm", {"big_kib": 5 << 10})
        done = await ended(client, prediction["id"])
        assert done["status"] == "failed"
        assert done["error"].startswith("model backend error RESOURCE_EXHAUSTED")
        # One of 3 MiB, whose JSON (bytes as base64) is 4 MiB, is charged as output.
        prediction = await create(client, "acme/raw", {"big_kib": 3 << 10})
        done = await ended(client, prediction["id"])
        assert done["status"] == "failed"
        assert done["error"].startswith("output exceeded max_output_bytes (1048576 bytes")
        with trio.fail_after(5):  # and the server answers at once
            assert (await client.get("/health")).status_code == 200


async def test_a_unary_method_gives_one_output(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    async with await bridged(start_bridge, target, model(acme_types, "Complete")) as client:
        prediction = await create(client, "acme/llm", {"text": "hello"})
        done = await ended(client, prediction["id"])
        assert (done["status"], done["output"]) == ("succeeded", {"token": {"text": "HELLO"}})
        prediction = await create(client, "acme/llm", {"text": "x", "status": "GARBAGE"})
        done = await ended(client, prediction["id"])
        assert (done["status"], done["error"]) == (
            "failed",
            "model backend sent a message that cannot be decoded",
        )


async def test_a_bidirectional_stream_is_read_until_done_then_cancelled(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    service, target = acme
    service.cancelled["Chat"].clear()
    async with await bridged(start_bridge, target, model(acme_types, "Chat", output=LLM)) as client:
        prediction = await create(client, "acme/llm", {"text": "to and fro"})
        done = await ended(client, prediction["id"])
        assert (done["status"], done["output"]) == ("succeeded", ["to ", "and ", "fro "])
        await trio.to_thread.run_sync(service.cancelled["Chat"].wait, 10)
        assert service.cancelled["Chat"].is_set()


async def test_a_client_stream_is_sent_one_request_then_half_closed(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    options = model(acme_types, "Collect", output=OutputSettings(text="token.text"))
    async with await bridged(start_bridge, target, options) as client:
        prediction = await create(client, "acme/llm", {"text": "all of it"})
        done = await ended(client, prediction["id"])
        assert (done["status"], done["output"]) == ("succeeded", ["all of it"])


async def test_health_watch_by_reflection_is_a_model(start_bridge: StartBridge) -> None:
    """grpc.health.v1.Health/Watch, a real server-streaming RPC, its types
    asked of the server by reflection; ``done`` a JMESPath comparison."""
    names = (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,)
    with RawServer(None, health=True, reflect=(names, None)) as served:
        served.set_health("SERVING", "acme")
        options = {
            "method": "grpc.health.v1.Health/Watch",
            "reflection": True,
            "output": OutputSettings(done="status == 'NOT_SERVING'"),
        }
        async with await bridged(start_bridge, served.target, options) as client:
            got = (await client.get("/v1/models/acme/llm")).json()
            assert "latest_version" in got, got
            version = got["latest_version"]
            schema = version["openapi_schema"]["components"]["schemas"]["Input"]
            assert set(schema["properties"]) == {"service"}
            prediction = await create(client, "acme/llm", {"service": "acme"})

            async def first_output() -> bool:
                got = (await client.get(f"/v1/predictions/{prediction['id']}")).json()
                return bool(got["output"])

            await poll_until(first_output)
            served.set_health("NOT_SERVING", "acme")
            done = await ended(client, prediction["id"])
            assert done["status"] == "succeeded"
            assert done["output"] == [{"status": "SERVING"}, {"status": "NOT_SERVING"}]


def _reflected(service: Acme, address: str = "127.0.0.1:0", *intercept: Any) -> RawServer:
    """*service* with health and reflection over its types, on *address*
    (a redeploy: the same address again, new types)."""
    names = ("acme.llm.v1.Generator",)
    return RawServer(
        service.handler(),
        health=True,
        address=address,
        reflect=(names, service.pool),
        interceptors=intercept,
    )


async def test_a_redeployed_services_new_types_are_taken_by_reflection(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """The service comes back on its address with a new field: the next
    describe (here after describe_ttl_seconds) asks reflection again."""
    added = PROTO.replace("  int32 big_kib = 8;\n", "  int32 big_kib = 8;\n  string persona = 9;\n")
    (tmp_path / "v1").mkdir(), (tmp_path / "v2").mkdir()
    before = Acme(descriptor_set(tmp_path / "v1", "generator", PROTO))
    after = Acme(descriptor_set(tmp_path / "v2", "generator", added))
    options = model(Path(), "Generate", output=LLM) | {"descriptor_set": None, "reflection": True}
    with _reflected(before) as first:
        url = await start_bridge(
            {"acme/llm": first.target}, {"acme/llm": options}, describe_ttl_seconds=0.2
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            old = (await client.get("/v1/models/acme/llm")).json()["latest_version"]
            refused = await create(client, "acme/llm", {"text": "a", "persona": "x"}, status=422)
            assert "persona" in refused["detail"]
    with _reflected(after, first.target):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def redescribed() -> bool:
                got = (await client.get("/v1/models/acme/llm")).json()
                return got.get("latest_version", old)["id"] != old["id"]

            await poll_until(redescribed)
            new = (await client.get("/v1/models/acme/llm")).json()["latest_version"]
            schemas = new["openapi_schema"]["components"]["schemas"]
            assert "persona" in schemas["Input"]["properties"]
            prediction = await create(client, "acme/llm", {"text": "a b", "persona": "x"})
            assert (await ended(client, prediction["id"]))["output"] == ["a ", "b "]


class _Keys(grpc.aio.ServerInterceptor):
    """Records each call's method and x-api-key, x-request-id."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        sent = dict(details.invocation_metadata or ())
        self.seen.append((details.method, sent.get("x-api-key"), sent.get("x-request-id")))
        return await continuation(details)


async def test_metadata_goes_with_every_call(start_bridge: StartBridge, acme_types: Path) -> None:
    """The model's [metadata] on reflection, health and the calls; its
    forward_headers on the calls, and a value gRPC cannot carry refused."""
    service, keys = Acme(acme_types), _Keys()
    options = model(Path(), "Generate", output=LLM) | {
        "descriptor_set": None,
        "reflection": True,
        "metadata": {"x-api-key": "k1"},
        "forward_headers": ("x-request-id",),
    }
    with _reflected(service, "127.0.0.1:0", keys) as served:
        url = await start_bridge({"acme/llm": served.target}, {"acme/llm": options})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await client.get("/health")  # asks every target's grpc.health.v1
            headers = {"x-request-id": "r1"}
            prediction = await create(client, "acme/llm", {"text": "a"}, headers=headers)
            assert (await ended(client, prediction["id"]))["status"] == "succeeded"
            refused = await client.post(
                "/v1/models/acme/llm/predictions",
                json={"input": {"text": "a"}},
                headers={"x-request-id": "caf\u00e9".encode()},
            )
            assert refused.status_code == 400
            assert "x-request-id" in refused.json()["detail"]
            refused = await client.post(
                "/v1/models/acme/llm/predictions",
                json={"input": {"text": "a"}},
                headers={"x-request-id": "r" * 9000},  # over gRPC's bound on metadata
            )
            assert refused.status_code == 400
            assert "over 8192 bytes" in refused.json()["detail"]
            with trio.fail_after(5):  # and the server answers at once
                assert (await client.get("/health")).status_code == 200
    methods = {method for method, _, _ in keys.seen}
    assert {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
        "/acme.llm.v1.Generator/Generate",
    } <= methods
    assert {key for _, key, _ in keys.seen} == {"k1"}
    assert ("/acme.llm.v1.Generator/Generate", "k1", "r1") in keys.seen


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"metadata": {"X-Key": "v"}}, "metadata 'X-Key': gRPC metadata keys are lowercase"),
        ({"metadata": {"grpc-timeout": "1S"}}, "not grpc-* nor -bin"),
        ({"metadata": {"x-token-bin": "AAA="}}, "not grpc-* nor -bin"),
        ({"metadata": {"x-key": "caf\u00e9"}}, "metadata 'x-key': a value is printable ASCII"),
        ({"forward_headers": ["X-Request-Id"]}, "forward_headers 'X-Request-Id': a header name"),
    ],
)
def test_metadata_grpc_cannot_send_is_refused_in_the_config(
    table: dict[str, Any], message: str
) -> None:
    """On any model, bridge.v1's too: at startup, not as each call fails."""
    models = {"models": {"me/echo": {"targets": ["127.0.0.1:1"], **table}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_dict(models)


def test_what_reflection_may_answer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files and bytes both; and a service the server does not know is
    said so, not waited for."""
    from bridge.backends.generic import reflection as asking
    from bridge.errors import BackendProtocolError

    async def ask(target: str, service: str) -> Any:
        async with grpc.aio.insecure_channel(target) as channel:
            return await asking.ask(channel, service)

    names = (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,)
    with RawServer(None, health=True, reflect=(names, None)) as served:
        files = asyncio.run(ask(served.target, "grpc.health.v1.Health"))
        assert [f.name for f in files.file] == ["grpc_health/v1/health.proto"]
        with pytest.raises(BackendProtocolError, match="could not answer"):
            asyncio.run(ask(served.target, "acme.Nope"))
        monkeypatch.setattr(asking, "MAX_DESCRIPTOR_BYTES", 100)
        with pytest.raises(BackendProtocolError, match="reflection answered more than"):
            asyncio.run(ask(served.target, "grpc.health.v1.Health"))


def test_a_reflection_that_never_sends_an_import_is_not_waited_for() -> None:
    """A server that answers every request, but with the wrong file: once
    every import was asked for and answered, the answer is refused."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as pb

    from bridge.backends.generic import reflection as asking
    from bridge.errors import BackendProtocolError

    lying = descriptor_pb2.FileDescriptorProto(name="acme.proto", dependency=["gone.proto"])

    async def answer(requests: Any, context: Any) -> AsyncIterator[Any]:
        async for _ in requests:  # whatever is asked, the same file
            files = pb.FileDescriptorResponse(file_descriptor_proto=[lying.SerializeToString()])
            yield pb.ServerReflectionResponse(file_descriptor_response=files)

    handler = grpc.method_handlers_generic_handler(
        "grpc.reflection.v1.ServerReflection",
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                answer,
                pb.ServerReflectionRequest.FromString,
                pb.ServerReflectionResponse.SerializeToString,
            )
        },
    )

    async def ask(target: str) -> Any:
        async with grpc.aio.insecure_channel(target) as channel:
            return await asyncio.wait_for(asking.ask(channel, "acme.Service"), 10)

    with (
        RawServer(handler) as server,
        pytest.raises(BackendProtocolError, match=r"reflection did not send gone\.proto"),
    ):
        asyncio.run(ask(server.target))


async def test_bridge_v1_through_the_generic_path_gives_the_same_events(
    start_bridge: StartBridge, demo_targets: dict[str, str]
) -> None:
    """bridge.v1's own Predict, named as any service's method, with
    ``text`` its chunks: the same events as the native path."""
    proto = Path(__file__).parent.parent / "proto"
    options = {
        "method": "bridge.v1.Predictor/Predict",
        "protos": (str(proto / "bridge" / "v1" / "predictor.proto"),),
        "proto_path": (str(proto),),
        "output": OutputSettings(text="output.chunks[].text", logs="log"),
    }
    url = await start_bridge({"acme/echo": demo_targets["demo/echo"]}, {"acme/echo": options})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        said = "the same words either way"
        native = await create(client, "demo/echo", {"prompt": said})
        generic = await create(client, "acme/echo", {"input": {"prompt": said}})
        kept = ("output", "logs", "done")
        events = []
        for prediction in (native, generic):
            read, _ = await read_stream(client, prediction["urls"]["stream"])
            events.append([(e.event, e.data) for e in read if e.event in kept])
        assert events[0] == events[1]
        assert next(data for event, data in events[0] if event == "output") == "the "


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "acme.llm.v1.Generator/Nope"}, "has no method Nope"),
        ({"output": OutputSettings(text="token.nope")}, "acme.llm.v1.Token has no field 'nope'"),
        ({"output": OutputSettings(text="token[")}, "not a JMESPath expression"),
        ({"input": {"max_new_tokens": "many"}}, "input"),
    ],
)
async def test_a_model_that_does_not_fit_its_service_is_refused_at_startup(
    tmp_path: Path, acme_types: Path, options: dict[str, Any], message: str
) -> None:
    spec = model(acme_types, "Generate") | options
    settings = Settings(
        port=0, models={"acme/llm": ModelSettings("acme/llm", ("127.0.0.1:1",), **spec)}
    )
    with pytest.raises(ConfigError, match=message) as caught:
        await serve(settings)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith('[models."acme/llm"]')


def documented_config() -> str:
    """The first config block of docs/grpc-services.md, as written."""
    import re

    doc = (Path(__file__).parent.parent / "docs" / "grpc-services.md").read_text()
    return re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)[0]


def _write_config(where: Path, target: str, proto: str = PROTO) -> Path:
    protos = where / "protos" / "acme" / "llm" / "v1"
    protos.mkdir(parents=True, exist_ok=True)
    (protos / "generator.proto").write_text(proto)
    config = where / "bridge.toml"
    config.write_text(documented_config().replace("10.0.0.5:9000", target))
    return config


async def test_the_documented_table_serves_from_proto_files(
    nursery: trio.Nursery, tmp_path: Path, acme: tuple[Acme, str]
) -> None:
    """The config as docs/grpc-services.md writes it: .proto files relative
    to the config file, compiled by the bridge; metadata sent."""
    service, target = acme
    config = _write_config(tmp_path / "project", target)
    settings = Settings.from_toml(config, port=0, webhook_secret_file=str(tmp_path / "secret"))
    port = await nursery.start(serve, settings)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        headers = {"X-Request-Id": "req-7", "Authorization": "Bearer not-for-the-service"}
        prediction = await create(
            client, "acme/llm", {"text": "a b c d", "max_new_tokens": 2}, headers=headers
        )
        done = await ended(client, prediction["id"])
        assert (done["output"], done["logs"]) == (["a ", "b "], "generating with acme-7b\n")
        assert service.metadata["x-api-key"] == "..."
        assert service.metadata["x-request-id"] == "req-7"
        assert "authorization" not in service.metadata and "traceparent" not in service.metadata


def test_check_compiles_a_configs_protos_or_says_where_they_are_wrong(tmp_path: Path) -> None:
    """``python -m bridge check`` (``make proto CONFIG=...``): a compile
    error before ``make run``, in one line naming the file and line."""
    import subprocess
    import sys

    config = _write_config(tmp_path, "127.0.0.1:1")
    command = [sys.executable, "-m", "bridge", "check", "--config", str(config)]
    good = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert good.returncode == 0, good.stderr
    assert "acme/llm: acme.llm.v1.Generator/Generate (server-streaming), version " in good.stdout
    _write_config(tmp_path, "127.0.0.1:1", PROTO.replace("bool is_final = 4;", "bool is_final = 4"))
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith('error: [models."acme/llm"] protos: ')
    # protoc reports the missing ";" on the line after it.
    line = PROTO.splitlines().index("  bool is_final = 4;") + 2
    assert f"acme/llm/v1/generator.proto:{line}:" in bad.stderr, bad.stderr


async def test_the_official_clients_drive_a_bridged_service(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    """Replicate's and OpenAI's official clients, unchanged, against a
    bridged method whose text input is not called prompt: its OpenAI table
    says where OpenAI's fields go."""
    import openai
    import replicate
    from replicate.stream import ServerSentEvent

    from tests.helpers import in_thread

    _service, target = acme
    table = {"prompt": "text", "max_tokens": "max_new_tokens"}
    options = model(acme_types, "Generate", output=LLM, openai=table)
    url = await start_bridge({"acme/llm": target}, {"acme/llm": options})
    rc = replicate.Client(api_token="r8_test", base_url=url)

    def run() -> list[str]:
        events = rc.stream("acme/llm", input={"text": "Once upon a time", "max_new_tokens": 3})
        return [str(e) for e in events if e.event == ServerSentEvent.EventType.OUTPUT]

    assert await in_thread(run) == ["Once ", "upon ", "a "]
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(
        model="acme/llm",
        messages=[{"role": "user", "content": "Once upon a time"}],
        max_tokens=2,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Once upon "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_chat_to_a_model_without_a_prompt_input_says_how_to_map_it(
    start_bridge: StartBridge, acme: tuple[Acme, str], acme_types: Path
) -> None:
    _service, target = acme
    options = model(acme_types, "Generate", output=LLM, input={"max_new_tokens": 1})
    async with await bridged(start_bridge, target, options) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "acme/llm", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 400, response.text
        message = response.json()["error"]["message"]
        assert 'prompt = "<input>"' in message and "acme/llm" in message, message
