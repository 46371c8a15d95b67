"""``serve --workers N``: N bridge processes on one port, one per core.

The parent listens (so a port in use is one error, before anything starts)
and hands the listening sockets to N worker processes, started fresh
(``spawn``: no state forked from the parent); the kernel gives each new
connection to a worker that is accepting. Each worker is a whole bridge
sharing its predictions through the Redis store (``[store] url``, which
the settings require), so a client may create on one and stream, get or
cancel on another.

The parent only supervises, as nginx's master does: SIGINT or SIGTERM is
passed on to every worker (the first: drain and stop; a second: stop now);
a worker that dies otherwise is replaced after a second (one whose settings
are wrong, exit status 2, stops everything with that status instead).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from hypercorn.config import Sockets

from ..config import Settings

__all__ = ["run_workers"]

log = logging.getLogger("bridge")

#: A worker that died is replaced after this long.
RESTART_SECONDS = 1.0


def run_workers(settings: Settings, log_format: str) -> int:
    """Serve *settings* with ``settings.workers`` processes until a signal
    stops them; the exit status."""
    import trio

    from ..core.redis_store import check_reachable
    from ..server import listen

    assert settings.store_url is not None  # the settings require it
    trio.run(check_reachable, settings.store_url)  # else one error, not one per worker
    sockets = listen(settings)
    context = multiprocessing.get_context("spawn")
    signals_seen = 0
    # The workers running, by the end of a pipe that closes when each
    # exits (its sentinel): what tells of an exit, whoever reaps it.
    running: dict[int, tuple[int, BaseProcess]] = {}

    def start(number: int) -> None:
        process = context.Process(
            target=_worker,
            args=(settings, sockets, log_format),
            name=f"bridge-worker-{number}",
        )
        process.start()
        running[process.sentinel] = (number, process)

    def pass_on(signum: int, frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        for _, process in running.values():
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    for number in range(settings.workers):
        start(number)
    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    port = [*sockets.secure_sockets, *sockets.insecure_sockets][0].getsockname()[1]
    log.info("%d workers serving %s:%d", settings.workers, settings.host, port)
    status = 0
    try:
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                assert isinstance(sentinel, int)  # what was waited on
                number, process = running.pop(sentinel)
                # Its exit status, unless something else in this process
                # reaped it first (seen: then it is None).
                process.join(1)
                if signals_seen or status:
                    continue
                if process.exitcode == 2:  # its settings are wrong: so are all of theirs
                    status = 2
                    pass_on(signal.SIGTERM, None)
                    continue
                log.warning(
                    "worker %d (pid %s) exited (status %s): replacing it",
                    number,
                    process.pid,
                    "unknown" if process.exitcode is None else process.exitcode,
                )
                time.sleep(RESTART_SECONDS)
                start(number)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()
    return status


def _worker(settings: Settings, sockets: Sockets, log_format: str) -> None:
    """One worker: a whole bridge on the parent's sockets, stopped by the
    parent's SIGTERM (a Ctrl-C reaches the parent, which passes it on)."""
    import sys

    from ..backends.grpc_loop import run as run_trio
    from ..config import ConfigError
    from .logs import setup_logging
    from .signals import lone, serve_until_signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(log_format)
    try:
        run_trio(serve_until_signal, settings, sockets, (signal.SIGTERM,))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BaseExceptionGroup as group:
        error = lone(group, ConfigError)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
