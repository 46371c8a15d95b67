"""Hostile clients (issue 18): what one connection does stays in it, and
no request holds the server. Raw sockets, so the test sees exactly what the
server does with the connection."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bridge.backends import wire
from bridge.cli.logs import TextFormatter
from bridge.sdk import Metrics, Model, ModelServer
from bridge.server import FD_RESERVE
from tests.backends import ENV, Misbehaving, RawServer, read_until
from tests.conftest import StartBridge, create
from tests.helpers import (
    connect,
    health_is_quick,
    kill_what_is_left,
    read_answer,
    read_until_closed,
    request,
    rss_bytes,
    start_run_demo,
)


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

    for _ in range(6):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(hang_up_near_the_timeout, i)
        await health_is_quick(url)
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
    await health_is_quick(url)


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


@pytest.mark.parametrize(
    ("soft", "hard", "cap"),
    [(1024, 1024, 512), (256, 256, 64), (1024, 4096, 4096 - FD_RESERVE)],
    ids=["at the hard limit", "a low limit", "raised to the hard limit"],
)
async def test_the_default_connection_cap_is_below_the_open_file_limit(
    soft: int, hard: int, cap: int
) -> None:
    """In a process of its own, whose open-file limit is set first."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from bridge.server import connection_limit\n"
        "print(connection_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    result = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, env=ENV)
    got_cap, limit = map(int, result.stdout.split())
    assert (got_cap, limit) == (cap, max(soft, min(hard, 65536)))
    assert got_cap <= max(64, limit - FD_RESERVE)


@pytest.mark.parametrize(
    "host", ["a@evil.com", "evil.com/x?", "evil.com:99999", "a b", "evil.com:x"]
)
async def test_an_invalid_host_is_400(start_bridge: StartBridge, host: str) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/predictions", headers={"Host": host})
    assert response.status_code == 400, response.text
    assert "is not a valid host[:port]" in response.json()["detail"]


async def test_without_a_host_urls_name_the_address_listened_on(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "demo/echo", {"prompt": "x"})
    stream = await connect(url)
    await stream.send_all(f"GET /v1/predictions/{prediction['id']} HTTP/1.0\r\n\r\n".encode())
    answer = await read_until_closed(stream, within=5)
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["urls"]["get"] == f"{url}/v1/predictions/{prediction['id']}"


