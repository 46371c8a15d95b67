"""The HTTP server: the listening sockets, accepting, and the bounds on
connections; each connection is hypercorn's, made the bridge's
(:mod:`bridge._compat.hypercorn_tcp`).

* **At most** ``max_connections`` **at once.** Past it, accepting pauses
  until one closes (new clients wait in the listen backlog), logged once
  per episode; running out of file descriptors (``EMFILE``) pauses the
  same way instead of logging a traceback ten times a second.
* **HTTP/1.1, strictly** (:mod:`bridge.http.heads`, applied by
  :mod:`bridge._compat.hypercorn_h11`): request heads with bare LF line
  ends, obsolete line folding, both ``Content-Length`` and
  ``Transfer-Encoding``, or more than one ``Content-Length`` are refused
  with 400 and the connection is closed. A request line that is not
  HTTP/1.0 or 1.1 gets 505 and a close. Cleartext HTTP/2 (``Upgrade: h2c``
  or the prior-knowledge preface) is not spoken unless ``h2c`` is set.
* **HTTP/2 with HTTP/1.1's bounds** (:mod:`bridge._compat.hypercorn_h2`),
  over TLS by ALPN or as h2c.

Only public APIs here: trio's listeners, and hypercorn's ``Config`` and
``Sockets``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.utils import repr_socket_addr

from .._compat.hypercorn_tcp import Connection, Protocols, hosted
from .heads import head_problem

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
    protocols = Protocols(limits.h2c, limits.stall_seconds, head_problem)
    async with hosted(asgi_app, config) as host:
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

            def connection(stream: trio.abc.Stream) -> Connection:
                return host.connection(stream, protocols)

            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(_accept, listener, connections, slots, connection)
                    task_status.started(binds)
                    await shutdown_trigger()
                    accepting.cancel_scope.cancel()
            finally:
                await host.terminate()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


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
    connection: Callable[[trio.abc.Stream], Connection],
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


async def _run_connection(connection: Connection, slots: _Slots) -> None:
    try:
        await connection.run()
    finally:
        slots.give_back()
