"""A child process that ends with its parent, however the parent ends.

The parent starts the child with a pipe as its stdin (``stdin=PIPE``) and
never writes to it; the child runs with ``--stop-on-eof``. When the parent
exits for any reason, SIGKILL included, the kernel closes the pipe's write
end, the child reads end-of-file and stops as it would on SIGTERM (its
orderly shutdown). ``PR_SET_PDEATHSIG`` is not used: it fires when the
*thread* that forked exits, and Trio forks from a worker thread that ends
when idle.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["stop_on_eof"]


def stop_on_eof() -> None:
    """Send this process SIGTERM once its stdin reaches end-of-file (from a
    daemon thread that does nothing but wait for it)."""

    def watch() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-on-eof", daemon=True).start()