async def test_allowed_hosts_refuse_the_others_and_public_url_wins(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge(allowed_hosts=("127.0.0.1", ".example.com"))
    async with httpx.AsyncClient(base_url=url) as client:
        for host in ("evil.com", "example.com.evil.com", "notexample.com"):
            response = await client.get("/v1/predictions", headers={"Host": host})
            assert response.status_code == 400, host
            assert "allowed_hosts" in response.json()["detail"]
        for host in ("api.example.com", "example.com:8080", "127.0.0.1"):
            response = await client.get("/health", headers={"Host": host})
            assert response.status_code == 200, host
        prediction = (
            await client.post(
                "/v1/models/demo/echo/predictions",
                json={"input": {"prompt": "x"}},
                headers={"Host": "api.example.com"},
            )
        ).json()
        assert prediction["urls"]["get"].startswith("http://api.example.com/v1/predictions/")
    public = await start_bridge(public_url="https://bridge.example.org")
    async with httpx.AsyncClient(base_url=public) as client:
        prediction = await create(client, "demo/echo", {"prompt": "x"}, headers={"Host": "a.b"})
        assert prediction["urls"]["get"].startswith("https://bridge.example.org/v1/")


async def test_head_of_a_running_stream_answers_at_once(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(client, "test/endless", {"key": "head"})
    stream = await connect(url)
    path = f"/v1/predictions/{prediction['id']}/stream"
    await stream.send_all(request("HEAD", path) + request("GET", "/health"))
    with trio.fail_after(5):
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 2:
            data += await stream.receive_some(65536)
    assert b"text/event-stream" in data.split(b"\r\n\r\n")[0]
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post(f"/v1/predictions/{prediction['id']}/cancel")


async def test_options_on_an_unknown_path_is_404(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.options("/nothing/here")).status_code == 404
        preflight = await client.options("/v1/predictions")
        assert preflight.status_code == 204
        assert "content-type" not in preflight.headers


@pytest.mark.parametrize(
    ("cursor", "header"),
    [
        ("b\u00b2", None),
        ("b" + "9" * 5000, None),
        ("a-1", None),
        (None, "1:\u00b2".encode()),
        (None, b"1:" + b"9" * 5000),
    ],
    ids=["a superscript digit", "5000 digits", "a sign", "id superscript", "id 5000 digits"],
)
async def test_bad_cursors_and_event_ids_are_400_written_for_the_user(
    start_bridge: StartBridge, cursor: str | None, header: bytes | None
) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        if cursor is not None:
            response = await client.get("/v1/predictions", params={"cursor": cursor})
            expected = "is not one this server gave out"
        else:
            prediction = await create(client, "demo/echo", {"prompt": "x"})
            response = await client.get(
                prediction["urls"]["stream"], headers={"Last-Event-ID": header}
            )
            expected = "is not an id of this stream"
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert expected in detail and "int()" not in detail and "digits" not in detail
    assert len(detail) < 200


async def test_a_long_cursor_does_not_stall_the_server(start_bridge: StartBridge) -> None:
    """int() of a 4,290-digit cursor once per retained prediction took
    1.6 s a request; now it is parsed once, and refused."""
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(20):
            await create(client, "demo/echo", {"prompt": "x"})
        response = await client.get("/v1/predictions", params={"cursor": "b" + "9" * 4290})
        assert response.status_code == 400
    await health_is_quick(url)


async def test_a_huge_invalid_input_gets_a_small_422(start_bridge: StartBridge) -> None:
    """340,000 bad items (680 KB) made a 46 MB 422 after seconds of
    validation; 70,000 unknown keys an 11 MB one. At most 20 fields are
    listed, and validation stops there."""
    url = await start_bridge()
    bad_items = b'{"input": {"prompt": "x", "tokens": [%b]}}' % b",".join([b"0"] * 340_000)
    unknown = b'{"input": {"prompt": "x", %b}}' % b",".join(b'"k%d": 0' % i for i in range(70_000))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for body in (bad_items, unknown):
            response = await client.post(
                "/v1/models/demo/echo/predictions",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 422
            assert len(response.content) < 16_384
            problem = response.json()
            assert len(problem["invalid_fields"]) == 20
            assert problem["detail"].endswith("(only the first 20 are listed)")
        assert (await client.get("/v1/predictions")).json()["results"] == []
    await health_is_quick(url)


def many_metrics(count: int) -> Iterator[Any]:
    """``test/metrics``: reports *count* metrics, then one chunk."""
    yield Metrics({f"m{i}": float(i) for i in range(count)})
    yield "done"


@pytest.fixture(scope="module")
def metrics_target() -> Iterator[str]:
    with ModelServer(Model("test/metrics", many_metrics)) as server:
        yield server.target


@pytest.mark.parametrize(("count", "ends"), [(64, "succeeded"), (5_000, "failed")])
async def test_backend_metrics_are_bounded(
    start_bridge: StartBridge, metrics_target: str, count: int, ends: str
) -> None:
    """300,000 metric names (in messages under gRPC's 4 MiB) made each GET
    and list page 35 MB, kept for 7 days; past 64 the prediction fails,
    saying why."""
    url = await start_bridge(targets={"test/metrics": metrics_target})
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        prediction = await create(client, "test/metrics", {"count": count})
        with trio.fail_after(20):
            while prediction["status"] not in ("succeeded", "failed"):
                await trio.sleep(0.05)
                response = await client.get(f"/v1/predictions/{prediction['id']}")
                prediction = response.json()
        assert prediction["status"] == ends, prediction["error"]
        if ends == "failed":
            assert prediction["error"] == "model backend sent more than 64 metrics"
            assert len(response.content) < 4096
        else:
            assert prediction["metrics"]["m63"] == 63.0
    await health_is_quick(url)


@pytest.mark.parametrize(
    "webhook",
    [
        "http://127.0.0.1/a\nb",
        "http://127.0.0.1/a b",
        "http://127.0.0.1/\x7f",
        "http://127.0.0.1/\r",
    ],
)
async def test_a_webhook_url_that_cannot_be_delivered_is_422(
    start_bridge: StartBridge, webhook: str
) -> None:
    """It got 201, then failed at delivery with httpx.InvalidURL."""
    url = await start_bridge(webhook_allow_private=True)
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post(
            "/v1/models/demo/echo/predictions", json={"input": {"prompt": "x"}, "webhook": webhook}
        )
        assert response.status_code == 422, response.text
        assert response.json()["invalid_fields"][0]["field"] == "webhook"
        assert (await client.get("/v1/predictions")).json()["results"] == []


async def test_large_inputs_and_outputs_leave_health_quick() -> None:
    """Validating a 1 MB input (200,000 items) and encoding a prediction of
    700,000 chunks each took most of a second of the event loop: 8 such
    creates at once held /health for 5 s, 10 such GETs for 3.5 s. The
    bridge and its backends run as they are deployed (``run-demo``, each
    a process), so what /health takes is what a load balancer would see."""
    run, url, backend_pid = await start_run_demo()
    tokens = ["ab"] * 200_000
    big_input = json.dumps(
        {"input": {"prompt": "x", "tokens": tokens, "fail_after": 0}}, separators=(",", ":")
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            long = await create(client, "demo/echo", {"prompt": "a " * 1000, "repeat": 700})
            with trio.fail_after(30):
                while long["status"] != "succeeded":
                    await trio.sleep(0.2)
                    long = (await client.get(f"/v1/predictions/{long['id']}")).json()
            assert len(long["output"]) == 700_000
            took: dict[str, list[float]] = {"/health": [], "/metrics": []}
            done = trio.Event()

            async def ask(path: str) -> None:
                while not done.is_set():
                    before = trio.current_time()
                    assert (await client.get(path)).status_code == 200
                    took[path].append(trio.current_time() - before)
                    await trio.sleep(0.02)

            async def big_create() -> None:
                response = await client.post(
                    "/v1/models/demo/echo/predictions",
                    content=big_input,
                    headers={"Content-Type": "application/json"},
                )
                assert response.status_code == 201

            async def big_get() -> None:
                got = await client.get(f"/v1/predictions/{long['id']}")
                assert len(got.content) > 3_000_000

            async with trio.open_nursery() as watcher:
                for path in took:
                    watcher.start_soon(ask, path)
                async with trio.open_nursery() as load:
                    for _ in range(8):
                        load.start_soon(big_create)
                    for _ in range(10):
                        load.start_soon(big_get)
                done.set()
        health, metrics = sorted(took["/health"]), sorted(took["/metrics"])
        print(
            f"while loaded: /health p50 {health[len(health) // 2]:.3f} s, "
            f"/metrics p90 {metrics[len(metrics) * 9 // 10]:.3f} s, max {metrics[-1]:.3f} s"
        )
        # /metrics is the bridge's alone (before: p50 2.9 s, max 4.4 s), and
        # /health waits for each backend's own health check too (before:
        # 3 s; a backend busy decoding a 1 MB input answers late).
        assert metrics[len(metrics) * 9 // 10] < 0.5, metrics  # p90
        assert health[len(health) // 2] < 0.25, health
    finally:
        kill_what_is_left(run, backend_pid)


async def test_running_out_of_file_descriptors_is_said_once(tmp_path: Path) -> None:
    """At a 256 fd limit, 300 open connections (max_connections set above
    the limit, as a misconfiguration would): Trio logged an EMFILE
    traceback every 0.1 s. Now accepting pauses, says so once, and goes on
    when connections close."""
    config = tmp_path / "bridge.toml"
    # Idle connections kept long, so none closes before the test closes them.
    config.write_text("[server]\nmax_connections = 5000\nkeep_alive_seconds = 120\n")

    # The child sets its own limit before it becomes the bridge (a
    # preexec_fn would run Python in a fork of this process, gRPC's threads
    # and all).
    low_fd_limit = (
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'bridge', *sys.argv[1:]])\n"
    )
    run = await trio.lowlevel.open_process(
        [sys.executable, "-c", low_fd_limit, "run-demo", "--stop-on-eof", "--host", "127.0.0.1",
         "--port", "0", "--config", str(config)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )  # fmt: skip
    said: list[bytes] = []
    try:
        port = (await read_until(run.stderr, rb"Running on http://[\d.]+:(\d+)", said))[1]
        url = f"http://127.0.0.1:{port.decode()}"
        held = [await connect(url) for _ in range(300)]
        await read_until(run.stderr, rb"cannot accept connections: EMFILE", said)
        for stream in held:
            await stream.aclose()
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            with trio.fail_after(10):
                assert (await client.get("/health")).status_code == 200
        await read_until(run.stderr, rb"accepting connections again", said)
    finally:
        run.kill()
        await run.wait()
    text = b"".join(said).decode()
    assert text.count("cannot accept connections") == 1, text
    assert "Traceback" not in text, text


async def test_a_client_that_goes_frees_its_connection_at_once(start_bridge: StartBridge) -> None:
    """Connect, send nothing, close: hypercorn's keep-alive timer held each
    such connection (and its slot) for keep_alive_seconds more."""
    url = await start_bridge(max_connections=2, keep_alive_seconds=60)
    with trio.fail_after(10):
        for _ in range(20):
            stream = await connect(url)
            await stream.aclose()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/health")).status_code == 200


async def stall_reading(
    url: str, asked: bytes, until: bytes, readers: list[trio.socket.SocketType]
) -> None:
    """A reader with a 4 kB receive buffer that sends *asked* and reads
    until *until* has come, then no more (its socket kept in *readers*)."""
    sock = trio.socket.socket()
    readers.append(sock)
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    await sock.send(asked)
    seen = b""
    while until not in seen:
        seen = seen[-len(until) :] + await sock.recv(65536)


async def test_readers_that_stall_on_large_events_hold_a_slice_each() -> None:
    """Eight output chunks of 1 MB, and 150 readers with a 4 kB receive
    buffer that read the first bytes and no more: each held a whole 1 MB
    event (about 3 MB of the bridge's memory, as it was framed and handed
    to hypercorn), 150 of them +450 MB. An event too large for a slice is
    framed a slice at a time: about 64 kB a reader."""
    run, url, backend_pid = await start_run_demo()
    readers: list[trio.socket.SocketType] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            made = await create(client, "demo/echo", {"prompt": "x" * 1_000_000, "repeat": 8})
            path = f"/v1/predictions/{made['id']}/stream"
            with trio.fail_after(60):  # one whole read: it ended, and the bridge is warm
                async with client.stream("GET", path) as response:
                    whole = b"".join([piece async for piece in response.aiter_raw()])
            assert whole.count(b"event: output") == 8 and whole.count(b"x") == 8_000_000
            before = rss_bytes(run.pid)

            # Each stops once the bridge is writing its first event.
            stall = partial(stall_reading, url, request("GET", path), b"data: xxx", readers)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for _ in range(150):
                        nursery.start_soon(stall)
            grown = rss_bytes(run.pid) - before
            print(f"150 stalled readers of 1 MB events: +{grown / 2**20:.0f} MiB")
            assert grown < 60 * 2**20
            await health_is_quick(url)
    finally:
        for sock in readers:
            sock.close()
        kill_what_is_left(run, backend_pid)


async def test_responses_streams_end_a_slice_at_a_time() -> None:
    """A Responses stream's end repeats the whole text four times. It was
    built whole for each reader (16 MB for 4 MB of output) and held until
    sent: 20 readers that stop reading there held +700 MB. Now it is read
    from the log a slice at a time as it is written."""
    run, url, backend_pid = await start_run_demo()
    ask = {"model": "demo/echo", "input": "x" * 1_000_000, "repeat": 4, "stream": True}
    body = json.dumps(ask).encode()
    head = request("POST", "/v1/responses", body=body, Content_Type="application/json")
    readers: list[trio.socket.SocketType] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            with trio.fail_after(60):  # one whole read: the text is there four times
                async with client.stream("POST", "/v1/responses", json=ask) as response:
                    whole = b"".join([piece async for piece in response.aiter_raw()])
            ended = [
                json.loads(line[6:])
                for line in whole.split(b"\n")
                if line.startswith(b"data: ") and b'"response.output_text.delta"' not in line
            ][-4:]
            text = " ".join(["x" * 1_000_000] * 4)
            assert [e["type"] for e in ended] == [
                "response.output_text.done", "response.content_part.done",
                "response.output_item.done", "response.completed",
            ]  # fmt: skip
            assert ended[0]["text"] == ended[1]["part"]["text"] == text
            assert ended[2]["item"]["content"][0]["text"] == text
            assert ended[3]["response"]["output"][0]["content"][0]["text"] == text
            before = rss_bytes(run.pid)

            at_the_end = b"event: response.output_text.done"
            stall_at_the_end = partial(stall_reading, url, head, at_the_end, readers)
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(stall_at_the_end)
            grown = rss_bytes(run.pid) - before
            print(f"20 Responses streams stalled at their end: +{grown / 2**20:.0f} MiB")
            # Their 20 predictions keep 100 MB of input and output, and
            # their requests and gRPC messages came and went; beyond that,
            # a slice each (+146 MiB in all; +1,252 MiB before).
            assert grown < 300 * 2**20
            await health_is_quick(url)
    finally:
        for sock in readers:
            sock.close()
        kill_what_is_left(run, backend_pid)


class _ForgingName(Misbehaving):
    """A backend whose Describe name would forge log lines and clear a
    terminal, were it logged as it is."""

    NAME = "x\n2026-01-01 00:00:00,000 ERROR bridge: forged\x1b[2J\u2028end"

    async def Describe(self, request: Any, context: Any) -> Any:
        info = wire.ModelInfo(self.NAME, "v1", {"type": "object"}, {"type": "array"})
        return wire.model_info_to_pb(info)


async def test_what_a_backend_says_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """The bridge logs that a backend says it serves another model, with
    the name it said: raw, that name wrote lines of its own."""
    with RawServer(_ForgingName()) as server:
        config = tmp_path / "bridge.toml"
        config.write_text(f'[models."test/forging"]\ntargets = ["{server.target}"]\n')
        run, url, backend_pid = await start_run_demo("--config", str(config))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                assert (await client.get("/v1/models/test/forging")).status_code == 200
            seen: list[bytes] = []
            found = await read_until(run.stderr, rb"says it serves ([^\n]*)\n", seen)
            assert found[1].decode() == "x\\n2026-01-01 00:00:00,000 ERROR bridge: forged" + (
                "\\x1b[2J\\u2028end"
            )
            assert b"\x1b" not in b"".join(seen)
            assert not re.search(rb"^2026-01-01", b"".join(seen), re.MULTILINE)
        finally:
            kill_what_is_left(run, backend_pid)


def test_a_traceback_keeps_its_lines_and_loses_its_control_characters() -> None:
    """Its lines indented: a line feed in an exception's message cannot
    start a line that passes for the log's own."""
    try:
        raise RuntimeError("the backend said \x1b[2J\rthis\n2026-01-01 ERROR forged")
    except RuntimeError:
        record = logging.LogRecord(
            "b", logging.ERROR, "f", 1, "failed: %s", ("a\nb",), sys.exc_info()
        )
    first, *traceback = TextFormatter().format(record).split("\n")
    assert first.endswith("ERROR b: failed: a\\nb")
    assert traceback[0] == "  Traceback (most recent call last):"
    assert traceback[-2:] == [
        "  RuntimeError: the backend said \\x1b[2J\\rthis",
        "  2026-01-01 ERROR forged",
    ]
    assert all(line.startswith("  ") for line in traceback)
