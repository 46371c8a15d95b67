"""The bench's model backend: ``bench/ticks``, ``demo/echo``,
``bench/batch`` and ``bench/batch-predict``, one process.

``bench/ticks`` yields ``tokens`` chunks, one every ``interval_ms``, each the
``time.monotonic()`` it was made at (``"<seconds> "``), so a reader in
another process of this machine computes each chunk's delay. When its
generator is closed before the end (the prediction was cancelled), it prints
``cancelled <key> <monotonic>``: the moment the model saw the cancel.

``bench/ticks-predict`` and ``demo/echo-predict`` are the same two
offering the bridge ``Predict`` only (a bridged service calls ``Predict``:
its rows compare with these). ``bench/batch`` is ``demo/batch`` (a
batching engine's step loop: every running prediction's token in one
step) whose tokens are such timestamps;
``bench/batch-predict`` the same model offering the bridge ``Predict``
only, as a backend written for ``Predict`` would.

Prints ``<model> listening on <host:port>`` for each model, then serves
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from bridge.cli.lifeline import stop_on_eof
from bridge.sdk import Model, serve_async
from bridge.sdk.demo import Batch, echo


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


class TickBatch(Batch):
    """demo/batch, each token the monotonic time its step made it."""

    def token(self, sequence: Any) -> str:
        return f"{time.monotonic():.6f} "


async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def ready(name: str):
        return lambda port: print(f"{name} listening on 127.0.0.1:{port}", flush=True)

    models = [
        Model("bench/ticks", ticks),
        Model("demo/echo", echo),
        # The same, Predict only: what a bridged service's rows compare with.
        Model("bench/ticks-predict", ticks, multiplexed=False),
        Model("demo/echo-predict", echo, multiplexed=False),
        Model("bench/batch", TickBatch),
        Model("bench/batch-predict", TickBatch, multiplexed=False),
    ]
    await asyncio.gather(
        *(serve_async(model, ready=ready(model.info.name), stop=stop) for model in models)
    )


if __name__ == "__main__":
    stop_on_eof()  # bench/run.py holds our stdin: we end with it
    asyncio.run(main())
