"""Work on many bytes, off the event loop: one rule for the whole bridge.

Work on more than :data:`INLINE_BYTES` (validating or encoding a large
input, rendering a large prediction) runs in a worker thread, so it never
stalls the event loop for other requests; smaller work is cheaper done at
once. At most :data:`BIG_WORK_THREADS` run at a time: a thread that
computes holds the GIL, and every other thread it makes wait (the event
loop, the gRPC loop) waits up to the switch interval (5 ms) each time;
two made /health slower, not the work faster. One :class:`Offload` is
shared by everything a server runs (:func:`bridge.server.serve`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["BIG_WORK_THREADS", "INLINE_BYTES", "Offload"]

T = TypeVar("T")

INLINE_BYTES = 64 * 1024
BIG_WORK_THREADS = 1


class Offload:
    """``await offload(size, work, *args)``: ``work(*args)``, at once if
    *size* (the bytes it handles) is at most :data:`INLINE_BYTES`, else in a
    worker thread, one at a time. *work* must touch nothing the event loop
    changes meanwhile."""

    def __init__(self) -> None:
        self._threads = trio.CapacityLimiter(BIG_WORK_THREADS)

    async def __call__(self, size: int, work: Callable[..., T], *args: Any) -> T:
        if size <= INLINE_BYTES:
            return work(*args)
        return await trio.to_thread.run_sync(work, *args, limiter=self._threads)
