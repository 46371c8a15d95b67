"""Bounded: admission, request size, retention, and readers that stall."""

from __future__ import annotations

import re
import socket
import uuid

import httpx
import trio

from tests.conftest import StartBridge, create, poll_until, read_stream
from tests.test_api import assert_problem


async def status(client: httpx.AsyncClient, prediction: dict) -> str:
    return (await client.get(prediction["urls"]["get"])).json()["status"]


async def wait_status(client: httpx.AsyncClient, prediction: dict, want: str) -> None:
    async def reached() -> bool:
        return await status(client, prediction) == want

    await poll_until(reached)


async def test_over_capacity_is_429_and_the_queue_is_fifo(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_running=1, max_queued=1, retry_after_seconds=3)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        running = await create(client, "test/endless", {"key": uuid.uuid4().hex})
        await wait_status(client, running, "processing")
        queued = await create(client, "demo/echo", {"prompt": "after you"})
        refused = await client.post(
            "/v1/models/demo/echo/predictions", json={"input": {"prompt": "no room"}}
        )
        assert_problem(refused, 429)
        assert refused.headers["Retry-After"] == "3"
        await trio.sleep(0.2)
        assert await status(client, queued) == "starting"  # waits its turn
        metrics = (await client.get("/metrics")).text
        assert "bridge_predictions_queued 1.0" in metrics
        await client.post(running["urls"]["cancel"])
        events, _ = await read_stream(client, queued["urls"]["stream"])
        assert "".join(e.data for e in events if e.event == "output") == "after you"
        # Capacity is back: a create is accepted again.
        await create(client, "demo/echo", {"prompt": "room now"})


async def test_a_model_at_its_limit_does_not_block_others(start_bridge: StartBridge) -> None:
    url = await start_bridge(model_options={"test/endless": {"max_running": 1}})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        first = await create(client, "test/endless", {"key": uuid.uuid4().hex})
        second = await create(client, "test/endless", {"key": uuid.uuid4().hex})
        await wait_status(client, first, "processing")
        other = await create(client, "demo/echo", {"prompt": "not blocked"})
        events, _ = await read_stream(client, other["urls"]["stream"])
        assert events[-1].data == "{}"
        assert await status(client, second) == "starting"
        await client.post(first["urls"]["cancel"])
        await wait_status(client, second, "processing")
        await client.post(second["urls"]["cancel"])


async def test_body_too_large_is_413(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_body_bytes=1000)
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/models/demo/echo/predictions", json={"input": {"prompt": "x" * 2000}}
        )
        assert_problem(response, 413)


async def test_ended_predictions_are_kept_for_a_while_then_404(start_bridge: StartBridge) -> None:
    url = await start_bridge(retention_count=2, retention_seconds=1)
    async with httpx.AsyncClient(base_url=url) as client:
        done = []
        for i in range(3):
            p = await create(client, "demo/echo", {"prompt": f"p{i}"})
            await read_stream(client, p["urls"]["stream"])
            done.append(p)
        listed = (await client.get("/v1/predictions")).json()["results"]
        assert [p["id"] for p in listed] == [done[2]["id"], done[1]["id"]]
        assert_problem(await client.get(done[0]["urls"]["get"]), 404)
        assert (await client.get(done[2]["urls"]["get"])).status_code == 200
        await trio.sleep(1.1)
        assert_problem(await client.get(done[2]["urls"]["get"]), 404)
        assert_problem(await client.get(done[2]["urls"]["stream"]), 404)


async def test_a_stalled_reader_costs_nothing_is_cut_off_and_resumes(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge(stall_seconds=1)
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # 6 MB of output in 1 kB events: far more than socket buffers hold.
        prediction = await create(client, "demo/echo", {"prompt": "x" * 1000, "repeat": 6000})
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        path = prediction["urls"]["stream"].removeprefix(url)
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # Meanwhile another reader gets everything, and the prediction ends.
        with trio.fail_after(30):
            events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert len([e for e in events if e.event == "output"]) == 6000
        assert (await client.get(prediction["urls"]["get"])).json()["status"] == "succeeded"

        # The bridge cuts the stalled reader off (it has read nothing yet).
        async def no_stream_clients() -> bool:
            return "bridge_stream_clients_active 0.0" in (await client.get("/metrics")).text

        await poll_until(no_stream_clients)
        # What reached it ends mid-stream; it resumes after its last whole event.
        received = await trio.to_thread.run_sync(_read_what_arrived, stalled)
        assert b"event: done" not in received
        whole = re.findall(rb"event: output\nid: (\S+)\ndata: x{1000}\n\n", received)
        assert whole, received[:300]
        last_id = whole[-1].decode()
        resumed, _ = await read_stream(
            client, prediction["urls"]["stream"], {"Last-Event-ID": last_id}
        )
        assert resumed == events[[e.id for e in events].index(last_id) + 1 :]
        assert resumed[-1].event == "done"


def _read_what_arrived(sock: socket.socket) -> bytes:
    """What reached *sock*: the kernel cut the connection off without a
    reset, so read until nothing more comes for a second."""
    chunks = []
    sock.settimeout(1)
    with sock:
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)
