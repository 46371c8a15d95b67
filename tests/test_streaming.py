"""A prediction streams from a real gRPC backend through a real bridge to
real HTTP clients."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

import httpx
import pytest
import trio

from bridge.config import Settings
from bridge.core.events import SLICE_BYTES, MemoryEventLog, OutputBatch
from bridge.core.store import MemoryStore, PredictionStore
from bridge.http.stream import KeepAlive, sse_body
from bridge.sdk import Model, ModelServer
from bridge.sse import normalize_line_breaks
from tests.conftest import StartBridge, closed_port_target, create, poll_until, read_stream
from tests.fakes import ListStore
from tests.helpers import CHUNKS
from tests.sse_clients import spec_events

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


@pytest.mark.parametrize("store", [MemoryStore, ListStore], ids=["memory", "fakes"])
async def test_the_bridge_needs_only_the_store_and_event_log_interfaces(
    start_bridge: StartBridge, store: Callable[[Settings], PredictionStore]
) -> None:
    """Every route that reads a prediction's events (the stream, a late
    join, a resume, the prediction object, a failure's error) works the
    same on the fakes (a list-scanning store of record-keeping logs) as on
    the store and logs kept in memory."""
    async with httpx.AsyncClient(base_url=await start_bridge(store=store)) as client:
        prediction = await create(client, "demo/echo", {"prompt": "-", "tokens": CHUNKS})
        events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert [e.event for e in events] == ["logs"] + ["output"] * len(CHUNKS) + ["done"]
        assert [e.data for e in events[1:-1]] == [normalize_line_breaks(c) for c in CHUNKS]
        again, _ = await read_stream(client, prediction["urls"]["stream"])
        assert again == events
        resumed, _ = await read_stream(
            client, prediction["urls"]["stream"], {"Last-Event-ID": events[3].id}
        )
        assert resumed == events[4:]
        final = (await client.get(prediction["urls"]["get"])).json()
        assert final["output"] == CHUNKS
        assert final["logs"] == f"echoing {len(CHUNKS)} chunks\n"
        failed = await create(client, "demo/echo", {"prompt": "a b c", "fail_after": 1})
        events, _ = await read_stream(client, failed["urls"]["stream"])
        # Its log line, its output, its traceback (logs), its end.
        kinds = [e.event for e in events]
        assert kinds[:2] == ["logs", "output"] and kinds[-2:] == ["error", "done"]
        assert set(kinds[2:-2]) == {"logs"}
        final = (await client.get(failed["urls"]["get"])).json()
        assert (final["status"], final["output"]) == ("failed", ["a "])
        listed = (await client.get("/v1/predictions")).json()["results"]
        assert [p["id"] for p in listed] == [failed["id"], prediction["id"]]


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
    kinds = [e.event for e in events]
    assert kinds[:3] == ["logs", "output", "output"] and kinds[-2:] == ["error", "done"]
    # The model's traceback, between: its own frame, and the line it raised.
    traceback = [e.data for e in events[3:-2]]
    assert set(kinds[3:-2]) == {"logs"} and traceback[0] == "Traceback (most recent call last):"
    assert any("in echo" in line for line in traceback)
    assert traceback[-1] == "RuntimeError: echo failed after 2 chunks, as asked (fail_after)"
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
    for k in (0, 3, len(events) - 2):
        resumed, _ = await read_stream(
            client, prediction["urls"]["stream"], {"Last-Event-ID": events[k].id}
        )
        assert resumed == events[k + 1 :]


async def test_a_finished_stream_resumed_at_its_end_is_204(client: httpx.AsyncClient) -> None:
    """204 is what tells an EventSource to stop reconnecting: a client that
    saw done (or lost only the connection after it) is told the stream is
    over, instead of an empty 200 that makes it reconnect forever."""
    prediction = await create(client, "demo/echo", {"prompt": PROMPT})
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    seconds = events[-1].id.split(":")[0]
    for last in (events[-1].id, f"{seconds}:{len(events) + 5}"):
        response = await client.get(prediction["urls"]["stream"], headers={"Last-Event-ID": last})
        assert response.status_code == 204, (last, response.text)
        assert response.content == b""
        assert "content-type" not in response.headers  # no body, no type


async def test_resuming_a_running_stream_past_its_end_is_400(client: httpx.AsyncClient) -> None:
    key = uuid.uuid4().hex
    prediction = await create(client, "test/endless", {"key": key, "delay_ms": 1000})
    url = prediction["urls"]["stream"]
    response = await client.get(url, headers={"Last-Event-ID": "1700000000:1000"})
    problem = response.json()
    assert response.status_code == 400 and "past the end" in problem["detail"], problem
    await client.post(prediction["urls"]["cancel"])


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
    async with httpx.AsyncClient(base_url=await start_bridge(ping_seconds=0.1)) as client:
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


async def story(client: httpx.AsyncClient, prompt: str, **input: object) -> str:
    prediction = await create(client, "demo/story", {"prompt": prompt, "delay_ms": 0} | input)
    events, _ = await read_stream(client, prediction["urls"]["stream"])
    return "".join(e.data for e in events if e.event == "output")


async def test_the_prompt_picks_the_story_told_in_whole_sentences(
    client: httpx.AsyncClient,
) -> None:
    fables = (resources.files("bridge.sdk") / "story.txt").read_text().split("\n\n")
    sentences = {s.strip() for fable in fables for s in re.findall(r"[^.!?]+[.!?]+", fable)}
    lion = await story(client, "Tell me about the lion and the mouse", max_words=300)
    assert lion.startswith("Once upon a time a lion was sleeping in the forest")
    grapes = await story(client, "sour grapes", max_words=60)
    assert grapes.startswith("Once upon a time a fox walked through the vineyard")
    for told in (lion, grapes, await story(client, "Tell me a story", seed=3)):
        said = [s.strip() for s in re.findall(r"[^.!?]+[.!?]+", told)]
        assert told.endswith((".", "!", "?"))  # it stops at a sentence's end
        assert set(said) <= sentences  # only whole sentences of the text
        assert len(said) == len(set(said))  # none twice
    assert len(lion.split()) <= 300 and len(grapes.split()) <= 60


async def test_echo_joins_repeats_with_a_space(client: httpx.AsyncClient) -> None:
    for prompt, told in [("hi you", "hi you hi you hi you"), ("hi you ", "hi you " * 3)]:
        prediction = await create(client, "demo/echo", {"prompt": prompt, "repeat": 3})
        events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert "".join(e.data for e in events if e.event == "output") == told


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


async def test_health_reports_each_backend(
    start_bridge: StartBridge, demo_targets: dict[str, str]
) -> None:
    down = closed_port_target()
    url = await start_bridge(targets={"demo/down": down})
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "ready": False,
        "models": {
            "demo/echo": "SERVING",
            "demo/story": "SERVING",
            "demo/batch": "SERVING",
            "test/endless": "SERVING",
            "test/gate": "SERVING",
            "test/upper": "SERVING",
            "demo/down": "UNAVAILABLE",
        },
        "targets": {
            name: {target: status}
            for name, target, status in [
                *[(n, t, "SERVING") for n, t in demo_targets.items()],
                ("demo/down", down, "UNAVAILABLE"),
            ]
        },
    }


async def _writes(url: str, method: str, path: str, body: bytes = b"") -> list[bytes]:
    """Each write of the server's response body, as it arrived: a raw
    HTTP/1.1 client that undoes chunked framing, where one chunk is one write
    (hypercorn frames each body message of the app as one chunk)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        buffer = b""

        async def need(n: int) -> None:
            nonlocal buffer
            while len(buffer) < n:
                data = await stream.receive_some(65536)
                assert data, "connection closed mid-response"
                buffer += data

        await need(4)
        while b"\r\n\r\n" not in buffer:
            await need(len(buffer) + 1)
        headers, buffer = buffer.split(b"\r\n\r\n", 1)
        assert headers.startswith(b"HTTP/1.1 20"), headers
        assert b"transfer-encoding: chunked" in headers.lower()
        writes = []
        while True:
            while b"\r\n" not in buffer:
                await need(len(buffer) + 1)
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line, 16)
            await need(size + 2)
            if size == 0:
                return writes
            writes.append(buffer[:size])
            buffer = buffer[size + 2 :]


