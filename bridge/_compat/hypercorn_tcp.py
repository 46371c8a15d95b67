"""Hypercorn's trio worker, its connections made the bridge's: what of
hypercorn's :mod:`bridge.http.server` needs to serve an app on sockets it
accepts itself.

* :func:`hosted`: the app as hypercorn's trio worker hosts it (its
  lifespan, its worker context), making a :class:`Connection` for each
  accepted stream.
* **A failure in one connection stays in it.** Hypercorn's ``TCPServer``
  catches ``OSError`` only; anything else a connection raised (a
  ``trio.BusyResourceError`` when its error answer and the app's collide)
  ended the process. Here it is logged once and that connection closed.
  Its cause is fixed too: the final ``send_eof`` takes the connection's
  send lock, so it never races a send.
* **The bridge's HTTP/1.1 and HTTP/2** (:mod:`.hypercorn_h11`,
  :mod:`.hypercorn_h2`) in hypercorn's switch between them.
* **A cheap write per event** (:meth:`Connection.protocol_send`): straight
  to the socket when no other write is under way. And a cheaper one still
  (:class:`ChunkWriter`): the body of an HTTP/1.x response written from
  synchronous code, framed as h11 frames it, so a live stream's event goes
  to the socket in the append that made it (see :mod:`bridge.http.stream`).
* **A client that goes frees its connection at once**, not after the
  keep-alive timer; and every connection's socket is closed when it ends,
  whatever its TLS handshake did (hypercorn's leaks a failed one's).

What of hypercorn's and h11's is private here: ``TCPServer``'s
``send_lock``, ``stream``, ``idle_task``, ``_read_data`` and ``_close``,
and that ``run`` assigns ``protocol``; ``ProtocolWrapper``'s attributes;
h11's ``Connection._writer``, ``ChunkedWriter`` and ``Http10Writer`` (how
a body is framed); and the serving plumbing hypercorn's own trio worker
uses (``Lifespan``, ``WorkerContext``, ``utils.wrap_app``), which it does
not document. ``tests/test_compat.py`` pins what they do.
"""

from __future__ import annotations

import contextvars
import logging
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import h11
import trio
from h11._writers import ChunkedWriter, Http10Writer
from hypercorn.config import Config
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import wrap_app

from .hypercorn_h2 import BoundedH2
from .hypercorn_h11 import CheckHead, StrictH11

__all__ = ["ChunkWriter", "Connection", "Host", "Protocols", "chunk_writer", "hosted"]

log = logging.getLogger("bridge.http")


@dataclass(frozen=True)
class Protocols:
    """How each connection speaks HTTP."""

    #: Whether cleartext HTTP/2 (h2c upgrade or prior knowledge) is spoken.
    h2c: bool
    #: An HTTP/2 response whose reader takes nothing this long is reset.
    stall_seconds: float
    #: Each HTTP/1.1 request head's check (bridge.http.heads.head_problem).
    check_head: CheckHead


class Host:
    """An app hosted as hypercorn's trio worker hosts it."""

    def __init__(
        self, app: AppWrapper, config: Config, context: WorkerContext, state: LifespanState
    ) -> None:
        self._app, self._config, self._context, self._state = app, config, context, state

    def connection(self, stream: trio.abc.Stream, protocols: Protocols) -> Connection:
        """A connection of the app's over an accepted *stream* (:meth:`Connection.run` it)."""
        state = ConnectionState(self._state.copy())
        return Connection(self._app, self._config, self._context, state, stream, protocols)

    async def terminate(self) -> None:
        """Tell the connections the server is stopping (they finish their
        requests and close)."""
        await self._context.terminated.set()


@asynccontextmanager
async def hosted(asgi_app: Any, config: Config) -> AsyncIterator[Host]:
    """The ASGI app *asgi_app*, started (its lifespan) until the block ends,
    then shut down."""
    app: AppWrapper = wrap_app(asgi_app, config.wsgi_max_body_size, "asgi")
    config.set_statsd_logger_class(StatsdLogger)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    async with trio.open_nursery() as nursery:
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        yield Host(app, config, WorkerContext(None), lifespan_state)
        await lifespan.wait_for_shutdown()
        nursery.cancel_scope.cancel()


