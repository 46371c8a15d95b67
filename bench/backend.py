"""The bench's model backend: ``bench/ticks`` and ``demo/echo``, one process.

``bench/ticks`` yields ``tokens`` chunks, one every ``interval_ms``, each the
``time.monotonic()`` it was made at (``"<seconds> "``), so a reader in
another process of this machine computes each chunk's delay. When its
generator is closed before the end (the prediction was cancelled), it prints
``cancelled <key> <monotonic>``: the moment the model saw the cancel.

Prints ``<model> listening on <host:port>`` for each model, then serves
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

from bridge.cli.lifeline import stop_on_eof
from bridge.sdk import Model, serve_async
from bridge.sdk.demo import echo


async def ticks(key: str = "", tokens: int = 50, interval_ms: int = 20) -> AsyncIterator[str]:
    """*tokens* timestamps, one per *interval_ms* (0: as fast as possible)."""
    finished = False
    try:
        for _ in range(tokens):
            if interval_ms:
                await asyncio.sleep(interval_ms / 1000)
            yield f"{time.monotonic():.6f} "
        finished = True
    finally:
        if not finished:
            print(f"cancelled {key} {time.monotonic():.6f}", flush=True)


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def ready(name: str):
        return lambda port: print(f"{name} listening on 127.0.0.1:{port}", flush=True)

    await asyncio.gather(
        *(
            serve_async(Model(name, func), ready=ready(name), stop=stop)
            for name, func in (("bench/ticks", ticks), ("demo/echo", echo))
        )
    )


if __name__ == "__main__":
    stop_on_eof()  # bench/run.py holds our stdin: we end with it
    asyncio.run(main())
