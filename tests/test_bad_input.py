"""Bad input from a careless client: each a clear 4xx (or a 502 naming the
backend's fault) before anything is created, never a 500, and never a
created prediction that then fails inside."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bridge import validation as validation_module
from bridge._proto.v1 import predictor_pb2 as pb
from bridge._proto.v1 import predictor_pb2_grpc
from bridge.backends import wire
from bridge.errors import BackendProtocolError, InvalidInput
from bridge.sdk import Model, ModelServer
from bridge.validation import MAX_JSON_DEPTH, validate_input
from tests.backends import RawServer
from tests.conftest import StartBridge, create
from tests.helpers import assert_problem, wait_status

ECHO = "/v1/models/demo/echo/predictions"


async def assert_nothing_created(client: httpx.AsyncClient) -> None:
    listed = await client.get("/v1/predictions")
    assert listed.status_code == 200
    assert listed.json()["results"] == []


def nested(depth: int) -> Any:
    """A JSON object nested *depth* levels (itself being level 1)."""
    value: Any = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


def measure(value: dict) -> int:
    """test/nest: how deep the value the backend received is."""
    return depth_of(value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"input": {"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        json.dumps({"input": {"prompt": nested(40)}}).encode(),
        # Deep enough for Python's parser, too deep for protobuf's Struct.
        json.dumps({"input": {"prompt": nested(MAX_JSON_DEPTH)}}).encode(),
    ],
    ids=["100k-deep", "40-deep", "one-past-the-bound"],
)
async def test_json_nested_too_deep_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(ECHO, content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400)
    assert f"deeper than {MAX_JSON_DEPTH} levels" in problem["detail"]
    await assert_nothing_created(client)


@pytest.fixture
async def nest(start_bridge: StartBridge) -> AsyncIterator[httpx.AsyncClient]:
    """A bridge serving test/nest, whose one input takes any object."""
    with ModelServer(Model("test/nest", measure)) as server:
        url = await start_bridge({"test/nest": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client


NEST = "/v1/models/test/nest/predictions"


async def test_the_deepest_input_allowed_reaches_the_backend_whole(
    nest: httpx.AsyncClient,
) -> None:
    # The body is level 1, "input" level 2, so "value" may nest to the
    # bound less two.
    response = await nest.post(
        NEST, json={"input": {"value": nested(MAX_JSON_DEPTH - 2)}}, headers={"Prefer": "wait"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "succeeded", response.json()
    assert response.json()["output"] == MAX_JSON_DEPTH - 2
    # One level more is refused before anything is created.
    response = await nest.post(NEST, json={"input": {"value": nested(MAX_JSON_DEPTH - 1)}})
    assert_problem(response, 400)
    assert len((await nest.get("/v1/predictions")).json()["results"]) == 1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "[1, NaN]", "-1e999"])
async def test_non_standard_numbers_are_400(nest: httpx.AsyncClient, literal: str) -> None:
    body = '{"input": {"value": {"x": ' + literal + "}}}"
    response = await nest.post(NEST, content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400)
    assert "NaN" in problem["detail"] or "out of range" in problem["detail"]
    await assert_nothing_created(nest)


@pytest.mark.parametrize(
    "body",
    [
        r'{"input": {"prompt": "a\ud800b"}}',
        r'{"input": {"prompt": "hi", "tokens": ["\udfff"]}}',
        r'{"input": {"prompt": "hi", "\ud800": 1}}',
    ],
    ids=["in-a-value", "in-a-list", "in-a-key"],
)
async def test_lone_surrogates_are_400(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(ECHO, content=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(response, 400)
    assert "lone surrogate" in problem["detail"]
    await assert_nothing_created(client)


async def test_a_surrogate_pair_is_one_character_and_fine(client: httpx.AsyncClient) -> None:
    body = r'{"input": {"prompt": "\ud83e\udd8a fox"}}'
    response = await client.post(
        ECHO, content=body, headers={"Content-Type": "application/json", "Prefer": "wait"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["output"] == ["\N{FOX FACE} ", "fox"]


@pytest.mark.parametrize(
    "webhook", ["http://[::1", "http://[::1]:99999/hook", "https://", "http://:80/x", "ftp://x/"]
)
async def test_malformed_webhook_urls_are_422(client: httpx.AsyncClient, webhook: str) -> None:
    response = await client.post(ECHO, json={"input": {"prompt": "hi"}, "webhook": webhook})
    problem = assert_problem(response, 422)
    assert problem["invalid_fields"][0]["field"] == "webhook"
    await assert_nothing_created(client)


async def test_prefer_wait_with_thousands_of_digits_is_the_longest_wait(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        ECHO, json={"input": {"prompt": "hi there"}}, headers={"Prefer": "wait=" + "9" * 5000}
    )
    assert response.status_code == 201, response.text
    assert response.headers["Preference-Applied"] == "wait"
    assert response.json()["status"] == "succeeded"
    listed = (await client.get("/v1/predictions")).json()["results"]
    assert [p["id"] for p in listed] == [response.json()["id"]]


async def test_unknown_input_fields_are_422_naming_each(client: httpx.AsyncClient) -> None:
    response = await client.post(
        ECHO, json={"input": {"prompt": "hi", "temprature": 0.7, "top_q": 1}}
    )
    problem = assert_problem(response, 422)
    assert sorted(f["field"] for f in problem["invalid_fields"]) == ["temprature", "top_q"]
    assert {f["type"] for f in problem["invalid_fields"]} == {"additionalProperties"}
    assert "temprature" in problem["detail"]
    await assert_nothing_created(client)


class BadSchema(predictor_pb2_grpc.PredictorServicer):
    """A backend whose Describe sends an input schema that is not JSON."""

    def __init__(self, input_schema_json: str) -> None:
        self.input_schema_json = input_schema_json

    async def Describe(self, request: Any, context: Any) -> Any:
        return pb.DescribeResponse(
            name="test/bad", version="v1", input_schema_json=self.input_schema_json
        )

    async def Predict(self, request: Any, context: Any) -> Any:
        yield wire.output_response(["never "])


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ("{not json", "an input schema that is not JSON"),
        ('{"type": NaN}', "an input schema that is not JSON"),
        ("[1, 2]", "an input schema that is not a JSON object"),
        ('{"type": 5}', "an input schema that is not a JSON Schema"),
        # Valid JSON, nested too deep to walk: a RecursionError was a 500
        # for every listing and every create by version id.
        ('{"not":' * 900 + "{}" + "}" * 900, "an input schema nested more than 64 levels deep"),
        ("[" * 100_000 + "]" * 100_000, "an input schema nested more than 64 levels deep"),
        ('{"type": "object", "description": "%s"}' % ("x" * 2**20), "an input schema of more"),
        # Python's own: no bounded engine runs it.
        ('{"properties": {"a": {"pattern": "^a\\\\Z"}}}', "an input schema with a pattern"),
    ],
    ids=[
        "not JSON",
        "NaN",
        "an array",
        "not a schema",
        "900 deep",
        "100,000 deep",
        "2 MB",
        "a pattern of Python's",
    ],
)
async def test_a_backend_that_sends_a_bad_schema_is_502(
    start_bridge: StartBridge, schema: str, said: str
) -> None:
    with RawServer(BadSchema(schema)) as server:
        url = await start_bridge({"test/bad": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            created = await client.post(
                "/v1/models/test/bad/predictions", json={"input": {"prompt": "x"}}
            )
            problem = assert_problem(created, 502)
            assert problem["detail"].startswith(f"model backend sent {said}")
            assert_problem(await client.get("/v1/models/test/bad"), 502)
            await assert_nothing_created(client)
            # One broken backend does not break the listing of the others.
            listed = await client.get("/v1/models")
            assert listed.status_code == 200
            names = {m["name"]: m["latest_version"] for m in listed.json()["results"]}
            assert names["bad"] is None and names["echo"] is not None
            await create(client, "demo/echo", {"prompt": "still fine"})
            assert (await client.get("/v1/deployments")).status_code == 200
            by_version = {"version": names["echo"]["id"], "input": {"prompt": "by version"}}
            assert (await client.post("/v1/predictions", json=by_version)).status_code == 201


def test_a_schema_with_a_remote_ref_is_never_fetched() -> None:
    """jsonschema-rs fetches remote $refs while compiling a schema; a
    backend's schema must not make the bridge send requests (nor wait for
    them on the event loop)."""
    fetched = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fetched.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        ref = f"http://127.0.0.1:{server.server_address[1]}/s.json"
        with pytest.raises(BackendProtocolError, match="a \\$ref that is not in it"):
            validate_input({"type": "object", "properties": {"a": {"$ref": ref}}}, {"a": "x"})
    finally:
        server.shutdown()
        thread.join()
    assert fetched == []


def test_a_schema_is_compiled_once_while_it_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model's schema is one object while its Describe answer is kept:
    each create looks its validators up, and an equal schema from a new
    answer is compiled again (its identity is the key, not its text)."""
    compiled = []
    real = validation_module._compile
    monkeypatch.setattr(validation_module, "_compile", lambda s: compiled.append(s) or real(s))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for n in range(100):
        validate_input(schema, {"n": n})
    with pytest.raises(InvalidInput):
        validate_input(schema, {"n": "x"})
    assert compiled == [schema]
    validate_input(dict(schema), {"n": 1})
    assert len(compiled) == 2


class EmptyOutputs(predictor_pb2_grpc.PredictorServicer):
    """A backend (not the SDK) that sends an output message with no chunks
    between two tokens: valid protobuf, and nothing to append."""

    async def Describe(self, request: Any, context: Any) -> Any:
        output = '{"type": "array", "x-cog-array-type": "iterator"}'
        return pb.DescribeResponse(name="test/empty", version="v1", output_schema_json=output)

    async def Predict(self, request: Any, context: Any) -> Any:
        yield wire.output_response(["a "])
        await asyncio.sleep(0.2)  # each its own batch, mostly (together, as well: no harm)
        yield pb.PredictResponse(output=pb.Output())
        await asyncio.sleep(0.2)
        yield wire.output_response(["b"])


async def test_an_output_message_with_no_chunks_is_nothing(start_bridge: StartBridge) -> None:
    """It adds no event and fails nothing (an empty batch once divided the
    inter-token gap by zero)."""
    with RawServer(EmptyOutputs()) as server:
        url = await start_bridge({"test/empty": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            created = await create(client, "test/empty", {})
            await wait_status(client, created, "succeeded")
            got = (await client.get(f"/v1/predictions/{created['id']}")).json()
            assert got["output"] == ["a ", "b"]
