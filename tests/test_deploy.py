"""docs/deploy.md's nginx config, run: Debian's nginx (which make test
installs) in front of two bridges sharing one Redis, streaming over HTTP/1.1
(the first event passes while the prediction still runs) and, with TLS,
HTTP/2."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from .conftest import GATES, StartBridge, create

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def nginx_block() -> str:
    (block,) = re.findall(r"```nginx\n(.*?)```", DEPLOY.read_text(), re.S)
    return block


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"docs/deploy.md's nginx block has no {old!r}"
    return text.replace(old, new)


async def test_the_documented_nginx_config_streams_from_two_bridges(
    start_bridge: StartBridge, redis: dict[str, str], tmp_path: Path
) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    if nginx is None:
        pytest.fail("nginx is not installed: make test installs it (apt-get)")
    one, two = await start_bridge(**redis), await start_bridge(**redis)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    plain, tls_port = free_port(), free_port()
    block = nginx_block()
    block = replaced(block, "server 10.0.0.11:8000;", f"server {one.removeprefix('http://')};")
    block = replaced(block, "server 10.0.0.12:8000;", f"server {two.removeprefix('http://')};")
    block = replaced(block, "listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;")
    block = replaced(block, "listen 80;", f"listen 127.0.0.1:{plain};")
    block = replaced(block, "/etc/ssl/bridge.pem", str(certfile))
    block = replaced(block, "/etc/ssl/bridge.key", str(keyfile))
    temp = "".join(f"{kind}_temp_path {tmp_path / kind};\n" for kind in (
        "client_body", "proxy", "fastcgi", "uwsgi", "scgi"))  # fmt: skip
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{\naccess_log off;\n{temp}{block}}}\n"
    )
    process = await trio.lowlevel.open_process(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")]
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", plain)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)  # nginx starting: no event to wait on
        # HTTP/1.1: the first event passes while the prediction still runs.
        key = f"nginx-{uuid.uuid4().hex}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{plain}", timeout=30) as client:
            made = await create(client, "test/gate", {"key": key})
            path = f"/v1/predictions/{made['id']}/stream"
            async with client.stream("GET", path) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                lines = response.aiter_lines()
                async for line in lines:
                    if line == "data: waiting ":
                        break
                GATES.setdefault(key, threading.Event()).set()
                rest = [line async for line in lines]
            assert "data: through" in rest and rest[-4:] == [
                "event: done",
                rest[-3],
                "data: {}",
                "",
            ]
        # HTTP/2 over TLS, as browsers connect.
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(
            base_url=f"https://localhost:{tls_port}", http2=True, verify=context, timeout=30
        ) as client:
            made = await create(client, "demo/echo", {"prompt": "over h2"})
            async with client.stream("GET", f"/v1/predictions/{made['id']}/stream") as response:
                assert response.http_version == "HTTP/2"
                body = b"".join([piece async for piece in response.aiter_raw()])
            assert b"data: over \n" in body and b"event: done" in body
    finally:
        process.terminate()
        await process.wait()
