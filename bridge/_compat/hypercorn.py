"""Hypercorn's trio worker, with the connection handling a server facing
hostile clients needs.

Hypercorn (0.18) brings the HTTP state machines and the ASGI glue; this
module owns the listening sockets and each TCP connection:

* **A failure in one connection stays in it.** Hypercorn's ``TCPServer``
  catches ``OSError`` only, so anything else a connection raised (a
  ``trio.BusyResourceError`` when its error answer and the app's collide)
  went up through ``trio.serve_listeners`` and ended the process. Here it
  is logged once and that connection is closed; the server goes on. Its
  cause is fixed too: the final ``send_eof`` takes the connection's send
  lock, so it never races a send.
* **At most** ``max_connections`` **at once.** Past it, accepting pauses
  until one closes (new clients wait in the listen backlog), logged once
  per episode; running out of file descriptors (``EMFILE``) pauses the
  same way instead of logging a traceback ten times a second.
* **HTTP/1.1, strictly.** Request heads with bare LF line ends, obsolete
  line folding, both ``Content-Length`` and ``Transfer-Encoding``, or more
  than one ``Content-Length`` are refused with 400 and the connection is
  closed (RFC 9112 section 6.3: such framing is what request smuggling
  behind a proxy is made of). A request line that is not HTTP/1.0 or 1.1
  gets 505 and a close. Cleartext HTTP/2 (``Upgrade: h2c`` or the prior-
  knowledge preface) is not spoken unless ``h2c`` is set: an upgrade is
  answered as HTTP/1.1, a preface with 505.
* **HTTP/2 with HTTP/1.1's bounds** (:class:`_BoundedH2`), over TLS by ALPN
  or as h2c: one bounded buffer per response whatever the client's
  windows, a reader that takes nothing for ``stall_seconds`` reset, the
  writers of a connection whose client went let go at once.
* **A cheap write per event** (:meth:`_Connection.protocol_send`): straight
  to the socket when no other write is under way. And a cheaper one still
  (:class:`ChunkWriter`): the body of an HTTP/1.x response written from
  synchronous code, framed as h11 frames it, so a live stream's event goes
  to the socket in the append that made it (see :mod:`bridge.http.stream`).
* **A client that goes frees its connection at once**, not after the
  keep-alive timer; and every connection's socket is closed when it ends,
  whatever its TLS handshake did (hypercorn's leaks a failed one's).

What of hypercorn's is private here: ``TCPServer``'s ``send_lock``,
``stream``, ``idle_task``, ``_read_data`` and ``_close``, and that ``run``
assigns ``protocol``; ``ProtocolWrapper``'s attributes;
``H11Protocol._check_protocol``, ``._send_error_response`` and its
``connection`` attribute; h11's ``Connection._writer`` and its
``ChunkedWriter`` and ``Http10Writer`` (how a body is framed); ``H2Protocol``'s ``stream_buffers``,
``priority``, ``_flush`` and ``_close_stream``, and ``StreamBuffer``'s
fields; h11's ``Connection._process_error``; and the serving plumbing
hypercorn's own trio worker uses (``Lifespan``, ``WorkerContext``,
``utils.wrap_app``), which it does not document. ``tests/test_compat.py``
pins them.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import re
import weakref
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import h2.errors
import h2.exceptions
import h11
import priority
import trio
from h11._writers import ChunkedWriter, Http10Writer
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import (
    BUFFER_HIGH_WATER,
    BUFFER_LOW_WATER,
    BufferCompleteError,
    H2Protocol,
    StreamBuffer,
)
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

__all__ = ["ChunkWriter", "ConnectionLimits", "chunk_writer", "serve_http"]

log = logging.getLogger("bridge.http")

#: accept() errors that mean "no room now", not "broken": wait and retry.
_NO_ROOM = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    """What each listener and connection is held to."""

    #: Connections open at once; past it, accepting waits.
    max_connections: int
    #: Whether cleartext HTTP/2 (h2c upgrade or prior knowledge) is spoken.
    h2c: bool = False
    #: An HTTP/2 response whose reader takes nothing this long is reset.
    stall_seconds: float = 30.0


async def serve_http(
    asgi_app: Any,
    config: Config,
    sockets: Sockets,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI app *asgi_app* on *sockets* (already listening) until
    *shutdown_trigger* returns; then stop accepting and give open
    connections ``config.graceful_timeout``. Reports the bound URLs."""
    app: AppWrapper = wrap_app(asgi_app, config.wsgi_max_body_size, "asgi")
    config.set_statsd_logger_class(StatsdLogger)
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        slots = _Slots(limits.max_connections)
        async with trio.open_nursery() as connections:
            binds = []
            listeners: list[trio.abc.Listener[Any]] = []
            ssl_context = config.create_ssl_context()  # with ALPN: h2, http/1.1
            for sock in sockets.secure_sockets:
                assert ssl_context is not None  # secure sockets come with a certificate
                plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                listeners.append(trio.SSLListener(plain, ssl_context, https_compatible=True))
                binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            for bind in binds:
                await config.log.info(f"Running on {bind} (CTRL + C to quit)")

            def connection(stream: trio.abc.Stream) -> _Connection:
                state = ConnectionState(lifespan_state.copy())
                return _Connection(app, config, context, state, stream, limits)

            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(_accept, listener, connections, slots, connection)
                    task_status.started(binds)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class _Slots:
    """Connections open at once, at most *limit*. Reaching the limit is
    logged, then at most once a minute while it keeps being reached (with
    how many times it was), so an overload is one line, not one a close."""

    QUIET_SECONDS = 60.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = trio.Semaphore(limit)
        self._said_at = -float("inf")
        self._unsaid = 0

    async def take(self) -> None:
        if self._free.value == 0:
            self._unsaid += 1
            if trio.current_time() - self._said_at >= self.QUIET_SECONDS:
                log.warning(
                    "%d connections open, the most allowed ([server] max_connections): "
                    "accepting paused until one closes (%d times since the last message)",
                    self.limit,
                    self._unsaid,
                )
                self._said_at = trio.current_time()
                self._unsaid = 0
        await self._free.acquire()

    def give_back(self) -> None:
        self._free.release()


