"""Connections end when HTTP says they end: ``Connection: close``, HTTP/1.0,
the keep-alive timeout, and after a finished stream. Raw sockets, so what
the server does with the connection is what the test sees."""

from __future__ import annotations

import json
import re

import trio

from tests.conftest import StartBridge


async def connect(url: str) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))


async def read_until_closed(stream: trio.SocketStream, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if
    it is still open after *within* seconds."""
    data = bytearray()
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return bytes(data)


async def read_answer(stream: trio.SocketStream) -> bytes:
    """One answer with a Content-Length, read whole, leaving the connection
    open."""
    data = bytearray()
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


def request(method: str, path: str, *, version: str = "1.1", body: bytes = b"", **headers: str):
    lines = [f"{method} {path} HTTP/{version}", "Host: x"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_connection_close_is_honoured(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with await connect(url) as stream:
        await stream.send_all(request("GET", "/health", Connection="close"))
        answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert answer.rstrip().endswith(b"}"), answer  # the whole JSON body


async def test_http_1_0_is_closed_after_its_answer(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with await connect(url) as stream:
        await stream.send_all(request("GET", "/health", version="1.0"))
        answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 200"), answer


async def test_an_idle_keep_alive_connection_is_closed(start_bridge: StartBridge) -> None:
    url = await start_bridge(keep_alive_seconds=0.5)
    async with await connect(url) as stream:
        # Two requests on one connection: keep-alive works...
        for _ in range(2):
            await stream.send_all(request("GET", "/health"))
            answer = await read_answer(stream)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        # ...and once idle for keep_alive_seconds, the server lets it go.
        start = trio.current_time()
        assert await read_until_closed(stream, within=5) == b""
        assert trio.current_time() - start >= 0.4


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
