"""Backends that die, are away, hang or fail; deadlines. Each ends the
prediction failed with a readable error, and the stream with error + done,
in bounded time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
import trio

from bridge.backends import wire
from tests.backends import BackendProcess, Misbehaving, RawServer, backend_processes
from tests.conftest import StartBridge, closed_port_target, create, read_stream


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[BackendProcess]]]:
    """Starts demo backend processes (on a port, if given); kills them all
    at the end of the test, whatever happened."""
    async with backend_processes() as start:
        yield start


@pytest.fixture(scope="module")
def misbehaving() -> Iterator[str]:
    with RawServer(Misbehaving()) as server:
        yield server.target


async def failed_with(client: httpx.AsyncClient, prediction: dict) -> str:
    """The prediction's stream ends in error + done; returns the error."""
    with trio.fail_after(20):
        events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert [e.event for e in events[-2:]] == ["error", "done"]
    assert json.loads(events[-1].data) == {"reason": "error"}
    detail = json.loads(events[-2].data)["detail"]
    final = (await client.get(prediction["urls"]["get"])).json()
    assert final["status"] == "failed"
    assert final["error"] == detail
    return detail


async def test_backend_killed_mid_stream_then_back(
    start_bridge: StartBridge, backends: Callable[..., Awaitable[BackendProcess]]
) -> None:
    backend = await backends()
    url = await start_bridge(targets={"demo/echo": backend.target})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(
            client, "demo/echo", {"prompt": "slow words " * 50, "delay_ms": 100}
        )
        async with client.stream("GET", prediction["urls"]["stream"]) as response:
            async for line in response.aiter_lines():
                if line == "event: output":
                    break
        await backend.kill()
        detail = await failed_with(client, prediction)
        assert detail.startswith("model backend unavailable")
        # The backend comes back on its port: new predictions work, no restart.
        await backends(backend.port)
        again = await create(client, "demo/echo", {"prompt": "back again"})
        events, _ = await read_stream(client, again["urls"]["stream"])
        assert [e.data for e in events if e.event == "output"] == ["back ", "again"]
        assert events[-1].data == "{}"


async def test_backend_away_at_create_is_waited_for(
    start_bridge: StartBridge, backends: Callable[..., Awaitable[BackendProcess]]
) -> None:
    port = int(closed_port_target().rsplit(":", 1)[1])
    url = await start_bridge(
        targets={"demo/echo": f"127.0.0.1:{port}"},
        model_options={"demo/echo": {"start_timeout_seconds": 20}},
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "demo/echo", {"prompt": "worth the wait"})
        await trio.sleep(0.5)
        assert (await client.get(prediction["urls"]["get"])).json()["status"] == "starting"
        await backends(port)  # it comes up within the start window
        events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert "".join(e.data for e in events if e.event == "output") == "worth the wait"


async def test_backend_away_past_the_start_window_fails(start_bridge: StartBridge) -> None:
    url = await start_bridge(
        targets={"demo/echo": closed_port_target()},
        model_options={"demo/echo": {"start_timeout_seconds": 1}},
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        start = trio.current_time()
        prediction = await create(client, "demo/echo", {"prompt": "x"})
        assert prediction["status"] == "starting"
        detail = await failed_with(client, prediction)
        assert 0.9 < trio.current_time() - start < 10
    assert detail.startswith("model backend unavailable")


@pytest.mark.parametrize(
    ("options", "behave", "message"),
    [
        (
            {"first_output_seconds": 0.3},
            "hang",
            "deadline exceeded: no output for first_output_seconds (0.3 s) before the first output",
        ),
        (
            {"idle_seconds": 0.3},
            "one then hang",
            "deadline exceeded: no output for idle_seconds (0.3 s) between outputs",
        ),
        (
            {"total_seconds": 0.4},
            "one then hang",
            "deadline exceeded: the prediction ran longer than total_seconds (0.4 s)",
        ),
    ],
)
async def test_deadlines(
    start_bridge: StartBridge, misbehaving: str, options: dict, behave: str, message: str
) -> None:
    url = await start_bridge(
        targets={"test/misbehaving": misbehaving}, model_options={"test/misbehaving": options}
    )
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "test/misbehaving", {"behave": behave})
        assert await failed_with(client, prediction) == message
        metrics = (await client.get("/metrics")).text
    assert "bridge_grpc_calls_active 0.0" in metrics


