"""A bench backend: each chunk is the monotonic time it was sent at, so a
consumer in another process on this machine can compute the delay."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

from bridge.backends.sdk import Model, serve


async def ticks(tokens: int = 50, interval_ms: int = 20) -> AsyncIterator[str]:
    for _ in range(tokens):
        await asyncio.sleep(interval_ms / 1000)
        yield f"{time.monotonic():.6f}"


if __name__ == "__main__":
    serve(Model("bench/ticks", ticks), port=int(sys.argv[1]) if len(sys.argv) > 1 else 0)
