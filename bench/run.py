"""How fast messages get from a gRPC backend to their reader, four ways.

One run, one backend process (``bench/backend.py``: N streams of T chunks,
one every I ms, each chunk its send time), four consumers, one at a time:

* ``asyncio grpc.aio``: a plain asyncio program reading the calls (baseline:
  the floor of any Python consumer);
* ``bridge adapter``: Trio tasks reading through the bridge's asyncio-loop
  thread (bridge.grpc_loop);
* ``thread per stream``: Trio with one ``trio.to_thread`` thread per stream
  running sync grpc, handing each message to Trio (the rejected design);
* ``HTTP/SSE end to end``: the real bridge process, N SSE clients over HTTP.

Delay = receive time - send time (both ``time.monotonic``, one machine).
Ratios are against the baseline of the same run: these machines are shared
and noisy, so compare ratios, not milliseconds, across runs.

    .venv/bin/python bench/run.py [--streams 200] [--tokens 50] [--interval-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import httpx
import trio

from bridge import protocol
from bridge._proto.v1 import predictor_pb2_grpc
from bridge.grpc_loop import open_grpc_loop

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


@dataclass
class Result:
    name: str
    delays: list[float] = field(default_factory=list)
    received: int = 0  # more than len(delays) where replayed events are left out
    wall: float = 0.0
    peak_threads: int = 0

    def row(self, base: Result | None) -> str:
        d = sorted(self.delays)
        p50, p99 = d[len(d) // 2] * 1000, d[int(len(d) * 0.99)] * 1000
        ratio = ""
        if base is not None:
            b = sorted(base.delays)
            b50, b99 = b[len(b) // 2] * 1000, b[int(len(b) * 0.99)] * 1000
            ratio = f"{p50 / b50:7.2f}x {p99 / b99:7.2f}x"
        received = self.received or len(d)
        return (
            f"{self.name:<22}{received:>8}{p50:>10.2f}{p99:>10.2f}"
            f"{received / self.wall:>11.0f}{self.peak_threads:>9}  {ratio}"
        )


class ThreadPeak:
    """Samples a thread count (ours, or another process's) in the background."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def _count(self) -> int:
        if self.pid is None:
            return threading.active_count()
        with open(f"/proc/{self.pid}/status") as f:
            return int(re.search(r"Threads:\s+(\d+)", f.read())[1])

    def __enter__(self) -> ThreadPeak:
        def run() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, self._count())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.pid is None:
            self.peak -= 1  # not counting the sampler itself


def _measure(result: Result, run: Callable[[], object], pid: int | None = None) -> Result:
    """Run *run*, recording its wall time and the peak thread count."""
    with ThreadPeak(pid) as peak:
        start = time.monotonic()
        run()
        result.wall = time.monotonic() - start
    result.peak_threads = peak.peak
    return result


def _request(i: int, args: argparse.Namespace) -> object:
    return protocol.predict_request(
        f"b{i}", {"tokens": args.tokens, "interval_ms": args.interval_ms}
    )


def bench_asyncio(target: str, args: argparse.Namespace) -> Result:
    result = Result("asyncio grpc.aio")

    async def main() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)

            async def one(i: int) -> None:
                async for response in stub.Predict(_request(i, args)):
                    now = time.monotonic()
                    for c in response.output.chunks:
                        result.delays.append(now - float(c.text))

            await asyncio.gather(*(one(i) for i in range(args.streams)))

    return _measure(result, lambda: asyncio.run(main()))


def bench_adapter(target: str, args: argparse.Namespace) -> Result:
    result = Result("bridge adapter")

    async def one(grpc_loop, i: int) -> None:
        async with grpc_loop.predict(
            target, f"b{i}", {"tokens": args.tokens, "interval_ms": args.interval_ms}
        ) as s:
            async for batch in s:
                now = time.monotonic()
                for item in batch:
                    if isinstance(item, protocol.OutputChunks):
                        result.delays.extend(now - float(c) for c in item.chunks)

    async def main() -> None:
        async with open_grpc_loop() as grpc_loop, trio.open_nursery() as nursery:
            for i in range(args.streams):
                nursery.start_soon(one, grpc_loop, i)

    return _measure(result, lambda: trio.run(main))