async def test_a_burst_arrives_as_several_events_in_one_write(
    start_bridge: StartBridge,
) -> None:
    """A model's burst travels as one batch: one message, one append, one write."""
    url = await start_bridge()
    tokens = [f"t{i} " for i in range(200)]
    body = json.dumps({"input": {"prompt": "-", "tokens": tokens}}).encode()
    writes = await _writes(url, "POST", "/v1/models/demo/echo/predictions", body)
    per_write = [w.count(b"event: output\n") for w in writes]
    assert sum(per_write) == 200
    assert max(per_write) >= 50, per_write  # not one write per token
    outputs = [e.data for e in spec_events(writes) if e.event == "output"]
    assert outputs == tokens


async def test_a_lone_token_is_written_at_once(start_bridge: StartBridge) -> None:
    """Nothing waits to fill a batch: a token followed by a pause is written
    on its own, before the next one exists."""
    url = await start_bridge()
    body = json.dumps({"input": {"prompt": "-", "tokens": ["a ", "b "], "delay_ms": 1000}})
    writes = await _writes(url, "POST", "/v1/models/demo/echo/predictions", body.encode())
    outputs = [w.count(b"event: output\n") for w in writes if b"event: output\n" in w]
    assert outputs == [1, 1]


async def test_a_late_reader_gets_the_backlog_in_bounded_slices(
    client: httpx.AsyncClient,
) -> None:
    chunks = 60_000
    prediction = await create(
        client, "demo/echo", {"prompt": "-", "tokens": ["ab"], "repeat": chunks}
    )

    async def ended() -> bool:
        return (await client.get(prediction["urls"]["get"])).json()["status"] == "succeeded"

    await poll_until(ended)
    path = prediction["urls"]["stream"].removeprefix(str(client.base_url).rstrip("/"))
    writes = await _writes(str(client.base_url).rstrip("/"), "GET", path)
    assert max(map(len, writes)) <= SLICE_BYTES + 64  # a slice and at most one frame
    assert len(writes) >= sum(map(len, writes)) // (SLICE_BYTES + 64)
    events = spec_events(writes)
    assert [e.data for e in events if e.event == "output"] == ["ab"] * chunks
    assert events[-1].event == "done"