#: The bodies write_chunk_nowait frames, as h11 does: a chunk of HTTP/1.1's
#: chunked body, or HTTP/1.0's plain bytes up to the close.
_BODY_FRAMES = (ChunkedWriter, Http10Writer)

#: The connection whose tasks these are (each request's task is started
#: by its connection's task, so it sees its own). A weak reference: the
#: tasks a request starts (a prediction's) inherit it, and must not keep the
#: connection alive.
_CONNECTION: contextvars.ContextVar[weakref.ref[Connection] | None] = contextvars.ContextVar(
    "bridge_http_connection", default=None
)


class ChunkWriter:
    """Writes pieces of the current response's chunked body straight to
    its socket, from synchronous code: a live stream's events, written in
    the append that makes them instead of through the response machinery.

    Only between the app's own writes (the response's task is waiting, not
    sending), and only while the response is an HTTP/1.1 chunked body over
    plain TCP; otherwise :meth:`write_nowait` declines and the app writes
    the usual way."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        #: How the current response's body is framed (True: chunked), as
        #: :meth:`arm` found it; None: not to be written here.
        self._chunked: bool | None = None

    def arm(self) -> bool:
        """Look up, once, whether and how the current response's body can
        be written here: while the app's task waits for news, nothing
        else writes the response, so its framing stays as it is (a write
        asks only what can change meanwhile: the socket, another write).
        False: :meth:`write_nowait` declines until armed again."""
        self._chunked = self._connection.body_framing()
        return self._chunked is not None

    def write_nowait(self, data: bytes) -> bool:
        """Write *data* as one chunk now: True if it was taken (what the
        socket did not take at once is kept, see :attr:`backed_up`), False
        if it was not (nothing was written)."""
        chunked = self._chunked
        if chunked is None:
            return False
        return self._connection.write_chunk_nowait(data, chunked)

    @property
    def backed_up(self) -> bool:
        """Bytes taken but not yet written: :meth:`flush` before anything
        else is written the usual way, and nothing more is taken meanwhile."""
        return bool(self._connection.unsent)

    async def flush(self) -> None:
        """Write what was taken but not written (waiting for the client)."""
        await self._connection.protocol_send(RawData(data=b""))


def chunk_writer() -> ChunkWriter | None:
    """A :class:`ChunkWriter` for the current request's connection, or None
    if there is no such connection (another server, HTTP/2 or TLS)."""
    ref = _CONNECTION.get()
    connection = ref() if ref is not None else None
    if connection is None or connection.fd < 0:
        return None
    if not isinstance(connection.protocol.protocol, StrictH11):
        return None
    return ChunkWriter(connection)


class Connection(TCPServer):
    """One TCP connection: hypercorn's, with its failures kept in it."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: Any,
        protocols: Protocols,
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.protocols = protocols
        #: Chunk bytes taken by write_chunk_nowait that the socket did not
        #: take: written first, before anything else (protocol_send).
        self.unsent = b""
        #: The plain TCP socket (None for TLS), looked up once: the fd is
        #: asked for on every write.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None

    async def run(self) -> None:
        _CONNECTION.set(weakref.ref(self))
        try:
            await super().run()
        except* Exception as group:
            failure = group.exceptions[0]
            log.error(
                "an HTTP connection failed (%s: %s); it was closed, the server goes on",
                type(failure).__name__,
                failure,
                exc_info=failure,
            )
        finally:
            # Every way out closes the socket. Hypercorn's run returns
            # without closing it when a TLS handshake times out or fails (a
            # client that never says hello, plain HTTP to the TLS port): the
            # socket then stayed open, in CLOSE-WAIT once the client went,
            # until the process ran out of descriptors. Closing twice is a
            # no-op; forcefully: no close_notify waits on a gone client.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    @property
    def protocol(self) -> ProtocolWrapper:
        return self._protocol

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        # TCPServer.run makes hypercorn's wrapper; before it has seen a
        # byte, it becomes the bridge's, with the bridge's HTTP/1.1 and /2.
        wrapper.__class__ = _Protocol
        assert isinstance(wrapper, _Protocol)
        wrapper.protocols = self.protocols
        http2 = isinstance(wrapper.protocol, H2Protocol)
        wrapper.protocol = wrapper.http2() if http2 else wrapper.http11()
        self._protocol = wrapper

    def body_framing(self) -> bool | None:
        """How the current response's body may be written straight to the
        socket: True chunked (HTTP/1.1), False as it is (HTTP/1.0), None
        not at all (another protocol, TLS, no body being sent)."""
        protocol = self._protocol.protocol
        if self.fd < 0 or type(protocol) is not StrictH11:
            return None
        h11_connection = protocol.connection
        if h11_connection.our_state is not h11.SEND_BODY:
            return None
        framing = type(h11_connection._writer)
        if framing not in _BODY_FRAMES:
            return None
        return framing is not Http10Writer

    def write_chunk_nowait(self, data: bytes, chunked: bool) -> bool:
        """See :meth:`ChunkWriter.write_nowait` (*chunked*: its framing)."""
        if self.unsent or not data or self.send_lock.locked():
            return False
        fd = self.fd
        if fd < 0:
            return False
        frame = b"%x\r\n%b\r\n" % (len(data), data) if chunked else data
        sent = _write_now(fd, frame)
        if sent is None:  # the client is gone: the usual way finds out
            return False
        if sent < len(frame):
            self.unsent = frame[sent:]
        return True

    async def protocol_send(self, event: Any) -> None:
        if self.unsent and isinstance(event, RawData):
            event = RawData(data=self.unsent + event.data)
            self.unsent = b""
        # The write of each event, the hot path of a live stream: hypercorn
        # takes a lock, opens a shielded cancel scope and goes through
        # trio's send_all (a conflict detector, two checkpoints) for every
        # write. When no other write is under way, the bytes go straight to
        # the socket (a non-blocking write: nothing to shield); only what the
        # kernel does not take at once goes hypercorn's way.
        fd = self.fd
        if isinstance(event, RawData) and fd >= 0 and not self.send_lock.locked():
            data = event.data
            sent = _write_now(fd, data)
            if sent is None:
                await self.protocol.handle(Closed())
                return
            if sent == len(data):
                return
            event = RawData(data=data[sent:])
        await super().protocol_send(event)

    @property
    def fd(self) -> int:
        """The socket's descriptor, for writes straight to it: -1 once it
        is closed or shut for writing, and for TLS (the SSL object writes)."""
        socket = self._socket
        if socket is None or socket.did_shutdown_SHUT_WR:
            return -1
        return socket.fileno()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client is gone (or sent all it will): hypercorn's keep-alive
        # timer would hold the connection, and its slot, for
        # keep_alive_seconds more if it had no request in flight.
        await self.idle_task.stop()

    async def _close(self) -> None:
        # Hypercorn's send_eof runs outside the send lock and holds the
        # stream across a checkpoint, so a response being sent at that
        # moment raised BusyResourceError. Under the lock, it waits its turn.
        if not self.send_lock.locked():
            async with self.send_lock:
                # Gone already, or a TLS stream (no send_eof): nothing to do.
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
                    await self.stream.send_eof()
        await self.stream.aclose()


