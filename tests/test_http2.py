"""HTTP/2 holds the bounds HTTP/1.1 does (issue 18, item 2), whatever a
client does with its flow-control windows: a reader that takes nothing
for ``stall_seconds`` is reset, a connection whose client went is closed,
and shutdown keeps its deadlines. Real h2 clients (tests/h2_client.py),
in cleartext with ``h2c`` on, and over TLS with HTTP/2 by ALPN."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import h2.events
import httpx
import pytest
import trio
import trustme

from bridge.server import serve
from tests.conftest import StartBridge, bridge_settings, create
from tests.h2_client import H2Client
from tests.helpers import health_is_quick

#: A finished demo/echo prediction of about 4.4 MB.
BIG = {"prompt": "abcdefghij " * 1000, "repeat": 400}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def finished(client: httpx.AsyncClient, input: dict) -> dict:
    prediction = await create(client, "demo/echo", input)
    with trio.fail_after(30):
        while prediction["status"] != "succeeded":
            await trio.sleep(0.1)
            prediction = (await client.get(f"/v1/predictions/{prediction['id']}")).json()
    return prediction


async def test_connections_of_clients_that_went_are_closed(start_bridge: StartBridge) -> None:
    """Window 0, GET /health, the headers, close: hypercorn waited forever
    for window credit to end each answer, so each such connection stayed
    (in CLOSE-WAIT). With room for 4 connections, the 40 here are served
    one after another only if each one that went was closed."""
    url = await start_bridge(h2c=True, max_connections=4)
    for _ in range(40):
        client = await H2Client.open(port_of(url), window=0)
        stream_id = await client.get("/health")
        await client.until(h2.events.ResponseReceived, stream_id)
        await client.aclose()
    await health_is_quick(url)


@pytest.mark.parametrize("window", [0, 65535], ids=["window 0", "one window"])
async def test_a_reader_that_takes_nothing_is_reset(start_bridge: StartBridge, window: int) -> None:
    """A reader of a 4.4 MB stream whose window stays shut (or who takes one
    window and no more), TCP healthy: RST_STREAM after stall_seconds; the
    connection goes on serving."""
    url = await start_bridge(h2c=True, stall_seconds=0.5)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        prediction = await finished(http, BIG)
    client = await H2Client.open(port_of(url), window=window)
    stream_id = await client.get(f"/v1/predictions/{prediction['id']}/stream")
    events = await client.until(h2.events.StreamReset, stream_id)
    received = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    assert received <= window
    health = await client.get("/health")
    client.connection.increment_flow_control_window(1 << 20, health)
    client.connection.increment_flow_control_window(1 << 20)
    await client.flush()
    events = await client.until(h2.events.StreamEnded, health)
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[":status"] == "200"
    await client.aclose()


async def test_readers_that_take_nothing_hold_one_slice_each(start_bridge: StartBridge) -> None:
    """200 readers of one 4.4 MB prediction, windows shut, TCP healthy:
    each held all of it (RSS 76 MB -> 3.4 GB for 2,000 of them). Each
    writer waits now, holding one slice (64 KiB) in the connection's
    buffer. The bridge runs in this process, so its RSS is this one's."""
    url = await start_bridge(h2c=True, stall_seconds=30)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        prediction = await finished(http, BIG)
    before = _rss()
    path = f"/v1/predictions/{prediction['id']}/stream"
    clients = [await H2Client.open(port_of(url), window=0) for _ in range(2)]
    for client in clients:  # 100 streams each: hypercorn's most at once
        for stream_id in [await client.get(path) for _ in range(100)]:
            await client.until(h2.events.ResponseReceived, stream_id)

    async def keep_answering(client: H2Client) -> None:
        while await client.events():
            pass

    with trio.move_on_after(1):  # what the writers would write meanwhile
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(keep_answering, client)
    grown = _rss() - before
    await health_is_quick(url)
    for client in clients:
        await client.aclose()
    assert grown < 100 << 20, f"RSS grew {grown >> 20} MiB"


def _rss() -> int:
    """This process's resident memory, in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def test_shutdown_keeps_its_deadlines_with_readers_that_take_nothing(
    demo_targets: dict, tmp_path: Path
) -> None:
    """Connections of readers whose windows are shut held a shielded send
    forever: SIGTERM waited 40 s, a second 20 s more. Now shutdown takes
    its deadlines (and a reader at most stall_seconds)."""
    stop = trio.Event()
    stopped = trio.Event()
    settings = bridge_settings(
        tmp_path,
        demo_targets,
        h2c=True,
        drain_seconds=0,
        shutdown_timeout_seconds=1,
        stall_seconds=1,
    )

    async def run(task_status: trio.TaskStatus[int]) -> None:
        await serve(settings, shutdown_trigger=stop.wait, task_status=task_status)
        stopped.set()

    async def keep_answering(client: H2Client) -> None:
        while await client.events():  # pings answered: TCP stays healthy
            pass

    async with trio.open_nursery() as nursery:
        port = await nursery.start(run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            prediction = await finished(http, BIG)
        for _ in range(5):
            client = await H2Client.open(port, window=0)
            # Answers stuck at their last message (sent shielded) and long
            # ones stuck midway.
            for path in ("/health", f"/v1/predictions/{prediction['id']}/stream") * 2:
                stream_id = await client.get(path)
                await client.until(h2.events.ResponseReceived, stream_id)
            nursery.start_soon(keep_answering, client)
        started = trio.current_time()
        stop.set()
        with trio.fail_after(15):
            await stopped.wait()
        took = trio.current_time() - started
        nursery.cancel_scope.cancel()
    # The connections' grace (1 s), then our hard deadline (1 s more); it
    # waited forever before (the test's 15 s here).
    assert took < 1 + 1 + 4, took


async def test_https_speaks_http2_by_alpn_and_http11_too(
    start_bridge: StartBridge, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    ca, certfile, keyfile = certificate
    url = await start_bridge(certfile=str(certfile), keyfile=str(keyfile))
    assert url.startswith("http://")  # the fixture's; the bridge speaks TLS
    port = port_of(url)
    tls = ssl.create_default_context()
    ca.configure_trust(tls)
    tls.set_alpn_protocols(["h2", "http/1.1"])
    client = await H2Client.open(port, tls=tls)
    stream_id = await client.get("/health")
    events = await client.until(h2.events.StreamEnded, stream_id)
    (response,) = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert dict(response.headers)[":status"] == "200"
    await client.aclose()
    async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=tls) as http:
        prediction = await create(http, "demo/echo", {"prompt": "over TLS"})
        assert prediction["urls"]["stream"].startswith(f"https://localhost:{port}/")