def backend_named(label: str) -> Callable[[str], str]:
    def who(prompt: str) -> str:
        return label

    return who


async def test_several_targets_are_used_round_robin(start_bridge: StartBridge) -> None:
    """One model served by two backends: predictions alternate between them."""
    with (
        ModelServer(Model("test/who", backend_named("a"))) as a,
        ModelServer(Model("test/who", backend_named("b"))) as b,
    ):
        url = await start_bridge({"test/who": (a.target, b.target)})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            served = []
            for _ in range(6):
                response = await client.post(
                    "/v1/models/test/who/predictions",
                    json={"input": {"prompt": "who?"}},
                    headers={"Prefer": "wait"},
                )
                assert response.json()["status"] == "succeeded", response.text
                served.append(response.json()["output"])
    assert sorted(served) == ["a"] * 3 + ["b"] * 3
    assert all(x != y for x, y in itertools.pairwise(served)), served


async def test_an_idle_reader_pings_at_least_every_keepalive(autojump_clock: Any) -> None:
    """Woken every third of keepalive by the streams' clock, an idle
    reader writes ``: ping`` after two thirds of it: at least every
    keepalive seconds, and never more often than two thirds of it; a
    reader that is writing does not ping."""
    log = MemoryEventLog()
    pings: list[float] = []
    clock = KeepAlive(15)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(clock.run)
        started = trio.current_time()
        body = sse_body(log, 0, clock)
        while trio.current_time() - started < 100:
            data = await body.__anext__()
            if data == b": ping\n":
                pings.append(trio.current_time() - started)
        log.append_output(OutputBatch(["x"]))
        assert (await body.__anext__()).startswith(b"event: output")
        await body.aclose()
        clock.stop()
    gaps = [b - a for a, b in zip([0.0, *pings], pings, strict=False)]
    assert len(gaps) >= 6 and all(10 <= gap <= 15 for gap in gaps), gaps


