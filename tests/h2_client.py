"""A small HTTP/2 client on the ``h2`` package (installed with hypercorn),
over a real socket, with TLS or in cleartext (prior knowledge): so a test
can do with flow-control windows what a hostile client would."""

from __future__ import annotations

import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio


class H2Client:
    """One HTTP/2 connection; :meth:`events` reads what the server sent."""

    def __init__(self, stream: trio.abc.Stream, window: int) -> None:
        self.stream = stream
        self.connection = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.connection.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        # Each stream's window starts at *window*; this client never opens
        # one further unless a test says so.
        self.connection.initiate_connection()
        #: Every event received so far.
        self.seen: list[Any] = []

    @classmethod
    async def open(
        cls, port: int, *, window: int = 65535, tls: ssl.SSLContext | None = None
    ) -> H2Client:
        sock = await trio.open_tcp_stream("127.0.0.1", port)
        stream: trio.abc.Stream = sock
        if tls is not None:
            stream = trio.SSLStream(sock, tls, server_hostname="localhost")
            await stream.do_handshake()
            assert stream.selected_alpn_protocol() == "h2"
        client = cls(stream, window)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.connection.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def get(self, path: str, **headers: str) -> int:
        """Send a GET; its stream id."""
        stream_id = self.connection.get_next_available_stream_id()
        self.connection.send_headers(
            stream_id,
            [
                (":method", "GET"),
                (":path", path),
                (":scheme", "http"),
                (":authority", "127.0.0.1"),
                *headers.items(),
            ],
            end_stream=True,
        )
        await self.flush()
        return stream_id

    async def events(self) -> list[Any]:
        """What the next read from the server brings (empty: it closed)."""
        data = await self.stream.receive_some(65536)
        if not data:
            return []
        events = self.connection.receive_data(data)
        self.seen += events
        await self.flush()  # pings and settings are answered: TCP stays healthy
        return events

    async def until(self, wanted: type, stream_id: int) -> list[Any]:
        """Read until an event of type *wanted* for *stream_id* was
        received (fails after 10 s); the events of that stream so far."""
        with trio.fail_after(10):
            while not any(
                isinstance(e, wanted) and getattr(e, "stream_id", None) == stream_id
                for e in self.seen
            ):
                assert await self.events(), f"the server closed the connection: {self.seen}"
        return [e for e in self.seen if getattr(e, "stream_id", None) == stream_id]

    async def aclose(self) -> None:
        await self.stream.aclose()
