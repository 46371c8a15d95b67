"""Which Redis client the shared store uses: coredis on Trio (this
bridge's event loop) against redis-py's asyncio client on the asyncio loop
(its best case, no hand-off).

Three figures, each the median of three runs against one redis-server:

* append: one batch (XADD of one entry, pipelined with the record's HSET),
  awaited before the next, as one prediction's writer does: batches/s
  and the client's CPU per batch;
* batched: appends to 100 different streams in one pipeline (what one
  process's writer sends when many predictions run): CPU per append;
* tail: one writer XADDs, one reader blocks in XREAD on that stream; the
  time from XADD sent to XREAD returned (the hop a token takes from the
  process running a prediction to a reader on another).

Run: python bench/redis_clients.py (starts and stops its own redis-server).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import coredis
import redis.asyncio as redis_py
import trio

N_APPEND = 5000
N_TAIL = 2000
PAYLOAD = b"x" * 40
#: Appends of different predictions sent as one pipeline (a process's
#: writes that came in while the last pipeline was out).
BATCH = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def coredis_append(url: str) -> tuple[float, float]:
    client = coredis.Redis.from_url(url)
    async with client:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(N_APPEND):
            async with client.pipeline(transaction=False) as pipe:
                pipe.xadd("c:log", {"p": PAYLOAD})
                pipe.hset("c:rec", {"n": str(i)})
        return N_APPEND / (time.perf_counter() - start), (time.process_time() - cpu) / N_APPEND


async def coredis_batch(url: str) -> float:
    client = coredis.Redis.from_url(url)
    async with client:
        cpu = time.process_time()
        for _ in range(N_APPEND // BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for k in range(BATCH):
                    pipe.xadd(f"c:log{k}", {"p": PAYLOAD})
        return (time.process_time() - cpu) / (N_APPEND // BATCH * BATCH)


async def coredis_tail(url: str) -> list[float]:
    writer, reader = coredis.Redis.from_url(url), coredis.Redis.from_url(url)
    hops: list[float] = []
    async with writer, reader:
        await writer.delete(["c:tail"])
        last = "0-0"
        for _ in range(N_TAIL):
            sent = 0.0

            async def send() -> None:
                nonlocal sent
                await trio.sleep(0.0005)
                sent = time.perf_counter()
                await writer.xadd("c:tail", {"p": PAYLOAD})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                got = await reader.xread({"c:tail": last}, count=100, block=1000)
                hops.append(time.perf_counter() - sent)
            assert got
            last = next(iter(got.values()))[-1].identifier
    return hops


async def redispy_append(url: str) -> tuple[float, float]:
    client = redis_py.Redis.from_url(url)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(N_APPEND):
        async with client.pipeline(transaction=False) as pipe:
            pipe.xadd("r:log", {"p": PAYLOAD})
            pipe.hset("r:rec", mapping={"n": str(i)})
            await pipe.execute()
    rate = N_APPEND / (time.perf_counter() - start), (time.process_time() - cpu) / N_APPEND
    await client.aclose()
    return rate


async def redispy_batch(url: str) -> float:
    client = redis_py.Redis.from_url(url)
    cpu = time.process_time()
    for _ in range(N_APPEND // BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for k in range(BATCH):
                pipe.xadd(f"r:log{k}", {"p": PAYLOAD})
            await pipe.execute()
    await client.aclose()
    return (time.process_time() - cpu) / (N_APPEND // BATCH * BATCH)


async def redispy_tail(url: str) -> list[float]:
    writer, reader = redis_py.Redis.from_url(url), redis_py.Redis.from_url(url)
    hops: list[float] = []
    await writer.delete("r:tail")
    last = b"0-0"
    for _ in range(N_TAIL):
        sent = 0.0

        async def send() -> None:
            nonlocal sent
            await asyncio.sleep(0.0005)
            sent = time.perf_counter()
            await writer.xadd("r:tail", {"p": PAYLOAD})

        task = asyncio.create_task(send())
        got = await reader.xread({"r:tail": last}, count=100, block=1000)
        hops.append(time.perf_counter() - sent)
        await task
        last = got[0][1][-1][0]
    await writer.aclose()
    await reader.aclose()
    return hops


def main() -> None:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(50):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            rows: dict[str, tuple[list[tuple[float, float]], list[float], list[float]]] = {
                "coredis on Trio": ([], [], []),
                "redis-py on asyncio": ([], [], []),
            }
            for _ in range(3):
                rows["coredis on Trio"][0].append(trio.run(coredis_append, url))
                rows["coredis on Trio"][1].extend(trio.run(coredis_tail, url))
                rows["coredis on Trio"][2].append(trio.run(coredis_batch, url))
                rows["redis-py on asyncio"][0].append(asyncio.run(redispy_append(url)))
                rows["redis-py on asyncio"][1].extend(asyncio.run(redispy_tail(url)))
                rows["redis-py on asyncio"][2].append(asyncio.run(redispy_batch(url)))
        finally:
            proc.terminate()
            proc.wait()
    print(f"redis-server, cpu count {os.cpu_count()}")
    print(
        "| client | appends/s, one at a time | client CPU per append | "
        f"client CPU per append, {BATCH} per pipeline | tail hop p50 | tail hop p99 |"
    )
    print("|---|---|---|---|---|---|")
    for name, (appends, hops, batched) in rows.items():
        hops.sort()
        p99 = hops[int(len(hops) * 0.99)]
        rate = statistics.median(a[0] for a in appends)
        cpu = statistics.median(a[1] for a in appends)
        print(
            f"| {name} | {rate:,.0f} | {cpu * 1e6:.0f} µs | "
            f"{statistics.median(batched) * 1e6:.1f} µs | "
            f"{statistics.median(hops) * 1e6:.0f} µs | {p99 * 1e6:.0f} µs |"
        )


if __name__ == "__main__":
    main()
