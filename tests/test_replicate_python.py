"""Replicate's official Python client (replicate 1.0.7), unmodified, against
a real bridge. The client is synchronous, so each use runs in a thread while
the bridge serves from this test's Trio loop."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError
from replicate.pagination import paginate
from replicate.stream import ServerSentEvent

from tests.conftest import StartBridge, wait_closed
from tests.helpers import in_thread

OUTPUT = ServerSentEvent.EventType.OUTPUT
PROMPT = "Sure! Here is a story for you"
CHUNKS = ["Sure! ", "Here ", "is ", "a ", "story ", "for ", "you"]


@pytest.fixture
async def rc(start_bridge: StartBridge) -> replicate.Client:
    client = replicate.Client(api_token="r8_test", base_url=await start_bridge(page_size=2))
    client.poll_interval = 0.05
    return client


async def echo_version(rc: replicate.Client) -> str:
    model = await in_thread(rc.models.get, "demo/echo")
    return model.latest_version.id


async def test_stream_yields_the_exact_chunks(rc: replicate.Client) -> None:
    def run() -> list[str]:
        events = rc.stream("demo/echo", input={"prompt": PROMPT})
        return [str(e) for e in events if e.event == OUTPUT]

    assert await in_thread(run) == CHUNKS


async def test_run_with_a_version_returns_an_iterator(rc: replicate.Client) -> None:
    version = await echo_version(rc)
    output = await in_thread(rc.run, f"demo/echo:{version}", input={"prompt": PROMPT})
    assert not isinstance(output, (list, str))  # an iterator, as the schema says
    assert list(output) == CHUNKS


async def test_run_that_outlasts_wait_polls_to_the_end(rc: replicate.Client) -> None:
    version = await echo_version(rc)
    slow = {"prompt": PROMPT, "delay_ms": 250}
    output = await in_thread(rc.run, f"demo/echo:{version}", input=slow, wait=1)
    assert list(await in_thread(list, output)) == CHUNKS


async def test_create_with_stream_then_stream(rc: replicate.Client) -> None:
    version = await echo_version(rc)

    def run() -> tuple[Any, list[str], Any]:
        prediction = rc.predictions.create(version=version, input={"prompt": PROMPT}, stream=True)
        chunks = [str(e) for e in prediction.stream() if e.event == OUTPUT]
        prediction.reload()
        return prediction, chunks, prediction.status

    prediction, chunks, status = await in_thread(run)
    assert chunks == CHUNKS
    assert status == "succeeded"
    assert prediction.urls["stream"].endswith(f"/v1/predictions/{prediction.id}/stream")


async def test_cancel_mid_stream_ends_it_and_stops_the_backend(rc: replicate.Client) -> None:
    key = uuid.uuid4().hex

    def run() -> tuple[list[Any], str]:
        prediction = rc.models.predictions.create(
            model="test/endless", input={"key": key}, stream=True
        )
        events = []
        for event in prediction.stream():
            events.append(event)
            if len([e for e in events if e.event == OUTPUT]) == 3:
                prediction.cancel()
        return events, prediction.status

    events, status = await in_thread(run)
    assert status == "canceled"
    assert events[-1].event == ServerSentEvent.EventType.DONE
    assert events[-1].data == '{"reason":"canceled"}'
    await wait_closed(key)  # the backend's generator was closed


async def test_list_pages(rc: replicate.Client) -> None:
    ids = []
    for i in range(3):
        p = await in_thread(
            rc.models.predictions.create, model="demo/echo", input={"prompt": f"p{i}"}
        )
        ids.append(p.id)
    first = await in_thread(rc.predictions.list)
    assert [p.id for p in first] == ids[::-1][:2]
    assert first.next is not None
    pages = await in_thread(
        lambda: [[p.id for p in page] for page in paginate(rc.predictions.list)]
    )
    assert pages == [ids[::-1][:2], ids[::-1][2:]]


async def test_failing_model_raises_with_the_models_message(rc: replicate.Client) -> None:
    version = await echo_version(rc)
    with pytest.raises(ModelError, match=r"echo failed after 1 chunks, as asked \(fail_after\)"):
        await in_thread(rc.run, f"demo/echo:{version}", input={"prompt": "a b c", "fail_after": 1})


async def test_api_errors_become_replicate_errors(rc: replicate.Client) -> None:
    with pytest.raises(ReplicateError) as not_found:
        await in_thread(rc.predictions.get, "nope")
    assert not_found.value.status == 404
    with pytest.raises(ReplicateError) as invalid:
        await in_thread(rc.models.predictions.create, model="demo/echo", input={})
    assert invalid.value.status == 422
    assert "prompt is required" in invalid.value.detail
