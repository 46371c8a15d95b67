"""``serve --workers N``: N bridge processes on one port, one per core.

The parent listens (so a port in use is one error, before anything starts)
and hands the listening sockets to N worker processes, started fresh
(``spawn``: no state forked from the parent); the kernel gives each new
connection to a worker that is accepting. Each worker is a whole bridge
sharing its predictions through the Redis store (``[store] url``, which
the settings require), so a client may create on one and stream, get or
cancel on another.

The parent only supervises, as nginx's master does, from a Trio task per
worker: the first SIGINT or SIGTERM is passed on to every worker as SIGTERM
(drain, then stop), a second one too (stop now); a worker that dies
otherwise is replaced after a second (one whose settings are wrong, exit
status 2, stops everything with that status instead). A worker's end is
read from its sentinel (a pipe that closes when it exits), not from its
exit status, which was seen already reaped (``waitpid``: ECHILD) in about
one run in three.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from multiprocessing.process import BaseProcess

import trio
from hypercorn.config import Sockets

from ..config import Settings
from .signals import Signals

__all__ = ["serve_workers"]

log = logging.getLogger("bridge")

#: A worker that died is replaced after this long.
RESTART_SECONDS = 1.0


async def serve_workers(settings: Settings, log_format: str, caught: Signals) -> int:
    """Serve *settings* with ``settings.workers`` processes until *caught*
    sees a signal; the exit status."""
    from ..server import listen
    from ..store_redis import check_reachable

    assert settings.store_url is not None  # the settings require it
    await check_reachable(settings.store_url)  # else one error, not one per worker
    sockets = listen(settings)
    workers = _Workers(settings, sockets, log_format)
    try:
        async with trio.open_nursery() as signals:
            signals.start_soon(workers.pass_on, caught)
            async with trio.open_nursery() as nursery:
                for number in range(settings.workers):
                    nursery.start_soon(workers.supervise, number)
                port = [*sockets.secure_sockets, *sockets.insecure_sockets][0].getsockname()[1]
                log.info("%d workers serving %s:%d", settings.workers, settings.host, port)
            signals.cancel_scope.cancel()  # every worker has stopped
    finally:
        if workers.running:  # cancelled (a bug, or KeyboardInterrupt): none outlives this
            workers.stop()
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
    return workers.status


class _Workers:
    def __init__(self, settings: Settings, sockets: Sockets, log_format: str) -> None:
        self._args = (settings, sockets, log_format)
        self._context = multiprocessing.get_context("spawn")
        #: The workers running, by number.
        self.running: dict[int, BaseProcess] = {}
        self.stopping = trio.Event()
        self.status = 0

    async def supervise(self, number: int) -> None:
        """Run worker *number*, replaced each time it dies, until stopping."""
        while not self.stopping.is_set():  # a signal may come before the start
            process = self._context.Process(
                target=_worker, args=self._args, name=f"bridge-worker-{number}"
            )
            process.start()  # a fork and exec: quick
            self.running[number] = process
            try:
                await trio.lowlevel.wait_readable(process.sentinel)  # it exited
            finally:
                del self.running[number]
            process.join(1)  # its status, unless it was reaped already
            if self.stopping.is_set():
                return
            if process.exitcode == 2:  # its settings are wrong: so are all of theirs
                self.status = 2
                self.stop()
                return
            status = "unknown" if process.exitcode is None else process.exitcode
            log.warning(
                "worker %d (pid %s) exited (status %s): replacing it",
                number,
                process.pid,
                status,
            )
            with trio.move_on_at(trio.current_time() + RESTART_SECONDS):
                await self.stopping.wait()

    def stop(self) -> None:
        """Ask every worker to stop (SIGTERM: drain, then stop); again: now."""
        self.stopping.set()
        for process in self.running.values():
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    async def pass_on(self, caught: Signals) -> None:
        """The first signal and the second, to every worker."""
        with caught.stop_now.cuts(trio.CancelScope()):
            await caught.first.wait()
            self.stop()
            await trio.sleep_forever()
        self.stop()  # a second signal: stop now


def _worker(settings: Settings, sockets: Sockets, log_format: str) -> None:
    """One worker: a whole bridge on the parent's sockets, stopped by the
    parent's SIGTERM (a Ctrl-C reaches the parent, which passes it on)."""
    import sys

    from ..backends.grpc_loop import run as run_trio
    from ..config import ConfigError
    from ..store_redis import BadStoreUrl
    from .logs import setup_logging
    from .signals import lone, serve_until_signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(log_format)
    error: BaseException | None = None
    try:
        run_trio(serve_until_signal, settings, sockets, (signal.SIGTERM,))
    except ConfigError as exc:
        error = exc
    except BaseExceptionGroup as group:
        error = lone(group, ConfigError)
        if error is None:
            raise
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        # Redis away for now (the parent saw it answer): replaced, as a
        # worker that died; wrong settings stop them all.
        sys.exit(3 if isinstance(error, BadStoreUrl) else 2)