async def test_a_reader_with_no_writer_gets_each_event_as_it_comes() -> None:
    """Outside an HTTP/1.x connection (HTTP/2, TLS, here none at all) a
    caught-up reader follows the log with no writer: each append wakes it,
    long before the log closes."""
    log = MemoryEventLog()
    body = sse_body(log, 0, KeepAlive(60))
    got: list[bytes] = []

    async def read_two() -> None:
        got.append(await body.__anext__())
        got.append(await body.__anext__())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_two)
            for chunk in ("a", "b"):
                await trio.testing.wait_all_tasks_blocked()  # the reader waits
                log.append_output(OutputBatch([chunk]))
    assert got[0].endswith(b"data: a\n\n") and got[1].endswith(b"data: b\n\n")
    assert not log.closed
    await body.aclose()


@pytest.fixture
def backed_up(monkeypatch: pytest.MonkeyPatch) -> trio.Event:
    """Set once a write straight to a caught-up reader leaves bytes unsent
    (its socket filled mid-event)."""
    from bridge._compat import hypercorn_tcp as compat

    event = trio.Event()
    write_chunk_nowait = compat.Connection.write_chunk_nowait

    def spy(self: Any, data: bytes, chunked: bool) -> bool:
        taken = write_chunk_nowait(self, data, chunked)
        if self.unsent:
            event.set()
        return taken

    monkeypatch.setattr(compat.Connection, "write_chunk_nowait", spy)
    return event


async def _create_streaming_to_a_small_window(
    url: str, model: str, input: dict[str, Any]
) -> trio.SocketStream:
    """A streaming create from a client whose receive buffer is 4 KiB (and
    which reads nothing until the caller does)."""
    body = json.dumps({"input": input}).encode()
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    stream = trio.SocketStream(sock)
    await stream.send_all(
        b"POST /v1/models/%b/predictions HTTP/1.1\r\nHost: x\r\n"
        b"Accept: text/event-stream\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (model.encode(), len(body), body)
    )
    return stream


async def test_a_reader_that_backs_up_gets_every_byte_in_order(
    start_bridge: StartBridge, backed_up: trio.Event
) -> None:
    """A caught-up reader is written to in the append itself; when its
    socket stops taking bytes mid-event, what is left goes first, the usual
    way, once it reads again: nothing lost, nothing out of order."""
    url = await start_bridge()
    tokens = [f"{i:02d}" + "x" * 20_000 for i in range(20)]  # 10 rounds: 4 MB out
    input = {"prompt": "-", "tokens": tokens, "repeat": 10, "delay_ms": 1}
    async with await _create_streaming_to_a_small_window(url, "demo/echo", input) as stream:
        with trio.fail_after(20):
            await backed_up.wait()  # not reading: the socket filled mid-event
            answer = bytearray()
            while data := await stream.receive_some(65536):
                answer += data
    head, _, rest = bytes(answer).partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    pieces = []
    while (size := int(rest[: rest.index(b"\r\n")], 16)) > 0:
        start = rest.index(b"\r\n") + 2
        pieces.append(rest[start : start + size])
        assert rest[start + size : start + size + 2] == b"\r\n"
        rest = rest[start + size + 2 :]
    events = spec_events(pieces)
    assert [e.data for e in events if e.event == "output"] == tokens * 10
    assert events[-1].event == "done"


async def test_what_a_backed_up_reader_was_owed_comes_before_the_next_event(
    start_bridge: StartBridge, backed_up: trio.Event
) -> None:
    """The rest of an event the socket did not take goes out as soon as the
    client reads again, not with whatever the model sends next (here,
    nothing until the test says so)."""
    import threading

    release = threading.Event()

    def big_then_wait(prompt: str) -> Any:
        yield "y" * 1_000_000  # more than the socket takes at once
        release.wait(30)
        yield "end"

    with ModelServer(Model("test/big", big_then_wait)) as server:
        url = await start_bridge({"test/big": server.target})
        try:
            stream = await _create_streaming_to_a_small_window(url, "test/big", {"prompt": "-"})
            async with stream:
                answer = bytearray()
                with trio.fail_after(10):
                    await backed_up.wait()
                    while answer.count(b"y") < 1_000_000 or not answer.endswith(b"\n\n\r\n"):
                        answer += await stream.receive_some(65536)
        finally:
            release.set()
    assert b"end" not in answer
    rest = bytes(answer).partition(b"\r\n\r\n")[2]
    data = re.sub(rb"\r\n[0-9a-f]+\r\n", b"", b"\r\n" + rest)  # undo the chunk framing
    outputs = [e.data for e in spec_events([data]) if e.event == "output"]
    assert outputs == ["y" * 1_000_000]
