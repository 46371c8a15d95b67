"""What Replicate's API added since the first slice: ``Cancel-After``,
``urls.web``, ``metrics.total_time``, ``data_removed`` with a metadata window,
``stream: true`` checked, and deployments (through the official Python
client; the JS client's are in test_replicate_js.py). A real bridge, real
backends."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError

from bridge.config import DeploymentSettings
from tests.conftest import (
    GATES,
    StartBridge,
    create,
    open_gate,
    poll_until,
    read_stream,
    wait_closed,
)
from tests.helpers import assert_problem, in_thread


async def get(client: httpx.AsyncClient, prediction: dict[str, Any]) -> dict[str, Any]:
    return (await client.get(prediction["urls"]["get"])).json()


async def wait_for_status(client: httpx.AsyncClient, prediction: dict, status: str) -> dict:
    async def reached() -> bool:
        return (await get(client, prediction))["status"] == status

    await poll_until(reached)
    return await get(client, prediction)


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- Cancel-After -------------------------------------------------------------


async def test_cancel_after_cancels_a_running_prediction(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    prediction = await create(client, "test/endless", {"key": key}, headers={"Cancel-After": "1s"})
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert events[-1].event == "done" and events[-1].data == '{"reason":"canceled"}'
    assert any(e.event == "output" for e in events)  # it ran, then was cancelled
    await wait_closed(key)  # the backend's generator was closed: it saw CANCELLED
    final = await get(client, prediction)
    # canceled, not Replicate's "aborted": the official clients know no such status.
    assert final["status"] == "canceled" and final["error"] is None
    lived = seconds(final["completed_at"]) - seconds(final["created_at"])
    assert lived >= 0.99  # never before the deadline


async def test_cancel_after_cancels_a_queued_prediction(start_bridge: StartBridge) -> None:
    url = await start_bridge(model_options={"test/gate": {"max_running": 1}})
    holder_key, queued_key = uuid.uuid4().hex, uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        holder = await create(client, "test/gate", {"key": holder_key})
        await wait_for_status(client, holder, "processing")
        queued = await create(
            client, "test/gate", {"key": queued_key}, headers={"Cancel-After": "1"}
        )
        final = await wait_for_status(client, queued, "canceled")
        assert final["started_at"] is None  # it never left the queue
        assert final["metrics"]["total_time"] >= 0.99
        assert "predict_time" not in final["metrics"]
        open_gate(holder_key)
        assert (await wait_for_status(client, holder, "succeeded"))["output"] == [
            "waiting ",
            "through",
        ]
        assert queued_key not in GATES  # the backend never saw it


@pytest.mark.parametrize("value", ["", "soon", "0", "0s", "25h", "86401", "1m30", "-5", "10ms"])
async def test_bad_cancel_after_is_400_and_creates_nothing(
    client: httpx.AsyncClient, value: str
) -> None:
    response = await client.post(
        "/v1/models/demo/echo/predictions",
        json={"input": {"prompt": "never"}},
        headers={"Cancel-After": value},
    )
    assert "Cancel-After" in assert_problem(response, 400)["detail"]
    assert (await client.get("/v1/predictions")).json()["results"] == []


@pytest.mark.parametrize(("value", "deadline"), [("5m", 300), ("1h30m", 5400), ("90", 90)])
async def test_cancel_after_leaves_a_prediction_that_ends_in_time(
    client: httpx.AsyncClient, value: str, deadline: float
) -> None:
    waited = {"Cancel-After": value, "Prefer": "wait"}
    prediction = await create(client, "demo/echo", {"prompt": "in time"}, headers=waited)
    assert prediction["status"] == "succeeded"
    assert prediction["metrics"]["total_time"] < deadline


# -- the prediction object ------------------------------------------------------


async def test_total_time_is_creation_to_completion(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": "a b c", "delay_ms": 100})
    await read_stream(client, prediction["urls"]["stream"])
    final = await get(client, prediction)
    metrics = final["metrics"]
    span = seconds(final["completed_at"]) - seconds(final["created_at"])
    # Durations are measured on Trio's clock and the times shown on the wall
    # clock, each read beside the other: the two spans agree to the moment
    # between those reads (microseconds; more if the thread was preempted).
    assert metrics["total_time"] == pytest.approx(span, abs=0.5)
    assert metrics["total_time"] >= metrics["predict_time"] >= 0.2  # two 100 ms gaps


async def test_urls_web_is_the_page_on_that_prediction(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "demo/echo", {"prompt": "see me"})
        web = prediction["urls"]["web"]
        assert web == f"{url}/?prediction={prediction['id']}"
        page = await client.get(web)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        listed = (await client.get("/v1/predictions")).json()["results"][0]
        assert listed["urls"]["web"] == web


async def test_data_goes_first_then_metadata(start_bridge: StartBridge) -> None:
    """By count: the newest keeps its data, the one before only its
    metadata (data_removed), the first is forgotten (404)."""
    url = await start_bridge(retention_count=1, metadata_retention_count=2)
    async with httpx.AsyncClient(base_url=url) as client:
        done = []
        for i in range(3):
            prediction = await create(client, "demo/echo", {"prompt": f"p{i}"})
            await read_stream(client, prediction["urls"]["stream"])
            done.append(await get(client, prediction))
        assert_problem(await client.get(done[0]["urls"]["get"]), 404)
        removed, kept = await get(client, done[1]), await get(client, done[2])
        assert removed["data_removed"] is True
        assert (removed["input"], removed["output"], removed["logs"]) == ({}, None, "")
        assert removed["status"] == "succeeded"
        assert removed["metrics"]["total_time"] == done[1]["metrics"]["total_time"]
        assert (removed["created_at"], removed["completed_at"]) == (
            done[1]["created_at"],
            done[1]["completed_at"],
        )
        assert_problem(await client.get(removed["urls"]["stream"]), 410)
        assert kept["data_removed"] is False and kept["output"] == ["p2"]
        listed = (await client.get("/v1/predictions")).json()["results"]
        assert [(p["id"], p["data_removed"]) for p in listed] == [
            (done[2]["id"], False),
            (done[1]["id"], True),
        ]


async def test_data_removed_at_once_leaves_the_metadata(start_bridge: StartBridge) -> None:
    """retention_seconds = 0: the data goes as the prediction ends, the
    metadata stays (the windows by age, to the second, are the store's
    contract: tests/test_store.py, under Trio's autojump clock)."""
    url = await start_bridge(retention_seconds=0, metadata_retention_seconds=3600)
    async with httpx.AsyncClient(base_url=url) as client:
        # Waited for, not streamed: its stream is gone (410) as soon as it ends.
        waited = {"Prefer": "wait"}
        prediction = await create(client, "demo/echo", {"prompt": "short-lived"}, headers=waited)
        assert prediction["status"] == "succeeded"
        response = await client.get(prediction["urls"]["get"])
        assert response.status_code == 200
        assert response.json()["data_removed"] is True
        assert response.json()["status"] == "succeeded"
        assert response.json()["metrics"]["total_time"] >= 0
        assert_problem(await client.get(prediction["urls"]["stream"]), 410)


# -- stream: true ---------------------------------------------------------------


async def test_stream_true_for_a_model_that_does_not_stream_is_422(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/v1/models/test/upper/predictions", json={"input": {"text": "hi"}, "stream": True}
    )
    body = assert_problem(response, 422)
    assert [f["field"] for f in body["invalid_fields"]] == ["stream"]
    assert "does not stream" in body["detail"]
    assert (await client.get("/v1/predictions")).json()["results"] == []


@pytest.mark.parametrize(
    ("model", "body", "status"),
    [
        ("test/upper", {"input": {"text": "hi"}, "stream": False}, 201),
        ("test/upper", {"input": {"text": "hi"}}, 201),
        ("demo/echo", {"input": {"prompt": "hi"}, "stream": True}, 201),
        ("demo/echo", {"input": {"prompt": "hi"}, "stream": False}, 201),
        ("demo/echo", {"input": {"prompt": "hi"}, "stream": "yes"}, 422),
        ("demo/echo", {"input": {"prompt": "hi"}, "stream": 1}, 422),
    ],
)
async def test_stream_is_optional_and_a_boolean(
    client: httpx.AsyncClient, model: str, body: dict, status: int
) -> None:
    response = await client.post(f"/v1/models/{model}/predictions", json=body)
    assert response.status_code == status, response.text
    if status == 201:
        streams = model == "demo/echo"
        assert ("stream" in response.json()["urls"]) is streams  # whatever was asked


async def test_a_model_that_returns_one_value(client: httpx.AsyncClient) -> None:
    prediction = await create(
        client, "test/upper", {"text": "one value"}, headers={"Prefer": "wait"}
    )
    assert prediction["output"] == "ONE VALUE"


# -- deployments ------------------------------------------------------------------


async def deployment_bridge(start_bridge: StartBridge) -> str:
    return await start_bridge(
        deployments={"acme/teller": DeploymentSettings("acme/teller", "demo/echo")}
    )


async def test_deployments_through_the_python_client(start_bridge: StartBridge) -> None:
    rc = replicate.Client(api_token="r8_test", base_url=await deployment_bridge(start_bridge))
    rc.poll_interval = 0.05
    echo = await in_thread(rc.models.get, "demo/echo")

    def run() -> tuple[Any, Any, Any]:
        deployment = rc.deployments.get("acme/teller")
        first = deployment.predictions.create(input={"prompt": "from a deployment"})
        first.wait()
        second = rc.deployments.predictions.create("acme/teller", input={"prompt": "again"})
        second.wait()
        return deployment, first, second

    deployment, first, second = await in_thread(run)
    assert (deployment.owner, deployment.name) == ("acme", "teller")
    release = deployment.current_release
    assert (release.number, release.model) == (1, "demo/echo")
    assert release.version == echo.latest_version.id
    assert release.configuration.min_instances == 1
    assert (first.status, first.output, first.model) == (
        "succeeded",
        ["from ", "a ", "deployment"],
        "demo/echo",
    )
    assert (second.status, second.output) == ("succeeded", ["again"])
    with pytest.raises(ReplicateError) as missing:
        await in_thread(rc.deployments.get, "acme/nothing")
    assert missing.value.status == 404


async def test_deployment_http_api(start_bridge: StartBridge) -> None:
    url = await deployment_bridge(start_bridge)
    async with httpx.AsyncClient(base_url=url) as client:
        listed = (await client.get("/v1/deployments")).json()
        assert [(d["owner"], d["name"]) for d in listed["results"]] == [("acme", "teller")]
        response = await client.post(
            "/v1/deployments/acme/teller/predictions",
            json={"input": {"prompt": "x"}, "stream": True},
            headers={"Cancel-After": "30s", "Prefer": "wait"},
        )
        assert response.status_code == 201 and response.json()["output"] == ["x"]
        # Bad input is the model's 422, and nothing is created.
        response = await client.post(
            "/v1/deployments/acme/teller/predictions", json={"input": {"promt": "x"}}
        )
        assert_problem(response, 422)
        assert len((await client.get("/v1/predictions")).json()["results"]) == 1
        missing = await client.post(
            "/v1/deployments/acme/none/predictions", json={"input": {"prompt": "x"}}
        )
        assert "deployment acme/none" in assert_problem(missing, 404)["detail"]