async def test_output_steadier_than_the_deadlines_runs_past_them(
    start_bridge: StartBridge,
) -> None:
    """The deadlines between outputs are moved on lazily (when they pass,
    to what the last batch allows), never cut a stream that keeps coming."""
    deadlines = {"first_output_seconds": 1.0, "idle_seconds": 1.0}
    url = await start_bridge(model_options={"demo/echo": deadlines})
    words = " ".join(f"w{i}" for i in range(12))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "demo/echo", {"prompt": words, "delay_ms": 250})
        with trio.fail_after(20):
            events, _ = await read_stream(client, prediction["urls"]["stream"])
    assert [e.event for e in events[-1:]] == ["done"]
    assert "".join(e.data for e in events if e.event == "output").split() == words.split()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("UNAVAILABLE", "model backend unavailable: told to fail with UNAVAILABLE"),
        ("UNKNOWN", "told to fail with UNKNOWN"),
        ("INTERNAL", "model backend error INTERNAL: told to fail with INTERNAL"),
        ("INVALID_ARGUMENT", "model backend error INVALID_ARGUMENT: told to fail with"),
        ("RESOURCE_EXHAUSTED", "model backend error RESOURCE_EXHAUSTED: told to fail"),
        ("UNIMPLEMENTED", "model backend does not implement bridge.v1: told to fail"),
        ("DEADLINE_EXCEEDED", "model backend timed out: deadline exceeded"),
        ("PERMISSION_DENIED", "model backend error PERMISSION_DENIED: told to fail"),
        ("CANCELLED", "model backend cancelled the call: told to fail with CANCELLED"),
    ],
)
async def test_each_grpc_error(
    start_bridge: StartBridge, misbehaving: str, code: str, message: str
) -> None:
    assert code in grpc.StatusCode.__members__
    url = await start_bridge(targets={"test/misbehaving": misbehaving})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "test/misbehaving", {"behave": code})
        assert (await failed_with(client, prediction)).startswith(message)


async def test_output_over_the_cap_fails(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_output_bytes=100)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "demo/echo", {"prompt": "0123456789 " * 20})
        detail = await failed_with(client, prediction)
        final = (await client.get(prediction["urls"]["get"])).json()
    assert detail.startswith("output exceeded max_output_bytes (100 bytes, counting 8 bytes")
    # What it kept fits the cap: each chunk's text and 8 bytes for its place.
    assert sum(len(c.encode()) + 8 for c in final["output"]) <= 100


async def test_a_model_can_have_its_own_output_cap(start_bridge: StartBridge) -> None:
    """demo/echo may keep 100 bytes; demo/story, beside it, the global cap."""
    url = await start_bridge(
        max_output_bytes=100_000, model_options={"demo/echo": {"max_output_bytes": 100}}
    )
    words = {"prompt": "0123456789 " * 20}  # 20 chunks of 11 bytes
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        capped = await create(client, "demo/echo", words)
        detail = await failed_with(client, capped)
        assert detail.startswith("output exceeded max_output_bytes (100 bytes")
        story = await create(client, "demo/story", {"prompt": "x", "max_words": 40, "delay_ms": 0})
        events, _ = await read_stream(client, story["urls"]["stream"])
    assert events[-1].event == "done" and events[-1].data == "{}"
    assert sum(len(e.data.encode()) + 8 for e in events if e.event == "output") > 100


async def test_empty_chunks_are_not_free(start_bridge: StartBridge) -> None:
    """A model yielding empty strings without end is stopped by the cap too."""
    url = await start_bridge(max_output_bytes=80_000)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(
            client, "demo/echo", {"prompt": "x", "tokens": [""], "repeat": 10**9}
        )
        detail = await failed_with(client, prediction)
        final = (await client.get(prediction["urls"]["get"])).json()
    assert detail.startswith("output exceeded max_output_bytes (80000 bytes")
    assert 0 < len(final["output"]) <= 10_000


