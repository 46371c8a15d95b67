"""Many predictions on one backend keep every per-prediction guarantee,
on both of bridge.v1's transports: ``Predict`` (a call each) and
``Stream`` (all of a target's predictions on one call, each message the
news of all of them). Each test takes the ``transport`` fixture, so it
runs against both: a real bridge, real SDK backends, real HTTP clients."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import replicate
import trio

from bridge.sdk import Model, ModelServer
from tests.backends import BackendProcess, backend_processes
from tests.conftest import (
    PROBES,
    StartBridge,
    create,
    ended,
    gate,
    open_gate,
    poll_until,
    read_stream,
    wait_closed,
)
from tests.helpers import in_thread, status, wait_status
from tests.test_limits import gauge


@pytest.fixture(autouse=True)
def on_its_transport(
    request: pytest.FixtureRequest,
    transport: dict[str, str],
    demo_targets: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[None]:
    """Each test's predictions went over its transport (as the SDK logs
    them as they start), none over the other (seen for backends in this
    process: not a backend_process's)."""
    caplog.set_level(logging.INFO, logger="bridge.sdk")
    yield
    if "backend_process" in request.fixturenames:
        return
    records = caplog.get_records("call")
    started = [r.getMessage() for r in records if r.name == "bridge.sdk"]
    started = [m for m in started if " started" in m]
    on_stream = [m for m in started if m.endswith("(on a Stream call)")]
    assert started
    assert on_stream == (started if transport is demo_targets else [])


def outputs(events: list[Any]) -> str:
    return "".join(e.data for e in events if e.event == "output")


async def test_many_at_once_each_get_their_own_output(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    url = await start_bridge(targets=transport)
    prompts = [f"stream {n} says {' '.join(['word'] * (n % 7 + 3))}" for n in range(24)]
    got: dict[int, list[Any]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> None:
            made = await create(client, "demo/echo", {"prompt": prompts[n], "delay_ms": 3})
            got[n], _ = await read_stream(client, made["urls"]["stream"])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for n in range(len(prompts)):
                    nursery.start_soon(one, n)
    for n, prompt in enumerate(prompts):
        assert outputs(got[n]) == prompt and got[n][-1].data == "{}", n


async def test_a_cancel_reaches_that_prediction_s_generator_only(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    url = await start_bridge(targets=transport)
    keys = [uuid.uuid4().hex for _ in range(4)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = [await create(client, "test/endless", {"key": key}) for key in keys]
        for prediction in made:
            await wait_status(client, prediction, "processing")
        await client.post(made[0]["urls"]["cancel"])
        await wait_closed(keys[0])
        # The others go on making tokens after it.
        after = {key: PROBES[key].made for key in keys[1:]}

        async def all_went_on() -> bool:
            return all(PROBES[key].made >= after[key] + 3 for key in keys[1:])

        await poll_until(all_went_on)
        assert not any(PROBES[key].closed.is_set() for key in keys[1:])
        assert await status(client, made[0]) == "canceled"
        for prediction in made[1:]:
            assert await status(client, prediction) == "processing"
            await client.post(prediction["urls"]["cancel"])
        for key in keys[1:]:
            await wait_closed(key)


async def test_a_prediction_that_fails_fails_alone(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    url = await start_bridge(targets=transport)
    words = "one two three four five six seven eight"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = [
            await create(
                client,
                "demo/echo",
                {"prompt": words, "delay_ms": 5, **({"fail_after": 3} if n == 2 else {})},
            )
            for n in range(5)
        ]
        with trio.fail_after(30):
            ended = [(await read_stream(client, p["urls"]["stream"]))[0] for p in made]
        finals = [(await client.get(p["urls"]["get"])).json() for p in made]
    assert [e.event for e in ended[2][-2:]] == ["error", "done"]
    assert outputs(ended[2]) == "one two three "
    assert finals[2]["status"] == "failed"
    assert finals[2]["error"] == "echo failed after 3 chunks, as asked (fail_after)"
    for n in (0, 1, 3, 4):
        assert outputs(ended[n]) == words and finals[n]["status"] == "succeeded", n


@pytest.fixture
async def backend_process(
    transport: dict[str, str],
    demo_targets: dict[str, str],
) -> AsyncIterator[Callable[[int], Awaitable[BackendProcess]]]:
    """Starts ``demo-backend`` processes on the transport of the test (on a
    port, if given), and kills them all at its end."""
    async with backend_processes(predict_only=transport is not demo_targets) as start:
        yield start


async def test_a_backend_that_dies_fails_every_prediction_then_serves_again(
    start_bridge: StartBridge,
    backend_process: Callable[[int], Awaitable[BackendProcess]],
) -> None:
    backend = await backend_process(0)
    url = await start_bridge(targets={"demo/echo": backend.target})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = [
            await create(client, "demo/echo", {"prompt": "slow words " * 50, "delay_ms": 50})
            for _ in range(4)
        ]
        for prediction in made:
            await wait_status(client, prediction, "processing")
        await backend.kill()
        with trio.fail_after(20):
            for prediction in made:
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                assert [e.event for e in events[-2:]] == ["error", "done"]
                assert json.loads(events[-2].data)["detail"].startswith("model backend unavailable")
                final = (await client.get(prediction["urls"]["get"])).json()
                assert final["status"] == "failed"
        # Back on its port: new predictions work, with no restart of the bridge.
        await backend_process(backend.port)
        again = await create(client, "demo/echo", {"prompt": "back again"})
        events, _ = await read_stream(client, again["urls"]["stream"])
        assert outputs(events) == "back again" and events[-1].data == "{}"


async def test_the_backend_s_concurrency_bounds_what_runs(
    start_bridge: StartBridge, transport: dict[str, str], demo_targets: dict[str, str]
) -> None:
    """A backend that says it runs 2 at once gets no third while 2 run,
    whichever transport carries them."""
    multiplexed = transport is demo_targets
    with ModelServer(Model("test/two", gate, concurrency=2, multiplexed=multiplexed)) as two:
        url = await start_bridge(targets={**transport, "test/two": two.target})
        keys = [uuid.uuid4().hex for _ in range(3)]
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = [await create(client, "test/two", {"key": key}) for key in keys]
            await wait_status(client, made[0], "processing")
            await wait_status(client, made[1], "processing")
            # The third waits in the bridge's queue, not at the backend.
            assert await gauge(client, "bridge_predictions_queued") == 1
            assert await status(client, made[2]) == "starting"
            open_gate(keys[0])
            await wait_status(client, made[2], "processing")
            for key in keys[1:]:
                open_gate(key)
            for prediction in made:
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                assert outputs(events) == "waiting through"


async def test_a_reader_that_stops_reading_holds_back_no_other_prediction(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    """One client stops reading a prediction that sends megabytes; the
    predictions beside it on the same backend (on Stream, the same call)
    stream to their ends meanwhile, and the stalled one is whole."""
    url = await start_bridge(targets=transport)
    # 4 MiB, far more than the socket buffers hold.
    big = {"prompt": "-", "tokens": ["x" * 65536], "repeat": 64}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        stalled = await create(client, "demo/echo", big)
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(f"GET {stalled['urls']['stream'][len(url) :]} HTTP/1.0\r\n\r\n".encode())
        try:
            with trio.fail_after(30):
                for n in range(6):
                    made = await create(
                        client, "demo/echo", {"prompt": f"beside it {n}", "delay_ms": 2}
                    )
                    events, _ = await read_stream(client, made["urls"]["stream"])
                    assert outputs(events) == f"beside it {n}"
            # The stalled prediction is whole: read by another client.
            with trio.fail_after(30):
                events, _ = await read_stream(client, stalled["urls"]["stream"])
        finally:
            sock.close()
    assert outputs(events) == "x" * 65536 * 64 and events[-1].data == "{}"


async def test_demo_batch_steps_its_predictions_together(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    url = await start_bridge(targets=transport)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        made = [
            await create(
                client,
                "demo/batch",
                {"prompt": f"seq {n}", "max_tokens": 5 + n, "tokens_per_second": 200},
            )
            for n in range(8)
        ]
        with trio.fail_after(30):
            for n, prediction in enumerate(made):
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                tokens = [e.data for e in events if e.event == "output"]
                assert tokens == (["seq ", f"{n} "] * 10)[: 5 + n], n
                assert events[-1].data == "{}"


async def huge(kind: str, size: int = 0, key: str = "") -> AsyncIterator[Any]:
    """``test/huge``: a first token, then one output of *kind*: ``text`` or
    ``json`` of about *size* bytes, ``object`` (not JSON), or ``gate`` (the
    rest of a prediction that waits for GATES[key])."""
    yield "small "
    if kind == "text":
        yield "y" * size
    elif kind == "json":
        yield {"values": ["z" * 1000] * (size // 1000)}
    elif kind == "object":
        yield object()
    else:
        async for token in gate(key):
            yield token


@pytest.mark.parametrize(
    ("kind", "detail"),
    [
        ("text", "more than a message may carry"),
        ("json", "more than a message may carry"),
        ("object", "an output that is not JSON (object)"),
    ],
)
async def test_an_output_that_cannot_be_sent_fails_that_prediction_only(
    start_bridge: StartBridge,
    transport: dict[str, str],
    demo_targets: dict[str, str],
    kind: str,
    detail: str,
) -> None:
    """An output over 4 MiB (a message's most), or one that is not JSON,
    fails its prediction, after what came before it; another prediction
    of the same backend (on Stream, the same call) goes on to its end."""
    multiplexed = transport is demo_targets
    with ModelServer(Model("test/huge", huge, multiplexed=multiplexed)) as server:
        url = await start_bridge(targets={**transport, "test/huge": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            key = uuid.uuid4().hex
            beside = await create(client, "test/huge", {"kind": "gate", "key": key})
            await wait_status(client, beside, "processing")
            bad = await create(client, "test/huge", {"kind": kind, "size": 5 * 1024 * 1024})
            events, _ = await read_stream(client, bad["urls"]["stream"])
            assert [e.event for e in events] == ["output", "error", "done"]
            assert outputs(events) == "small "
            assert detail in json.loads(events[-2].data)["detail"]
            open_gate(key)
            events, _ = await read_stream(client, beside["urls"]["stream"])
            assert outputs(events) == "small waiting through"
            fine = await create(client, "test/huge", {"kind": "json", "size": 3000})
            final = await ended(client, fine["id"])
            assert final["output"] == ["small ", {"values": ["z" * 1000] * 3}]


async def test_large_inputs_at_once_all_reach_the_backend(
    start_bridge: StartBridge, transport: dict[str, str]
) -> None:
    """Five inputs of 900 kB created at once: on Stream their starts would
    make one request over the backend's 4 MiB; each arrives whole."""
    url = await start_bridge(targets=transport)
    got: dict[int, list[Any]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> None:
            prompt = f"{n}" * 900_000
            made = await create(client, "demo/echo", {"prompt": prompt})
            got[n], _ = await read_stream(client, made["urls"]["stream"])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for n in range(5):
                    nursery.start_soon(one, n)
    for n in range(5):
        assert outputs(got[n]) == f"{n}" * 900_000 and got[n][-1].data == "{}"


def settings_model(prompt: str) -> Iterator[str]:
    settings: dict[str, str] = {}
    yield "start "
    yield settings["temperature"]


async def test_a_model_s_traceback_reaches_its_prediction_s_logs(
    start_bridge: StartBridge,
    transport: dict[str, str],
    demo_targets: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A model that raises KeyError: the error is the line a user reads
    (``KeyError: 'temperature'``), the prediction's logs get the traceback
    through the model's own code (not the SDK's), and the model's process
    logs it whole."""
    multiplexed = transport is demo_targets
    with ModelServer(Model("test/settings", settings_model, multiplexed=multiplexed)) as server:
        url = await start_bridge(targets={**transport, "test/settings": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = await create(client, "test/settings", {"prompt": "hi"})
            final = await ended(client, made["id"])
        # As a user of Replicate's own client reads it.
        seen = await in_thread(
            replicate.Client(api_token="r8_test", base_url=url).predictions.get, made["id"]
        )
        assert (seen.status, seen.error, seen.logs) == ("failed", final["error"], final["logs"])
    assert final["status"] == "failed" and final["output"] == ["start "]
    assert final["error"] == "KeyError: 'temperature'"
    logs = final["logs"].splitlines()
    assert logs[0] == "Traceback (most recent call last):"
    assert logs[-1] == "KeyError: 'temperature'"
    assert any("in settings_model" in line for line in logs)
    assert '    yield settings["temperature"]' in logs
    assert not any("servicer.py" in line or "asyncio" in line for line in logs), logs
    (record,) = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "bridge.sdk"]
    assert record.getMessage() == f"prediction {made['id']} failed"
    assert record.exc_info is not None and record.exc_info[0] is KeyError
