"""Bounded: admission, request size, retention, and readers that stall."""

from __future__ import annotations

import gc
import json
import re
import socket
import uuid

import httpx
import trio

from tests.conftest import PROBES, StartBridge, create, open_gate, poll_until, read_stream
from tests.helpers import assert_problem, status, wait_status


async def gauge(client: httpx.AsyncClient, name: str) -> float:
    metrics = (await client.get("/metrics")).text
    return float(re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)[1])


async def test_over_capacity_is_429_and_the_queue_is_fifo(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_running=1, max_queued=4, retry_after_seconds=3)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        key = uuid.uuid4().hex
        running = await create(client, "test/gate", {"key": key})
        await wait_status(client, running, "processing")
        queued = [await create(client, "demo/echo", {"prompt": f"queued {i}"}) for i in range(4)]
        refused = await client.post(
            "/v1/models/demo/echo/predictions", json={"input": {"prompt": "no room"}}
        )
        assert_problem(refused, 429)
        assert refused.headers["Retry-After"] == "3"
        # Nothing of the queue can run while the gate holds the one slot.
        assert await gauge(client, "bridge_predictions_queued") == 4
        assert [await status(client, p) for p in queued] == ["starting"] * 4
        open_gate(key)
        for prediction in queued:
            events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert events[-1].event == "done"
        started = [(await client.get(p["urls"]["get"])).json()["started_at"] for p in queued]
        # One slot: each ran after the one before it, in the order created.
        assert started == sorted(started)
        # Capacity is back: a create is accepted again.
        await create(client, "demo/echo", {"prompt": "room now"})


async def test_cancelling_a_queued_prediction(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_running=1, max_queued=2)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        key, never = uuid.uuid4().hex, uuid.uuid4().hex
        running = await create(client, "test/gate", {"key": key})
        await wait_status(client, running, "processing")
        doomed = await create(client, "test/endless", {"key": never})
        after = await create(client, "demo/echo", {"prompt": "next in line"})
        canceled = await client.post(doomed["urls"]["cancel"])
        assert canceled.json()["status"] == "canceled"
        assert canceled.json()["started_at"] is None
        events, _ = await read_stream(client, doomed["urls"]["stream"])
        assert [(e.event, json.loads(e.data)) for e in events] == [("done", {"reason": "canceled"})]
        # Its place in the queue is free, and the one behind it moves up.
        assert await gauge(client, "bridge_predictions_queued") == 1
        await create(client, "demo/echo", {"prompt": "room in the queue"})
        open_gate(key)
        events, _ = await read_stream(client, after["urls"]["stream"])
        assert events[-1].data == "{}"
    # The backend never saw the canceled one.
    assert never not in PROBES


async def test_a_model_at_its_limit_does_not_block_others(start_bridge: StartBridge) -> None:
    """The queue's head is a model at its own limit; a slot frees: the
    prediction of another model behind it takes it."""
    url = await start_bridge(max_running=2, model_options={"test/endless": {"max_running": 1}})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        key = uuid.uuid4().hex
        first = await create(client, "test/endless", {"key": uuid.uuid4().hex})
        holder = await create(client, "test/gate", {"key": key})
        await wait_status(client, first, "processing")
        await wait_status(client, holder, "processing")
        second = await create(client, "test/endless", {"key": uuid.uuid4().hex})
        other = await create(client, "demo/echo", {"prompt": "not blocked"})
        assert await gauge(client, "bridge_predictions_queued") == 2  # second, then other
        open_gate(key)  # one slot frees; second still may not run
        with trio.fail_after(10):
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


async def run_to_end(client: httpx.AsyncClient, input: dict) -> dict:
    prediction = await create(client, "demo/echo", input)
    await read_stream(client, prediction["urls"]["stream"])
    return (await client.get(prediction["urls"]["get"])).json()


async def test_retained_data_is_bounded_the_earliest_ended_goes_first(
    start_bridge: StartBridge,
) -> None:
    """Three predictions of ~40 kB each where 100 kB may be kept: the first
    one's data goes; its metadata stays, marked data_removed."""
    url = await start_bridge(max_retained_bytes=100_000)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        big = {"prompt": "x", "tokens": ["y" * 992], "repeat": 40}  # 40 x (992 + 8)
        done = [await run_to_end(client, big | {"delay_ms": i}) for i in range(3)]
        first, second, third = [(await client.get(p["urls"]["get"])).json() for p in done]
        assert first["data_removed"] is True
        assert (first["input"], first["output"], first["logs"]) == ({}, None, "")
        assert first["status"] == "succeeded" and first["metrics"]["predict_time"] > 0
        for kept in (second, third):
            assert kept["data_removed"] is False
            assert kept["output"] == ["y" * 992] * 40 and kept["input"]["tokens"]
        listed = (await client.get("/v1/predictions")).json()["results"]
        assert [(p["id"], p["data_removed"]) for p in listed] == [
            (third["id"], False),
            (second["id"], False),
            (first["id"], True),
        ]
        assert_problem(await client.get(first["urls"]["stream"]), 410)

        # A running prediction that alone would pass the bound fails; the
        # ended ones made room for it first.
        prediction = await create(client, "demo/echo", big | {"repeat": 200})
        events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert "max_retained_bytes" in json.loads(events[-2].data)["detail"]
        for p in (second, third):
            assert (await client.get(p["urls"]["get"])).json()["data_removed"] is True


async def test_creates_are_refused_while_running_predictions_fill_the_bound(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge(max_retained_bytes=3000)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        running = await create(client, "test/endless", {"key": "x" * 2000})
        response = await client.post(
            "/v1/models/test/endless/predictions", json={"input": {"key": "y" * 2000}}
        )
        assert_problem(response, 429)
        assert "max_retained_bytes" in response.json()["detail"]
        await client.post(running["urls"]["cancel"])
        # Once it ended, its data makes room.
        await create(client, "test/endless", {"key": "y" * 2000, "delay_ms": 10**6})


async def test_list_pages_are_bounded_in_bytes(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_page_bytes=40_000)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        big = {"prompt": "x", "tokens": ["z" * 9_000]}
        ids = [(await run_to_end(client, big | {"delay_ms": i}))["id"] for i in range(7)]
        ids.reverse()  # newest first
        pages = []
        next_url = "/v1/predictions"
        while next_url:
            response = await client.get(next_url)
            pages.append(response)
            next_url = response.json()["next"]
        assert all(len(page.content) <= 40_000 + 200 for page in pages)
        seen = [[p["id"] for p in page.json()["results"]] for page in pages]
        assert seen == [ids[0:2], ids[2:4], ids[4:6], ids[6:]]
        # Back from the last page, the same pages.
        back = pages[-1].json()["previous"]
        assert [p["id"] for p in (await client.get(back)).json()["results"]] == ids[4:6]
        # One prediction larger than a page still gets a page of its own.
        huge = await run_to_end(client, {"prompt": "x", "tokens": ["w" * 40_000]})
        first = (await client.get("/v1/predictions")).json()
        assert [p["id"] for p in first["results"]] == [huge["id"]]


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
        whole = re.findall(rb"event: output\nid: (\S+)\ndata: x{1000} ?\n\n", received)
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


async def test_what_startup_made_is_out_of_the_collectors_way(start_bridge: StartBridge) -> None:
    """A serving bridge freezes what startup made (gc.freeze): a full
    collection no longer walks the ~130,000 objects of its modules, a stall
    every stream used to see (190 ms, at 1,000 paced streams)."""
    gc.unfreeze()
    try:
        await start_bridge()
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()  # this test process's objects: the collector's again
