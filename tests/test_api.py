"""The HTTP API's contract: prediction objects and every bad-input case."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import create
from tests.helpers import ISO, assert_problem


async def test_prediction_object_shape(client: httpx.AsyncClient) -> None:
    body = await create(client, "demo/echo", {"prompt": "hi"})
    assert set(body) == {
        "id", "model", "version", "status", "input", "output", "logs", "error", "metrics",
        "created_at", "started_at", "completed_at", "urls", "data_removed",
    }  # fmt: skip
    assert body["data_removed"] is False
    assert re.fullmatch(r"[a-z2-7]{26}", body["id"])
    assert body["model"] == "demo/echo"
    assert re.fullmatch(r"[0-9a-f]{64}", body["version"])
    assert body["status"] == "starting"
    assert body["input"] == {"prompt": "hi"}
    assert ISO.match(body["created_at"])
    base = f"{client.base_url}".rstrip("/")
    assert body["urls"] == {
        "get": f"{base}/v1/predictions/{body['id']}",
        "cancel": f"{base}/v1/predictions/{body['id']}/cancel",
        "stream": f"{base}/v1/predictions/{body['id']}/stream",
        "web": f"{base}/?prediction={body['id']}",
    }
    got = (await client.get(body["urls"]["get"])).json()
    assert got["id"] == body["id"] and got["status"] in {"starting", "processing", "succeeded"}


@pytest.mark.parametrize("form", ["id", "owner/name:id", "owner/name"])
async def test_create_by_version(client: httpx.AsyncClient, form: str) -> None:
    version = (await create(client, "demo/echo", {"prompt": "x"}))["version"]
    ref = {"id": version, "owner/name:id": f"demo/echo:{version}", "owner/name": "demo/echo"}
    response = await client.post(
        "/v1/predictions", json={"version": ref[form], "input": {"prompt": "hello"}}
    )
    assert response.status_code == 201, response.text
    assert response.json()["model"] == "demo/echo"
    assert response.json()["version"] == version


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"\xff\xfe",
        b'{"input": {}',
        # Not UTF-8 inside a string: msgspec raises UnicodeDecodeError there.
        b'{"input": "\xff"}',
        b'{"input": "\xed\xa0\x80"}',
        b'{"input": "\xc3"}',
    ],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    for path in ("/v1/predictions", "/v1/models/demo/echo/predictions"):
        response = await client.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        if body == b"" and path.startswith("/v1/models"):
            # An empty body is an empty object: no input, so the schema says 422.
            assert_problem(response, 422)
        else:
            assert_problem(response, 400)


async def test_missing_version_is_400(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.post("/v1/predictions", json={"input": {}}), 400)
    assert "version" in body["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/demo/nope/predictions",
        "/v1/models/nobody/echo/predictions",
    ],
)
async def test_unknown_model_is_404(client: httpx.AsyncClient, path: str) -> None:
    assert_problem(await client.post(path, json={"input": {"prompt": "x"}}), 404)


@pytest.mark.parametrize(
    "version", ["0" * 64, "demo/echo:" + "0" * 64, "demo/nope:abc", "demo/nope"]
)
async def test_unknown_version_is_404(client: httpx.AsyncClient, version: str) -> None:
    response = await client.post(
        "/v1/predictions", json={"version": version, "input": {"prompt": "x"}}
    )
    assert_problem(response, 404)


@pytest.mark.parametrize("suffix", ["", "/stream"])
async def test_unknown_prediction_is_404(client: httpx.AsyncClient, suffix: str) -> None:
    body = assert_problem(await client.get(f"/v1/predictions/doesnotexist{suffix}"), 404)
    assert "doesnotexist" in body["detail"]


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404)
    assert_problem(await client.delete("/v1/predictions"), 405)


async def test_missing_required_field_is_422(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/v1/models/demo/echo/predictions", json={"input": {}}), 422
    )
    assert body["invalid_fields"] == [
        {"type": "required", "field": "prompt", "description": "prompt is required"}
    ]
    assert "prompt" in body["detail"]


async def test_wrong_types_are_422_with_every_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/predictions",
        json={"version": "demo/echo", "input": {"prompt": 5, "repeat": "twice"}},
    )
    body = assert_problem(response, 422)
    assert {f["field"] for f in body["invalid_fields"]} == {"prompt", "repeat"}
    assert all(f["type"] == "type" for f in body["invalid_fields"])


async def test_input_must_be_an_object(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/demo/echo/predictions", json={"input": ["not", "an", "object"]}
    )
    body = assert_problem(response, 422)
    assert body["invalid_fields"][0]["field"] == "input"


async def test_a_mistaken_request_says_what_to_do(client: httpx.AsyncClient) -> None:
    """An unknown model's 404 lists the served ones; an input sent without
    its ``input`` object says so; a refused webhook is titled as one."""
    unknown = await client.get("/v1/models/demo/nope")
    assert unknown.status_code == 404
    assert "(served: " in unknown.json()["detail"] and "demo/echo" in unknown.json()["detail"]
    unwrapped = await client.post("/v1/models/demo/echo/predictions", json={"prompt": "x"})
    assert unwrapped.status_code == 422
    assert unwrapped.json()["detail"] == (
        "input.prompt: prompt is required; prompt given beside input, not in it: "
        'send {"input": {...}}'
    )
    hooked = await client.post(
        "/v1/models/demo/echo/predictions",
        json={"input": {"prompt": "x"}, "webhook": "ftp://example.com/hook"},
    )
    assert hooked.status_code == 422 and hooked.json()["title"] == "Webhook refused"
