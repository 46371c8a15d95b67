"""Hostile clients (issue 18): what one connection does stays in it, and
no request holds the server. Raw sockets, so the test sees exactly what the
server does with the connection."""

from __future__ import annotations

import logging
import resource

import httpx
import pytest
import trio

from bridge.server import FD_RESERVE, connection_limit
from tests.conftest import StartBridge, create
from tests.test_connections import connect, read_answer, read_until_closed, request


async def test_bodies_cut_off_at_the_body_timeout_leave_the_server_serving(
    start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Partial bodies whose clients hang up just as the body timeout
    answers 408: the 408 and hypercorn's own error answer met on the socket
    (BusyResourceError), which ended the whole process. Rounds of
    connections closing at staggered times around the timeout drive that
    race many times."""
    timeout = 0.3
    url = await start_bridge(body_timeout_seconds=timeout)
    head = request("POST", "/v1/predictions", Content_Type="application/json")
    partial_body = head.replace(b"\r\n\r\n", b"\r\nContent-Length: 1000\r\n\r\n{")

    async def hang_up_near_the_timeout(i: int) -> None:
        stream = await connect(url)
        await stream.send_all(partial_body)
        await trio.sleep(timeout - 0.02 + 0.04 * i / 200)
        await stream.aclose()

    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for _ in range(6):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(hang_up_near_the_timeout, i)
            assert (await client.get("/health")).status_code == 200
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == []


async def test_a_slow_body_is_408_and_closed(start_bridge: StartBridge) -> None:
    url = await start_bridge(body_timeout_seconds=0.3)
    stream = await connect(url)
    await stream.send_all(
        request("POST", "/v1/predictions").replace(b"\r\n\r\n", b"\r\nContent-Length: 10\r\n\r\n{")
    )
    answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 408 ")


SMUGGLING = {
    "Content-Length and Transfer-Encoding": (
        b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two identical Content-Length": (
        b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    ),
    "a folded Content-Length": (
        b"POST /v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 2\r\n\r\n{}"
    ),
    "a folded header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n",
    "bare LF line ends": b"GET /health HTTP/1.1\nHost: x\n\n",
    "a bare LF among CRLF": b"GET /health HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "a bare CR": b"GET /health HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_framing_is_400_and_the_connection_closes(
    start_bridge: StartBridge, raw: bytes
) -> None:
    """A request whose framing two parsers could read differently is
    refused, and nothing pipelined behind it is answered (RFC 9112 6.3)."""
    url = await start_bridge()
    stream = await connect(url)
    await stream.send_all(raw + request("GET", "/health"))
    answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1") == 1, answer


async def test_pipelined_requests_are_still_answered(start_bridge: StartBridge) -> None:
    """The strict head check looks at every request on a connection, and
    well-formed pipelining keeps working."""
    url = await start_bridge()
    stream = await connect(url)
    await stream.send_all(request("GET", "/health") + request("GET", "/health"))
    for _ in range(2):
        assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")
    await stream.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n")
    assert (await read_until_closed(stream, within=5)).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    "raw",
    [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
    ],
    ids=["the HTTP/2 preface", "an HTTP/2.0 request line"],
)
async def test_http2_is_not_spoken_in_cleartext_by_default(
    start_bridge: StartBridge, raw: bytes
) -> None:
    url = await start_bridge()
    stream = await connect(url)
    await stream.send_all(raw)
    answer = await read_until_closed(stream, within=5)
    assert answer.startswith(b"HTTP/1.1 505 "), answer


async def test_an_h2c_upgrade_is_answered_in_http11(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    stream = await connect(url)
    await stream.send_all(
        request(
            "GET",
            "/health",
            Connection="Upgrade, HTTP2-Settings",
            Upgrade="h2c",
            HTTP2_Settings="AAMAAABkAAQAoAAAAAIAAAAA",
        )
    )
    assert (await read_answer(stream)).startswith(b"HTTP/1.1 200 ")


async def test_connections_past_max_connections_wait_for_one_to_close(
    start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """At the cap, accepting pauses (the client waits in the backlog) and
    says so once; when one connection closes, the next is served."""
    url = await start_bridge(max_connections=4)
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "test/endless", {"key": "cap"})
    streams = []
    for _ in range(4):
        stream = await connect(url)
        await stream.send_all(request("GET", f"/v1/predictions/{prediction['id']}/stream"))
        with trio.fail_after(5):
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        streams.append(stream)
    waiting = [await connect(url) for _ in range(2)]
    for stream in waiting:
        await stream.send_all(request("GET", "/health", Connection="close"))
    with trio.move_on_after(0.5):
        await waiting[0].receive_some(1)
        pytest.fail("a connection past max_connections was served")
    await streams.pop().aclose()
    assert (await read_until_closed(waiting[0], within=10)).startswith(b"HTTP/1.1 200 ")
    assert (await read_until_closed(waiting[1], within=10)).startswith(b"HTTP/1.1 200 ")
    said = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(said) == 1
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post(f"/v1/predictions/{prediction['id']}/cancel")


def test_the_default_connection_cap_is_below_the_open_file_limit() -> None:
    cap = connection_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 64 <= cap <= soft - FD_RESERVE or (cap == 64 and soft - FD_RESERVE < 64)