def _write_now(fd: int, data: bytes) -> int | None:
    """Write what the socket *fd* takes of *data* at once (it is
    non-blocking): how many bytes, or None if the client is gone (a reset,
    a broken pipe)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError:
        return None


class _Protocol(ProtocolWrapper):
    """Hypercorn's switch between HTTP/1.1 and HTTP/2 (by ALPN, or an h2c
    upgrade or preface when ``h2c`` is on), making the bridge's own."""

    protocols: Protocols

    def _args(self) -> tuple[Any, ...]:
        return (
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.state,
            self.ssl,
            self.client,
            self.server,
            self.send,
        )

    def http11(self) -> StrictH11:
        p = self.protocols
        return StrictH11(*self._args(), h2c=p.h2c, check_head=p.check_head)

    def http2(self) -> BoundedH2:
        return BoundedH2(*self._args(), stall_seconds=self.protocols.stall_seconds)

    async def handle(self, event: Any) -> None:
        try:
            return await self.protocol.handle(event)
        except H2ProtocolAssumedError as preface:  # prior knowledge (h2c only)
            self.protocol = self.http2()
            await self.protocol.initiate()
            if preface.data:
                await self.protocol.handle(RawData(data=preface.data))
        except H2CProtocolRequiredError as upgrade:  # Upgrade: h2c (h2c only)
            self.protocol = self.http2()
            await self.protocol.initiate(upgrade.headers, upgrade.settings)
            if upgrade.data:
                await self.protocol.handle(RawData(data=upgrade.data))
