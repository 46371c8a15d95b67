"""The HTTPS listener keeps no socket of a connection whose TLS handshake
failed (issue 30, item 1): clients that never say hello, that send half a
hello and hang up, that go at once, or that speak plain HTTP to the TLS
port. Hypercorn's connection returned without closing such a socket, so
rounds of them filled the open-file limit and the server stopped
accepting. Real TLS clients, the process's own descriptors counted."""

from __future__ import annotations

import gc
import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import trio
import trustme

from tests.conftest import StartBridge, poll_until


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def no_garbage_collection() -> Iterator[None]:
    """A leaked socket is closed when the garbage collector happens to
    free its connection: the test must not depend on when that is."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def client_hello(ca: trustme.CA) -> bytes:
    """The first flight of a real TLS client to localhost."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def until_closed_by_server(stream: trio.SocketStream) -> None:
    """Read (an alert, an HTTP error) until the server closes."""
    with suppress(trio.BrokenResourceError):
        while await stream.receive_some(4096):
            pass


async def test_failed_handshakes_leave_no_socket_open(
    start_bridge: StartBridge, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    ca, certfile, keyfile = certificate
    url = await start_bridge(
        certfile=str(certfile), keyfile=str(keyfile), tls_handshake_seconds=0.5
    )
    port = int(url.rsplit(":", 1)[1])
    hello = client_hello(ca)

    async def connect() -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", port)

    with no_garbage_collection():
        before = open_fds()
        for _ in range(3):
            silent = [await connect() for _ in range(10)]
            half_hello = [await connect() for _ in range(10)]
            for stream in half_hello:
                await stream.send_all(hello[: len(hello) // 2])
                await stream.send_eof()
            plain = [await connect() for _ in range(10)]
            for stream in plain:
                await stream.send_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            for stream in [await connect() for _ in range(10)]:
                await stream.aclose()  # gone before saying anything
            # The server closes each one: the silent ones at the handshake
            # deadline, the others when their handshake fails.
            with trio.fail_after(10):
                for stream in silent + half_hello + plain:
                    await until_closed_by_server(stream)
                    await stream.aclose()

            async def all_closed() -> bool:
                return open_fds() <= before

            await poll_until(all_closed, within=10)

    tls = ssl.create_default_context()
    ca.configure_trust(tls)
    async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=tls) as client:
        with trio.fail_after(2):  # at once: nothing is left holding the server
            assert (await client.get("/health")).status_code == 200