def bench_threads(target: str, args: argparse.Namespace) -> Result:
    result = Result("thread per stream")

    async def main() -> None:
        limiter = trio.CapacityLimiter(args.streams)
        channel = grpc.insecure_channel(target)
        stub = predictor_pb2_grpc.PredictorStub(channel)

        def receive(text: str) -> None:
            result.delays.append(time.monotonic() - float(text))

        def one(i: int) -> None:
            for response in stub.Predict(_request(i, args)):
                for c in response.output.chunks:
                    trio.from_thread.run_sync(receive, c.text)

        async with trio.open_nursery() as nursery:
            for i in range(args.streams):
                nursery.start_soon(lambda i=i: trio.to_thread.run_sync(one, i, limiter=limiter))
        channel.close()

    return _measure(result, lambda: trio.run(main))


def bench_http(target: str, args: argparse.Namespace) -> Result:
    result = Result("HTTP/SSE end to end")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as config:
        config.write(f'[models."bench/ticks"]\ntargets = ["{target}"]\n')
    bridge = subprocess.Popen(
        [sys.executable, "-m", "bridge", "serve", "--config", config.name, "--port", "0"],
        stderr=subprocess.PIPE,
        env=ENV,
        text=True,
    )
    try:
        for line in bridge.stderr:
            if m := re.search(r"Running on (http://\S+)", line):
                url = m[1]
                break
        threading.Thread(target=lambda: bridge.stderr.read(), daemon=True).start()

        host, port = url.removeprefix("http://").rsplit(":", 1)
        body = f'{{"input": {{"tokens": {args.tokens}, "interval_ms": {args.interval_ms}}}}}'
        output = re.compile(rb"event: output\nid: [^\n]*\ndata: ([0-9.]+)\n")

        # httpx's pool spends O(waiters) per request: with 1,000 creates in
        # flight the client, not the bridge, would be measured.
        creating = trio.CapacityLimiter(50)

        async def one(client: httpx.AsyncClient, i: int) -> None:
            async with creating:
                r = await client.post("/v1/models/bench/ticks/predictions", content=body)
            path = r.json()["urls"]["stream"].removeprefix(url)
            # A minimal raw HTTP/1.1 SSE reader: httpx's line parsing costs
            # more CPU than the bridge does, and would measure the client.
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                connected = time.monotonic()
                buffer = b""
                while data := await stream.receive_some(65536):
                    now = time.monotonic()
                    buffer += data
                    end = 0
                    for m in output.finditer(buffer):
                        result.received += 1
                        # Events sent before this reader connected are a
                        # replay (late join), not a delay: leave them out.
                        if (sent := float(m[1])) >= connected:
                            result.delays.append(now - sent)
                        end = m.end()
                    buffer = buffer[end:]
                    if b"event: done" in buffer:
                        break

        async def main() -> None:
            async with (
                httpx.AsyncClient(base_url=url, timeout=120) as client,
                trio.open_nursery() as nursery,
            ):
                for i in range(args.streams):
                    nursery.start_soon(one, client, i)

        _measure(result, lambda: trio.run(main), pid=bridge.pid)
        result.name += " *"
    finally:
        bridge.terminate()
        bridge.wait(10)
        os.unlink(config.name)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--interval-ms", type=int, default=20)
    parser.add_argument(
        "--skip-threads",
        action="store_true",
        help="skip the thread-per-stream design (slow at 1,000 streams)",
    )
    args = parser.parse_args()

    backend = subprocess.Popen(
        [sys.executable, "bench/backend.py"], stdout=subprocess.PIPE, env=ENV, text=True
    )
    try:
        target = re.search(r"listening on (\S+)", backend.stdout.readline())[1]
        print(
            f"{args.streams} streams x {args.tokens} chunks, one per {args.interval_ms} ms; "
            f"{os.cpu_count()} cores\n"
        )
        print(
            f"{'consumer':<22}{'msgs':>8}{'p50 ms':>10}{'p99 ms':>10}{'msgs/s':>11}"
            f"{'threads':>9}  vs baseline (p50, p99)"
        )
        base = bench_asyncio(target, args)
        print(base.row(None), flush=True)
        runs = [bench_adapter]
        if not args.skip_threads:
            runs.append(bench_threads)
        runs.append(bench_http)
        for run in runs:
            print(run(target, args).row(base), flush=True)
        print(
            "\n* threads of the bridge process; the HTTP clients run in this process;"
            " delays of live events only (not those replayed to a reader that joined late)"
        )
    finally:
        backend.terminate()
        backend.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