async def _accept(
    listener: trio.abc.Listener[Any],
    connections: trio.Nursery,
    slots: _Slots,
    connection: Callable[[trio.abc.Stream], _Connection],
) -> None:
    """Accept connections on *listener* while there are *slots*, each run
    in *connections*."""
    out_of_room = False
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _NO_ROOM:
                raise
            if not out_of_room:
                log.error(
                    "cannot accept connections: %s (%s); retrying every 0.1 s",
                    errno.errorcode[exc.errno],
                    exc.strerror,
                )
            out_of_room = True
            await trio.sleep(0.1)
            continue
        if out_of_room:
            log.info("accepting connections again")
            out_of_room = False
        # A slot before the next accept: at the limit, this listener waits
        # here (one connection accepted ahead, the rest in the backlog), and
        # an idle listener holds no slot.
        await slots.take()
        connections.start_soon(_run_connection, connection(stream), slots)


async def _run_connection(connection: _Connection, slots: _Slots) -> None:
    try:
        await connection.run()
    finally:
        slots.give_back()


#: The bodies write_chunk_nowait frames, as h11 does: a chunk of HTTP/1.1's
#: chunked body, or HTTP/1.0's plain bytes up to the close.
_BODY_FRAMES = (ChunkedWriter, Http10Writer)

