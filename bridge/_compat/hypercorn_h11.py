"""Hypercorn's HTTP/1.1, strictly: a request line that is not HTTP/1.0 or
1.1 gets 505 and a close (h11 parses ``PRI * HTTP/2.0``, the HTTP/2
preface, as a request), cleartext HTTP/2 is spoken only when ``h2c`` is
on (an ``Upgrade: h2c`` is otherwise answered as HTTP/1.1, RFC 9110 7.8),
and each request head is checked before h11 parses it (a problem is a 400
and a close, as h11 answers a head it cannot parse).

What of hypercorn's and h11's is private here: ``H11Protocol``'s
``connection`` attribute, ``_check_protocol`` (called with each request)
and ``_send_error_response(status)``; h11's ``Connection._process_error``
and ``trailing_data``. ``tests/test_compat.py`` pins what they do."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any

import h11
from hypercorn.events import Closed
from hypercorn.protocol.h11 import H11Protocol

__all__ = ["StrictH11"]

#: What is wrong with a request head at the start of the bytes (None if
#: nothing, or not whole yet): see bridge.http.heads.
CheckHead = Callable[[bytes], str | None]


class _Refused(Exception):
    """A request this server does not serve was answered and its connection
    closed."""


class StrictH11(H11Protocol):
    def __init__(self, *args: Any, h2c: bool, check_head: CheckHead) -> None:
        super().__init__(*args)
        self.h2c = h2c
        self.connection = _StrictConnection(
            check_head, h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )

    async def handle(self, event: Any) -> None:
        with suppress(_Refused):
            await super().handle(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        if self.h2c:
            await super()._check_protocol(event)
        elif event.http_version not in (b"1.0", b"1.1"):
            await self._send_error_response(505)
            await self.send(Closed())
            raise _Refused()


class _StrictConnection(h11.Connection):
    """h11, refusing the request heads *check_head* finds a problem with."""

    def __init__(self, check_head: CheckHead, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_head = check_head

    def next_event(self) -> Any:
        if self.their_state is h11.IDLE:
            problem = self._check_head(self.trailing_data[0])
            if problem is not None:
                # As h11 does with a head it cannot parse: the client's side
                # is in error, a 400 may be sent, then the connection closes.
                self._process_error(self.their_role)
                raise h11.RemoteProtocolError(problem, error_status_hint=400)
        return super().next_event()