class SlowDescribe(Misbehaving):
    """Its first two Describe calls hang (until the server stops); later
    ones answer at once."""

    def __init__(self) -> None:
        self.describes = 0

    async def Describe(self, request: Any, context: Any) -> Any:
        self.describes += 1
        if self.describes <= 2:
            await asyncio.sleep(3600)
        return await super().Describe(request, context)

    async def Predict(self, request: Any, context: Any) -> Any:
        yield wire.output_response(["fine "])


async def test_a_slow_describe_is_shared_not_repeated_per_request(
    start_bridge: StartBridge,
) -> None:
    """A backend slow to Describe gets one Describe at a time from the
    bridge, however many requests need it: the prediction's own Describe
    (cut off by start_timeout_seconds) is shared by a listing meanwhile;
    once it has ended, the next use asks again."""
    backend = SlowDescribe()
    with RawServer(backend) as server:
        url = await start_bridge(
            targets={"test/misbehaving": server.target},
            model_options={"test/misbehaving": {"start_timeout_seconds": 5}},
            describe_timeout_seconds=0.1,
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            # Describe 1 (the create's) gives up after 0.1 s: not validated.
            prediction = await create(client, "test/misbehaving", {})
            # Describe 2 is the prediction's own, until its start deadline.
            with trio.fail_after(10):
                while backend.describes < 2:  # noqa: ASYNC110 - a count in another thread
                    await trio.sleep(0.01)
            # A listing meanwhile waits on that one (0.1 s), asks nothing more.
            model = (await client.get("/v1/models/test/misbehaving")).json()
            assert model["latest_version"] is None
            events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert backend.describes == 2
            # Then Describe 3 answers.
            model = (await client.get("/v1/models/test/misbehaving")).json()
            assert model["latest_version"]["id"] == "v1"
    assert [e.event for e in events] == ["error", "done"]
    assert "Describe timed out" in events[0].data


def _undecodable(last: bytes) -> grpc.GenericRpcHandler:
    """A bridge.v1 backend that sends one good output, then *last* as it is."""

    async def describe(request: bytes, context: Any) -> bytes:
        streams = {"type": "array", "x-cog-array-type": "iterator"}
        info = wire.ModelInfo("test/undecodable", "v1", {"type": "object"}, streams)
        return wire.model_info_to_pb(info).SerializeToString()

    async def predict(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield wire.output_response(["one "]).SerializeToString()
        yield last
        await asyncio.sleep(3600)  # what the bridge read must end the call, not this

    handlers = {
        "Describe": grpc.unary_unary_rpc_method_handler(describe),
        "Predict": grpc.unary_stream_rpc_method_handler(predict),
    }  # no (de)serializers: bytes as they are
    return grpc.method_handlers_generic_handler("bridge.v1.Predictor", handlers)


@pytest.mark.parametrize(
    "last",
    [
        bytes([2 << 3 | 2, 2]) + b"\xff\xfe",  # log: a string that is not UTF-8
        wire.output_response(["truncated"]).SerializeToString()[:-3],
    ],
    ids=["invalid UTF-8", "truncated"],
)
async def test_a_message_that_cannot_be_decoded_fails_at_once(
    start_bridge: StartBridge, last: bytes
) -> None:
    """grpc.aio hands None for a message it cannot decode: the prediction
    hung until idle_seconds (an AttributeError in an asyncio callback),
    then failed as "no output"."""
    with RawServer(_undecodable(last)) as server:
        url = await start_bridge({"test/undecodable": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            prediction = await create(client, "test/undecodable", {})
            with trio.fail_after(10):
                detail = await failed_with(client, prediction)
            assert detail == "model backend sent a message that cannot be decoded"
            events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert [e.data for e in events if e.event == "output"] == ["one "]
