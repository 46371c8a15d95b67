"""Connections end when HTTP says they end: ``Connection: close``, HTTP/1.0,
the keep-alive timeout, and after a finished stream. Raw sockets, so what
the server does with the connection is what the test sees."""

from __future__ import annotations

import json
import re
import socket
import struct

import httpx
import pytest
import trio

from tests.conftest import StartBridge, create, poll_until
from tests.helpers import connect, read_answer, read_until_closed, request
from tests.sse_clients import spec_events


@pytest.mark.parametrize(
    "raw",
    [
        request("GET", "/health", Connection="close"),
        request("GET", "/health", version="1.0"),  # HTTP/1.0 closes by default
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_the_connection_is_closed_after_the_answer(
    start_bridge: StartBridge, raw: bytes
) -> None:
    url = await start_bridge()
    async with await connect(url) as stream:
        await stream.send_all(raw)
        answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.rstrip().endswith(b"}"), answer  # the whole JSON body


async def test_an_idle_keep_alive_connection_is_closed(start_bridge: StartBridge) -> None:
    url = await start_bridge(keep_alive_seconds=1)
    async with await connect(url) as stream:
        # Two requests on one connection, the second sent as soon as the
        # first is answered: keep-alive works...
        for _ in range(2):
            await stream.send_all(request("GET", "/health"))
            answer = await read_answer(stream)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        # ...and once idle for keep_alive_seconds, the server lets it go.
        # (How long it waited is not measured here: the client's view of it
        # is shorter by however late it read the answer.)
        assert await read_until_closed(stream, within=10) == b""


async def test_a_finished_stream_closes_its_connection(start_bridge: StartBridge) -> None:
    url = await start_bridge(keep_alive_seconds=0.5)
    body = json.dumps({"input": {"prompt": "bye now"}}).encode()
    for headers in ({"Connection": "close"}, {}):
        async with await connect(url) as stream:
            await stream.send_all(
                request(
                    "POST",
                    "/v1/models/demo/echo/predictions",
                    body=body,
                    Accept="text/event-stream",
                    Content_Type="application/json",
                    **headers,
                )
            )
            answer = await read_until_closed(stream, within=10)
        assert b"event: done" in answer, answer


def reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset, as a client that crashed or was killed."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def gauge(client: httpx.AsyncClient, name: str) -> float:
    metrics = (await client.get("/metrics")).text
    return float(re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)[1])


async def test_an_abandoned_direct_stream_cancels_its_prediction(
    start_bridge: StartBridge,
) -> None:
    """A direct streaming create owns its prediction whenever its client goes
    away: before the answer starts, while its headers are written, or once
    the stream runs. The model never ends by itself, so only that ownership
    can end these predictions."""
    url = await start_bridge()
    body = json.dumps({"input": {"key": "abandoned", "delay_ms": 50}}).encode()
    raw = request(
        "POST",
        "/v1/models/test/endless/predictions",
        body=body,
        Accept="text/event-stream",
        Content_Type="application/json",
    )

    async def abandon(after: float, read_first: bool) -> None:
        stream = await connect(url)
        await stream.send_all(raw)
        if read_first:
            with trio.fail_after(10):
                await stream.receive_some(1)
        await trio.sleep(after)
        reset(stream)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            # Resets spread over the first 20 ms after the request, where
            # the create runs and its answer starts; then some mid-stream.
            nursery.start_soon(abandon, i / 2000, False)
        for i in range(10):
            nursery.start_soon(abandon, i / 100, True)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def all_let_go() -> bool:
            return (
                await gauge(client, "bridge_predictions_active") == 0
                and await gauge(client, "bridge_grpc_calls_active") == 0
            )

        await poll_until(all_let_go, within=15)
        listed = (await client.get("/v1/predictions")).json()["results"]
        assert len(listed) >= 10  # the mid-stream ones at least were created
        assert {p["status"] for p in listed} == {"canceled"}


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_a_stream_is_chunked_for_http_1_1_and_raw_to_the_close_for_1_0(
    start_bridge: StartBridge, version: str
) -> None:
    """The body of a stream is framed as its HTTP version needs: chunked, or
    for HTTP/1.0 plain bytes that end when the connection does."""
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "demo/echo", {"prompt": "a b c"})
    path = prediction["urls"]["stream"].split(url, 1)[1]
    async with await connect(url) as stream:
        await stream.send_all(request("GET", path, version=version, Connection="close"))
        answer = await read_until_closed(stream, within=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if version == "1.1":
        assert re.search(rb"(?i)\r\ntransfer-encoding: chunked", head)
        pieces, rest = [], body
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            pieces.append(rest[: int(size, 16)])
            assert rest[int(size, 16) : int(size, 16) + 2] == b"\r\n"
            rest = rest[int(size, 16) + 2 :]
        body = b"".join(pieces)
    else:
        assert b"transfer-encoding" not in head.lower()
    events = spec_events([body])
    assert "".join(e.data for e in events if e.event == "output") == "a b c"
    assert events[-1].event == "done"
