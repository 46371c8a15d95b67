"""What every serving process shares: SIGINT and SIGTERM caught as one
orderly shutdown (a second: stop now), and errors reported in one line."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import trio

from ..config import Settings

if TYPE_CHECKING:
    from hypercorn.config import Sockets

__all__ = ["Signals", "lone", "serve_until_signal", "signals"]

log = logging.getLogger("bridge")


def lone(
    group: BaseExceptionGroup, kind: type[Exception] | tuple[type[Exception], ...]
) -> Exception | None:
    """The first *kind* error in *group*, if that is all the group holds
    (nested groups included): an error to report in one line, not a
    traceback."""
    match, rest = group.split(kind)
    if match is None or rest is not None:
        return None
    error: BaseException = match
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    assert isinstance(error, kind)
    return error


class Signals:
    """SIGINT and SIGTERM, caught for as long as it is open (so none is left
    pending to be redelivered, with a traceback, at exit). The first asks
    for the orderly shutdown (:attr:`first`); any later one for stopping
    now (:attr:`stop_now`)."""

    def __init__(self) -> None:
        from ..server import StopNow

        self.first = trio.Event()
        self.stop_now = StopNow()

    async def watch(self, receiver: AsyncIterator[int]) -> None:
        async for signum in receiver:
            name = signal.Signals(signum).name
            if not self.first.is_set():
                log.info("%s: shutting down (again to stop now)", name)
                self.first.set()
            elif not self.stop_now.going:
                log.info("%s again: stopping now", name)
                self.stop_now.go()

    async def serve(self, settings: Settings, sockets: Sockets | None = None) -> None:
        """Serve until the first signal; a second one stops it now."""
        from ..server import serve

        await serve(
            settings, shutdown_trigger=self.first.wait, stop_now=self.stop_now, sockets=sockets
        )


@contextlib.asynccontextmanager
async def signals(
    signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> AsyncIterator[Signals]:
    signals = Signals()
    with trio.open_signal_receiver(*signums) as receiver:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(signals.watch, receiver)
            try:
                yield signals
            finally:
                nursery.cancel_scope.cancel()


async def serve_until_signal(
    settings: Settings,
    sockets: Sockets | None = None,
    signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    async with signals(signums) as caught:
        await caught.serve(settings, sockets)
