"""Replicate's API beyond create/get/stream: cancel, polling, Prefer: wait,
list, models and versions, direct streaming create."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import trio

from tests.conftest import StartBridge, create, ended, read_stream, wait_closed
from tests.helpers import ISO, assert_problem
from tests.sse_clients import spec_events


async def _outputs_seen(client: httpx.AsyncClient, url: str, count: int) -> None:
    """Read *url*'s stream until *count* outputs arrived, then hang up."""
    seen = 0
    async with client.stream("GET", url) as response:
        async for line in response.aiter_lines():
            seen += line == "event: output"
            if seen >= count:
                return


async def test_cancel_stops_the_backend_and_ends_every_stream(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    prediction = await create(client, "test/endless", {"key": key})
    streams: list = []

    async def reader() -> None:
        streams.append((await read_stream(client, prediction["urls"]["stream"]))[0])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reader)
        await _outputs_seen(client, prediction["urls"]["stream"], 3)
        # The JS client posts an empty body with a JSON content type.
        response = await client.post(
            prediction["urls"]["cancel"], headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    for events in streams:
        assert events[-1].event == "done"
        assert json.loads(events[-1].data) == {"reason": "canceled"}
        assert "error" not in [e.event for e in events]
    # The backend's generator was closed (it never ends by itself).
    probe = await wait_closed(key)
    made = probe.made
    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["status"] == "canceled" and final["completed_at"]
    assert len(final["output"]) <= made


async def test_cancel_is_idempotent_and_leaves_ended_predictions_alone(
    client: httpx.AsyncClient,
) -> None:
    done = await create(client, "demo/echo", {"prompt": "a b"})
    await read_stream(client, done["urls"]["stream"])
    for _ in range(2):
        response = await client.post(done["urls"]["cancel"])
        assert response.status_code == 200
        assert response.json()["status"] == "succeeded"
        assert response.json()["output"] == ["a ", "b"]
    running = await create(client, "test/endless", {"key": uuid.uuid4().hex})
    first = (await client.post(running["urls"]["cancel"])).json()
    second = (await client.post(running["urls"]["cancel"], content=b"")).json()
    assert first["status"] == second["status"] == "canceled"
    assert first["completed_at"] == second["completed_at"]
    assert_problem(await client.post("/v1/predictions/nope/cancel"), 404)


async def test_polling_shows_growing_output_logs_and_metrics(client: httpx.AsyncClient) -> None:
    prediction = await create(
        client, "demo/echo", {"prompt": "one two three four five six", "delay_ms": 150}
    )
    seen = []
    with trio.fail_after(20):
        while True:
            now = (await client.get(prediction["urls"]["get"])).json()
            seen.append(now)
            if now["status"] in ("succeeded", "failed", "canceled"):
                break
            await trio.sleep(0.05)
    statuses = [s["status"] for s in seen]
    assert "processing" in statuses and statuses[-1] == "succeeded"
    lengths = [len(s["output"] or []) for s in seen]
    assert lengths == sorted(lengths) and len(set(lengths)) > 2  # it grew, step by step
    final = seen[-1]
    assert final["output"] == ["one ", "two ", "three ", "four ", "five ", "six"]
    assert final["logs"] == "echoing 6 chunks\n"
    assert set(final["metrics"]) == {
        "predict_time",
        "time_to_first_token",
        "tokens_per_second",
        "total_time",
    }
    assert 0 < final["metrics"]["time_to_first_token"] < final["metrics"]["predict_time"]
    assert final["metrics"]["tokens_per_second"] > 0
    for field in ("created_at", "started_at", "completed_at"):
        assert ISO.match(final[field])
    assert final["created_at"] <= final["started_at"] <= final["completed_at"]


@pytest.mark.parametrize("path", ["/v1/predictions", "/v1/models/demo/echo/predictions"])
async def test_prefer_wait(client: httpx.AsyncClient, path: str) -> None:
    body = {"version": "demo/echo", "input": {"prompt": "quick one"}}
    fast = await client.post(path, json=body, headers={"Prefer": "wait"})
    assert fast.status_code == 201
    assert fast.headers["Preference-Applied"] == "wait"
    assert fast.json()["status"] == "succeeded"
    assert fast.json()["output"] == ["quick ", "one"]

    slow_body = {"version": "demo/echo", "input": {"prompt": "a b c", "delay_ms": 1500}}
    start = trio.current_time()
    slow = await client.post(path, json=slow_body, headers={"Prefer": "wait=1"})
    assert 0.9 < trio.current_time() - start < 5
    assert slow.headers["Preference-Applied"] == "wait"
    # Not done: it reads as starting, with no output yet, so that clients
    # polling from here (replicate's output_iterator) miss no chunk.
    assert slow.json()["status"] == "starting"
    assert slow.json()["output"] is None
    plain = await client.post(path, json=body)
    assert "Preference-Applied" not in plain.headers


async def test_list_pages_newest_first(start_bridge: StartBridge) -> None:
    async with httpx.AsyncClient(base_url=await start_bridge(page_size=2)) as client:
        ids = [(await create(client, "demo/echo", {"prompt": f"p{i}"}))["id"] for i in range(5)]
        pages, url = [], "/v1/predictions"
        while url:
            page = (await client.get(url)).json()
            pages.append(page)
            url = page["next"]
        assert [[p["id"] for p in page["results"]] for page in pages] == [
            ids[4:2:-1],
            ids[2:0:-1],
            ids[0:1],
        ]
        assert pages[0]["previous"] is None and pages[-1]["next"] is None
        assert pages[1]["next"].startswith("http://127.0.0.1:")
        back = (await client.get(pages[2]["previous"])).json()
        assert [p["id"] for p in back["results"]] == ids[2:0:-1]
        assert_problem(await client.get("/v1/predictions?cursor=nonsense"), 400)


async def test_model_and_version_objects(client: httpx.AsyncClient) -> None:
    await create(client, "demo/echo", {"prompt": "count me"})
    model = (await client.get("/v1/models/demo/echo")).json()
    assert model["owner"] == "demo" and model["name"] == "echo"
    assert model["visibility"] == "public" and model["run_count"] == 1
    assert model["url"].startswith("http://")
    version = model["latest_version"]
    assert ISO.match(version["created_at"]) and isinstance(version["cog_version"], str)
    schemas = version["openapi_schema"]["components"]["schemas"]
    assert schemas["Input"]["required"] == ["prompt"]
    assert schemas["Output"]["type"] == "array"
    assert schemas["Output"]["x-cog-array-type"] == "iterator"
    assert schemas["Output"]["x-cog-array-display"] == "concatenate"
    again = await client.get(f"/v1/models/demo/echo/versions/{version['id']}")
    assert again.json() == version
    assert_problem(await client.get("/v1/models/demo/echo/versions/" + "0" * 64), 404)
    assert_problem(await client.get("/v1/models/demo/nope"), 404)


async def test_direct_streaming_create(client: httpx.AsyncClient) -> None:
    headers = {"Accept": "text/event-stream"}
    async with client.stream(
        "POST",
        "/v1/models/demo/echo/predictions",
        json={"input": {"prompt": "right here"}},
        headers=headers,
    ) as response:
        assert response.status_code == 201
        assert response.headers["content-type"] == "text/event-stream"
        body = await response.aread()
    events = spec_events([body])
    assert [(e.event, e.data) for e in events] == [
        ("logs", "echoing 2 chunks"), ("output", "right "), ("output", "here"), ("done", "{}")
    ]  # fmt: skip
    got = (await client.get(response.headers["Location"])).json()
    assert got["status"] == "succeeded" and got["output"] == ["right ", "here"]
    # Bad input is still a problem+json answer, before any stream starts.
    bad = await client.post("/v1/models/demo/echo/predictions", json={"input": {}}, headers=headers)
    assert_problem(bad, 422)


async def test_direct_stream_owns_its_prediction(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    async with client.stream(
        "POST",
        "/v1/predictions",
        json={"version": "test/endless", "input": {"key": key}},
        headers={"Accept": "text/event-stream"},
    ) as response:
        location = response.headers["Location"]
        async for line in response.aiter_lines():
            if line == "event: output":
                break  # hang up: that cancels the prediction
    await wait_closed(key)
    assert (await ended(client, location.rpartition("/")[2]))["status"] == "canceled"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"webhook": "not a url"}, "webhook"),
        ({"webhook": "ftp://example.com/hook"}, "webhook"),
        (
            {"webhook": "http://127.0.0.1:9/h", "webhook_events_filter": ["begin"]},
            "webhook_events_filter",
        ),
        (
            {"webhook": "http://127.0.0.1:9/h", "webhook_events_filter": "completed"},
            "webhook_events_filter",
        ),
    ],
)
async def test_bad_webhooks_are_422(client: httpx.AsyncClient, extra: dict, field: str) -> None:
    response = await client.post(
        "/v1/models/demo/echo/predictions", json={"input": {"prompt": "x"}, **extra}
    )
    assert [f["field"] for f in assert_problem(response, 422)["invalid_fields"]] == [field]
