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

What of hypercorn's is private here: ``TCPServer``'s ``send_lock``,
``stream`` and ``_close``; ``ProtocolWrapper.protocol``;
``H11Protocol._check_protocol``, ``._send_error_response`` and its
``connection`` attribute; h11's ``Connection._process_error``.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import h11
import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr

__all__ = ["ConnectionLimits", "serve_http"]

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


async def serve_http(
    app: AppWrapper,
    config: Config,
    sockets: Sockets,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* on *sockets* (already listening) until *shutdown_trigger*
    returns; then stop accepting and give open connections
    ``config.graceful_timeout``. Reports the bound URLs."""
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
            listeners = []
            for sock in sockets.insecure_sockets:
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
                await config.log.info(f"Running on {binds[-1]} (CTRL + C to quit)")

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
    listener: trio.SocketListener,
    connections: trio.Nursery,
    slots: _Slots,
    connection: Callable[[trio.abc.Stream], _Connection],
) -> None:
    """Accept connections on *listener* while there are *slots*, each run
    in *connections*."""
    out_of_room = False
    while True:
        await slots.take()
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.give_back()
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
        connections.start_soon(_run_connection, connection(stream), slots)


async def _run_connection(connection: _Connection, slots: _Slots) -> None:
    try:
        await connection.run()
    finally:
        slots.give_back()


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

    async def run(self) -> None:
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
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    @property  # type: ignore[override]
    def protocol(self) -> ProtocolWrapper:
        return self._protocol

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        # TCPServer.run makes the wrapper; its HTTP/1.1 side is replaced by
        # the strict one here, before it has seen a byte.
        if isinstance(wrapper.protocol, H11Protocol):
            wrapper.protocol = _StrictH11(
                wrapper.app,
                wrapper.config,
                wrapper.context,
                wrapper.task_group,
                wrapper.state,
                wrapper.ssl,
                wrapper.client,
                wrapper.server,
                wrapper.send,
                h2c=self.limits.h2c,
            )
        self._protocol = wrapper

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