#: The connection whose tasks these are (each request's task is started
#: by its connection's task, so it sees its own). A weak reference: the
#: tasks a request starts (a prediction's) inherit it, and must not keep the
#: connection alive.
_CONNECTION: contextvars.ContextVar[weakref.ref[_Connection] | None] = contextvars.ContextVar(
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

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    def write_nowait(self, data: bytes) -> bool:
        """Write *data* as one chunk now: True if it was taken (what the
        socket did not take at once is kept, see :attr:`backed_up`), False
        if it was not (nothing was written)."""
        return self._connection.write_chunk_nowait(data)

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
    if not isinstance(connection.protocol.protocol, _StrictH11):
        return None
    return ChunkWriter(connection)


class _Connection(TCPServer):
    """One TCP connection: hypercorn's, with its failures kept in it."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: Any,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.limits = limits
        #: Chunk bytes taken by write_chunk_nowait that the socket did not
        #: take: written first, before anything else (protocol_send).
        self.unsent = b""

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
        wrapper.limits = self.limits
        http2 = isinstance(wrapper.protocol, H2Protocol)
        wrapper.protocol = wrapper.http2() if http2 else wrapper.http11()
        self._protocol = wrapper

    def write_chunk_nowait(self, data: bytes) -> bool:
        """See :meth:`ChunkWriter.write_nowait`."""
        protocol = self._protocol.protocol
        if self.unsent or self.send_lock.locked() or type(protocol) is not _StrictH11:
            return False
        h11_connection = protocol.connection
        if h11_connection.our_state is not h11.SEND_BODY:
            return False
        framing = type(h11_connection._writer)
        fd = self.fd
        if fd < 0 or not data or framing not in _BODY_FRAMES:
            return False
        frame = data if framing is Http10Writer else b"%x\r\n%b\r\n" % (len(data), data)
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
        if not isinstance(self.stream, trio.SocketStream):
            return -1
        socket = self.stream.socket
        return -1 if socket.did_shutdown_SHUT_WR else socket.fileno()

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

    limits: ConnectionLimits

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

    def http11(self) -> _StrictH11:
        return _StrictH11(*self._args(), h2c=self.limits.h2c)

    def http2(self) -> _BoundedH2:
        return _BoundedH2(*self._args(), stall_seconds=self.limits.stall_seconds)

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


class _Stalled(Exception):
    """A stream's reader accepted nothing for ``stall_seconds``."""


class _StreamBuffer(StreamBuffer):
    """What one HTTP/2 response has written and the client has not taken
    yet, bounded whatever the client does with its flow-control window.

    Hypercorn's lets the writer go on whenever a send takes less than half
    of its bound, which a closed window (a send of nothing) always does:
    each reader then held everything it was sent. Here the writer waits
    while the buffer holds :data:`BUFFER_HIGH_WATER` or more, and for at
    most *stall* seconds of no progress, then :class:`_Stalled` is raised;
    so is waiting to finish (:meth:`drain`)."""

    def __init__(self, event_class: Any, stall: float) -> None:
        super().__init__(event_class)
        self.stall = stall
        self._sent_at = trio.current_time()

    async def push(self, data: bytes) -> None:
        if self._complete:
            raise BufferCompleteError()
        if not self.buffer:
            self._sent_at = trio.current_time()  # the stall clock starts now
        self.buffer.extend(data)
        await self._is_empty.clear()
        while len(self.buffer) >= BUFFER_HIGH_WATER and not self._complete:
            await self._paused.clear()
            await self._wait(self._paused)

    async def pop(self, max_length: int) -> bytes:
        data = bytes(self.buffer[:max_length])
        del self.buffer[:max_length]
        if data:
            self._sent_at = trio.current_time()
        if len(self.buffer) < BUFFER_LOW_WATER:
            await self._paused.set()
        if not self.buffer:
            await self._is_empty.set()
        return data

    async def drain(self) -> None:
        await self._wait(self._is_empty)

    async def _wait(self, event: Any) -> None:
        """Wait for *event* while the reader takes something at least every
        *stall* seconds; raise :class:`_Stalled` once it has not."""
        while not event.is_set():
            with trio.move_on_at(self._sent_at + self.stall):
                await event.wait()
            if not event.is_set() and trio.current_time() >= self._sent_at + self.stall:
                raise _Stalled()


class _StreamBuffers(dict[int, StreamBuffer]):
    """``H2Protocol.stream_buffers``, holding the bridge's buffers: each
    buffer hypercorn makes for a new stream is replaced by one of ours."""

    def __init__(self, event_class: Any, stall: float) -> None:
        super().__init__()
        self.event_class, self.stall = event_class, stall

    def __setitem__(self, stream_id: int, buffer: StreamBuffer) -> None:
        super().__setitem__(stream_id, _StreamBuffer(self.event_class, self.stall))


class _BoundedH2(H2Protocol):
    """Hypercorn's HTTP/2, held to the bounds HTTP/1.1 has: one bounded
    buffer per response whatever the client's windows (a reader that takes
    nothing for ``stall_seconds`` gets RST_STREAM and its request ends),
    and when the connection goes, every response waiting on it is let go
    (hypercorn's waited for window credit forever: the connection stayed in
    CLOSE-WAIT, and graceful shutdown never finished)."""

    def __init__(self, *args: Any, stall_seconds: float) -> None:
        super().__init__(*args)
        self.stream_buffers = _StreamBuffers(self.context.event_class, stall_seconds)
        self.gone = False

    async def stream_send(self, event: Any) -> None:
        if self.gone and isinstance(event, StreamClosed):
            # Not "idle" (hypercorn's), which would keep the connection's
            # tasks for keep_alive_seconds after its client went.
            await self._close_stream(event.stream_id)
            return
        try:
            await super().stream_send(event)
        except _Stalled:
            log.info("HTTP/2 stream %d took nothing for stall_seconds: reset", event.stream_id)
            await self._cut(event.stream_id)

    async def _cut(self, stream_id: int) -> None:
        buffer = self.stream_buffers.pop(stream_id, None)
        if buffer is not None:
            await buffer.close()
        with suppress(priority.priority.MissingStreamError):
            self.priority.remove_stream(stream_id)
        with suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            await self._flush()
        await self._close_stream(stream_id)

    async def handle(self, event: Any) -> None:
        if not isinstance(event, Closed):
            await super().handle(event)
        elif not self.gone:
            self.gone = True
            await super().handle(event)
            # Nothing will take what is buffered: let its writers go; and
            # the connection closes now (TCPServer closes its socket).
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()
            await self.send(Closed())


class _Refused(Exception):
    """A request this server does not serve was answered and its connection
    closed."""


class _StrictH11(H11Protocol):
    def __init__(self, *args: Any, h2c: bool) -> None:
        super().__init__(*args)
        self.h2c = h2c
        self.connection = _StrictConnection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )

    async def handle(self, event: Any) -> None:
        with suppress(_Refused):
            await super().handle(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        if self.h2c:
            await super()._check_protocol(event)
        elif event.http_version not in (b"1.0", b"1.1"):
            # h11 parses "PRI * HTTP/2.0", the HTTP/2 preface, as a request.
            await self._send_error_response(505)
            await self.send(Closed())
            raise _Refused()
        # An Upgrade: h2c without h2c is answered as HTTP/1.1 (RFC 9110
        # 7.8: a server may ignore an upgrade).


_HEAD_END = re.compile(rb"\n\r?\n")


def head_problem(data: bytes) -> str | None:
    """What is wrong with the request head at the start of *data* (None if
    nothing, or if the head is not complete yet)."""
    start = len(data) - len(data.lstrip(b"\r\n"))
    end = _HEAD_END.search(data, start)
    if end is None:
        return None
    head = data[start : end.end()]
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        return "line ends in a request head must be CRLF"
    lines = head[:-4].split(b"\r\n")
    names = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding in a request head is not accepted"
        names.append(line.partition(b":")[0].strip().lower())
    lengths = names.count(b"content-length")
    if lengths > 1:
        return "more than one Content-Length"
    if lengths and b"transfer-encoding" in names:
        return "Content-Length and Transfer-Encoding together"
    return None


class _StrictConnection(h11.Connection):
    """h11, refusing request heads that h11 itself would accept leniently
    (see :func:`head_problem`)."""

    def next_event(self) -> Any:
        if self.their_state is h11.IDLE:
            problem = head_problem(self.trailing_data[0])
            if problem is not None:
                # As h11 does with a head it cannot parse: the client's side
                # is in error, a 400 may be sent, then the connection closes.
                self._process_error(self.their_role)
                raise h11.RemoteProtocolError(problem, error_status_hint=400)
        return super().next_event()
