"""Quart-Trio's request handling, patched in one place (a private API:
``quart_trio.asgi.TrioASGIHTTPConnection``, pinned by
tests/test_compat.py).

:class:`App` is Quart-Trio's app with :class:`_HTTPConnection` as its
connection class, which (1) sends the last message of a response under a
shield and (2) runs the callbacks given to :func:`when_request_ends`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import trio
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

__all__ = ["App", "when_request_ends"]

_request_ends: ContextVar[list[Callable[[], object]]] = ContextVar("request_ends")


def when_request_ends(callback: Callable[[], object]) -> None:
    """Call *callback* once the current request is over, however it ends:
    answered, its client gone (before, during or after the answer's
    headers), or the server shutting down."""
    _request_ends.get().append(callback)


class _HTTPConnection(TrioASGIHTTPConnection):
    """Quart-Trio's request handling, with the last message of a response
    sent under a shield.

    Hypercorn handles that message all the way to the connection's fate:
    it ends the response, tells the app ``http.disconnect``, then either
    recycles the connection (restarting its keep-alive timer) or closes it
    (``Connection: close``, HTTP/1.0). Quart-Trio cancels the request's
    nursery as soon as it receives that disconnect, which lands while the
    same task is still inside hypercorn's send, so neither the recycle nor
    the close ever happened: every connection stayed open for as long as the
    client liked. The shielded part is bounded: an empty body, a chunked
    terminator and a socket close (hypercorn shields its writes anyway).

    It also runs the callbacks given to :func:`when_request_ends`.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        async def send_last_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        callbacks: list[Callable[[], object]] = []
        token = _request_ends.set(callbacks)
        try:
            await super().__call__(receive, send_last_shielded)
        finally:
            _request_ends.reset(token)
            for callback in callbacks:
                callback()


class App(QuartTrio):
    """Quart-Trio's app, its connections handled by :class:`_HTTPConnection`."""

    asgi_http_class = _HTTPConnection
