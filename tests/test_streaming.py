"""A prediction streams from a real gRPC backend through a real bridge to
real HTTP clients."""

from __future__ import annotations

import json

import httpx
import trio

from bridge.sse import normalize_line_breaks
from tests.conftest import StartBridge, closed_port_target, create, read_stream
from tests.test_sse import CHUNKS

PROMPT = "The quick  brown fox\njumps over the lazy dog. "


def _ids(events: list) -> list[tuple[int, int]]:
    return [tuple(int(p) for p in e.id.split(":")) for e in events]


async def test_echo_streams_the_prompt_back(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": PROMPT, "repeat": 2})
    assert prediction["status"] == "starting"
    assert prediction["urls"]["stream"] == (
        f"{client.base_url}/v1/predictions/{prediction['id']}/stream".replace("//v1", "/v1")
    )

    events, _ = await read_stream(client, prediction["urls"]["stream"])

    outputs = [e.data for e in events if e.event == "output"]
    assert "".join(outputs) == normalize_line_breaks(PROMPT * 2)
    assert len(outputs) == 2 * len(PROMPT.split())  # word by word
    assert _ids(events) == sorted(_ids(events)) and len(set(_ids(events))) == len(events)
    assert [e.event for e in events].count("done") == 1
    assert events[-1].event == "done" and events[-1].data == "{}"
    assert [e.data for e in events if e.event == "logs"] == [f"echoing {len(outputs)} chunks"]

    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["status"] == "succeeded"
    assert "".join(final["output"]) == PROMPT * 2  # the exact text, line breaks and all
    assert final["error"] is None
    assert final["started_at"] and final["completed_at"]


async def test_hostile_chunks_end_to_end(client: httpx.AsyncClient) -> None:
    """Chunks from a model cannot forge or end events, through the whole path."""
    prediction = await create(client, "demo/echo", {"prompt": "-", "tokens": CHUNKS})
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert [e.event for e in events] == ["logs"] + ["output"] * len(CHUNKS) + ["done"]
    assert [e.data for e in events if e.event == "output"] == [
        normalize_line_breaks(c) for c in CHUNKS
    ]
    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["output"] == CHUNKS


async def test_stream_headers(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": "hi"})
    async with client.stream("GET", prediction["urls"]["stream"]) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache, no-transform"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        await response.aread()


async def test_fail_after_gives_error_then_done(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": "a b c d", "fail_after": 2})
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert [e.event for e in events] == ["logs", "output", "output", "error", "done"]
    message = "echo failed after 2 chunks, as asked (fail_after)"
    assert json.loads(events[-2].data) == {"detail": message}
    assert json.loads(events[-1].data) == {"reason": "error"}
    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["status"] == "failed"
    assert final["error"] == message
    assert final["output"] == ["a ", "b "]


async def test_late_join_gets_the_whole_stream(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": PROMPT})
    first, _ = await read_stream(client, prediction["urls"]["stream"])
    assert (await client.get(prediction["urls"]["get"])).json()["status"] == "succeeded"
    again, _ = await read_stream(client, prediction["urls"]["stream"])
    assert again == first


async def test_last_event_id_resumes_after_that_event(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": PROMPT})
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    for k in (0, 3, len(events) - 2, len(events) - 1):
        resumed, _ = await read_stream(
            client, prediction["urls"]["stream"], {"Last-Event-ID": events[k].id}
        )
        assert resumed == events[k + 1 :]


async def test_malformed_last_event_id_is_400(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": "x"})
    response = await client.get(prediction["urls"]["stream"], headers={"Last-Event-ID": "nope"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_two_readers_at_once_get_the_same_stream(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": PROMPT, "delay_ms": 20})
    results: dict[int, list] = {}

    async def reader(n: int) -> None:
        results[n], _ = await read_stream(client, prediction["urls"]["stream"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, 1)
        nursery.start_soon(reader, 2)
    assert results[1] == results[2]
    assert "".join(e.data for e in results[1] if e.event == "output") == normalize_line_breaks(
        PROMPT
    )


async def test_reader_disconnect_does_not_stop_the_prediction(client: httpx.AsyncClient) -> None:
    prediction = await create(client, "demo/echo", {"prompt": PROMPT, "delay_ms": 30})
    async with client.stream("GET", prediction["urls"]["stream"]) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: output"):
                break  # leave after the first token: closes the connection
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert events[-1].event == "done" and events[-1].data == "{}"
    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["status"] == "succeeded"
    assert "".join(final["output"]) == PROMPT


async def test_idle_stream_gets_keepalive_comments(start_bridge: StartBridge) -> None:
    async with httpx.AsyncClient(base_url=await start_bridge(keepalive_seconds=0.1)) as client:
        prediction = await create(client, "demo/echo", {"prompt": "slow", "delay_ms": 700})
        events, raw = await read_stream(client, prediction["urls"]["stream"])
    assert b"\n: ping\n" in raw.split(b"event: output")[0]
    assert [e.event for e in events] == ["logs", "output", "done"]


async def test_story_streams_word_by_word(client: httpx.AsyncClient) -> None:
    prediction = await create(
        client, "demo/story", {"prompt": "Tell me a story", "max_words": 12, "delay_ms": 5}
    )
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    words = [e.data for e in events if e.event == "output"]
    assert 3 <= len(words) <= 12
    assert all(w.strip() and " " not in w.strip() for w in words)
    assert events[-1].event == "done"


async def test_backend_down_fails_the_prediction_readably(start_bridge: StartBridge) -> None:
    url = await start_bridge(
        targets={"demo/down": closed_port_target()},
        model_options={"demo/down": {"start_timeout_seconds": 0.3}},
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "demo/down", {"prompt": "anyone there?"})
        assert prediction["status"] == "starting"
        with trio.fail_after(20):
            events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert [e.event for e in events] == ["error", "done"]
        detail = json.loads(events[0].data)["detail"]
        assert detail.startswith("model backend unavailable")
        final = (await client.get(prediction["urls"]["get"])).json()
        assert final["status"] == "failed"
        assert final["error"] == detail


async def test_health_reports_each_backend(start_bridge: StartBridge) -> None:
    url = await start_bridge(targets={"demo/down": closed_port_target()})
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "ready": False,
        "models": {
            "demo/echo": "SERVING",
            "demo/story": "SERVING",
            "test/endless": "SERVING",
            "demo/down": "UNAVAILABLE",
        },
    }
