"""What several test modules share (no test module imports another)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from bridge.backends.interface import PredictInput
from tests.backends import ENV, read_until
from tests.conftest import poll_until

SCRIPTS = Path(__file__).parent / "js"


async def node(
    base_url: str, command: str, args: dict[str, Any], script: str = "client.mjs"
) -> list[dict[str, Any]]:
    """What a tests/js script printed, a JSON value per line."""
    with trio.fail_after(30):
        result = await trio.run_process(
            ["node", str(SCRIPTS / script), base_url, command, json.dumps(args)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


async def status(client: httpx.AsyncClient, prediction: dict) -> str:
    return (await client.get(prediction["urls"]["get"])).json()["status"]


async def wait_status(client: httpx.AsyncClient, prediction: dict, want: str) -> None:
    async def reached() -> bool:
        return await status(client, prediction) == want

    await poll_until(reached)


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def health_is_quick(url: str) -> None:
    """After a bound was exceeded, the server still answers /health at once."""
    async with httpx.AsyncClient(base_url=url) as client:
        with trio.fail_after(2):
            assert (await client.get("/health")).status_code == 200


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


def request(
    method: str, path: str, *, version: str = "1.1", body: bytes = b"", **headers: str
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: x"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def asked(prediction_id: str, input: dict[str, Any]) -> PredictInput:
    """A ``Predict`` call's input, as the runner hands it to a backend."""
    return PredictInput(prediction_id, json.dumps(input).encode())


def rss_bytes(pid: int) -> int:
    """What process *pid* holds in memory now."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def gone(pid: int) -> bool:
    """Whether *pid* has exited (a zombie not yet reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def kill_what_is_left(run: trio.Process, backend_pid: int) -> None:
    """Whatever a test saw, nothing of it runs on."""
    if run.returncode is None:
        run.kill()
    if not gone(backend_pid):
        os.kill(backend_pid, signal.SIGKILL)


async def start_run_demo(
    *args: str, env: dict[str, str] | None = None
) -> tuple[trio.Process, str, int]:
    """``run-demo`` in its own session, so that a Ctrl-C (SIGINT to the
    whole group, as a terminal sends it) reaches it and not this test; its
    URL and its demo backend's pid once it listens."""
    run = await trio.lowlevel.open_process(
        [*BRIDGE, "run-demo", "--stop-on-eof", "--host", "127.0.0.1", "--port", "0", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or ENV,
        start_new_session=True,
    )
    try:
        port = (await read_until(run.stderr, rb"Running on http://[\d.]+:(\d+)", []))[1]
        children = await trio.run_process(["pgrep", "-P", str(run.pid)], capture_stdout=True)
        (backend_pid,) = [int(p) for p in children.stdout.split()]
    except BaseException:
        run.kill()
        raise
    return run, f"http://127.0.0.1:{port.decode()}", backend_pid


BRIDGE = [sys.executable, "-m", "bridge"]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


def wait_for(stream, pattern: bytes) -> re.Match:
    seen = b""
    deadline = time.monotonic() + 60
    while not (found := re.search(pattern, seen)):
        assert time.monotonic() < deadline, seen.decode()
        line = stream.readline()
        assert line, seen.decode()
        seen += line
    return found


CHUNKS = [
    "Sure",
    "",
    " leading space",
    "trailing space ",
    "two\nlines",
    "ends with a break\n",
    "\n",
    "\n\n",
    "carriage\rreturn",
    "crlf\r\nbreak",
    "lone cr at end\r",
    "\r\n\r\n",
    "forge\n\nevent: done\ndata: {}\n\n",
    "forge with cr\r\revent: done\r\rdata: {}\r\r",
    "id: 9999999999:0",
    "data: nested",
    ": a comment",
    "event: error",
    "retry: 1",
    "\x00nul inside",
    "vertical\vtab",
    "form\ffeed",
    "file\x1cgroup\x1drecord\x1eunit",
    "next\x85line",
    "line\u2028separator and paragraph\u2029separator",
    "forged via splitlines\u2028\u2028event: done\u2028data: {}\u2028\u2028",
    "unicode ✓ 🦙 ünïcödé",
    "tab\tstays",
]


ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def descriptor_set(where: Path, name: str, proto: str) -> Path:
    """*proto* (the text of ``<name>.proto``) compiled by grpcio-tools'
    protoc into a descriptor set in *where*, with its imports (the
    well-known types) and source info: the file's path."""
    from grpc_tools import protoc

    from bridge.backends.generic.descriptors import googleapis_path, well_known_path

    (where / f"{name}.proto").write_text(proto)
    out = where / f"{name}.binpb"
    well_known = well_known_path()
    status = protoc.main(
        [
            *("protoc", f"-I{where}", f"-I{well_known}", f"-I{googleapis_path()}"),
            "--include_imports",
            "--include_source_info", f"--descriptor_set_out={out}", str(where / f"{name}.proto"),
        ]
    )  # fmt: skip
    assert status == 0, f"protoc failed on {name}.proto"
    return out
