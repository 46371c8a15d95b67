"""``make bench``: the bridge against the direct gRPC drain and a hand-written
peer, everything in one run.

One run starts its own processes: the backend (``bench/backend.py``:
``bench/ticks``, whose chunks are the monotonic time they were made at, and
``demo/echo``), the bridge (``python -m bridge serve``), and the peer
(``bench/peer.py``: FastAPI + sse-starlette + grpc.aio on uvicorn). Readers
are processes of their own (``bench/readers.py``: raw sockets, or grpc.aio
for the direct drain), and their CPU is shown, so they are seen not to be
the bottleneck. Ratios are against baselines of the same run: these
machines are shared and noisy, so compare ratios, not milliseconds, across
runs.

Measured:

* one stream as fast as the backend sends (``demo/echo``, 2-character
  chunks), 20,000 and 200,000 of them: chunks/s direct over gRPC, through
  the bridge, through the peer (the median of a few rounds, taken in turns;
  the targets are judged on the longer, sustained stream);
* 100 and 1,000 concurrent streams at 20 chunks/s: the gap between
  consecutive chunks of a stream and each chunk's delay, p50/p99/max,
  streams not whole, and the server's CPU and peak RSS; both rows also the
  way Replicate's clients read (create, then GET ``urls.stream``);
* capacity: the most streams at 20 chunks/s a server carries, every one
  whole with gap p99 <= 100 ms (250, 500, 1,000, 1,500, 2,000 tried in
  turn, 5 s each), the bridge and the peer; and the most of those carried
  live, a chunk's delay (made -> read) within 100 ms at the median too;
* time to first chunk (sequential requests) direct, through the bridge
  (the direct streaming create) and the peer; ``cancel`` (the HTTP call) to
  the model's generator seeing it;
* memory, in a fresh bridge process: RSS per retained 2-character chunk,
  per idle open stream, per stalled late reader of a long prediction;
* the shared store (Redis, Debian's redis-server started for the run): one
  stream through it; 1,000 paced streams read on the bridge running them,
  and created on one bridge and read on another; ``serve --workers 2`` at
  the same load; the in-memory bridge at that load beside them, with the
  server CPU per chunk of each (the in-memory and the same-bridge Redis
  loads three times in turns, the median: their ratio is a target);
* a batching model (``bench/batch``, ``demo/batch``'s step loop), 1,000
  paced streams: server CPU per token of the bridge over ``Stream`` and
  over ``Predict`` and of the peer, three times in turns (the median), and
  the capacity of the bridge over ``Stream`` and of the peer.
* workers under a CPU quota (``bench/quota.py``, cgroup v1, as root): each
  bridge process held to 30% of a core, the capacity of one in-memory
  process and of 1, 2 and 3 workers on Redis (skipped, and said so, where
  quotas cannot be set).

Writes ``results.md`` and ``results.json`` to ``--out`` (``bench/out``).

    .venv/bin/python bench/run.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}
TICKS, ECHO = "bench/ticks", "demo/echo"
#: demo/batch's step loop with timestamps for tokens, over Stream and over
#: Predict only (bench/backend.py).
BATCH, BATCH_PREDICT = "bench/batch", "bench/batch-predict"
#: The same backends' bridge.v1 Predict named as any service's method
#: (docs/grpc-services.md): the generic path, beside the native one.
GENERIC = {"generic/ticks": "bench/ticks-predict", "generic/echo": "demo/echo-predict"}
PROTO = HERE.parent / "proto"
#: The share of a core each bridge process gets in the workers' rows.
QUOTA = 0.3


# -- processes -------------------------------------------------------------


class Proc:
    """A child process we own: started, read for a pattern, stopped by PID."""

    def __init__(self, argv: list[str], pattern: str, *, stderr: bool = False) -> None:
        # A pipe as stdin, which each of our servers watches (the bridge
        # with --stop-on-eof, the others through bridge.cli.lifeline): if this
        # process dies, however it dies, they stop too.
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
            env=ENV,
            text=True,
            cwd=HERE.parent,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.found: list[str] = []
        regex = re.compile(pattern)
        assert self.popen.stdout is not None
        for line in self.popen.stdout:  # until its first line that says where it is
            if m := regex.search(line):
                self.found.append(m[1])
                self.lines.append(line)
                break
        else:
            raise RuntimeError(f"{argv} exited before saying where it listens")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str] | None:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    return None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_backend() -> tuple[Proc, dict[str, str]]:
    proc = Proc([PY, str(HERE / "backend.py")], r"^(\S+) listening on")
    targets = {}
    for name in (TICKS, ECHO, BATCH, BATCH_PREDICT, *GENERIC.values()):  # a line each, any order
        line = proc.wait_line(rf"^{re.escape(name)} listening on (\S+)", 10)
        assert line is not None, f"backend did not start {name}"
        targets[name] = line[1]
    return proc, targets


def start_bridge(
    targets: dict[str, str], tmp: Path, store: str | None = None, workers: int = 1
) -> tuple[Proc, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "bridge.toml"
    models = "".join(f'[models."{n}"]\ntargets = ["{t}"]\n' for n, t in targets.items())
    for name, native in GENERIC.items():
        models += (
            f'[models."{name}"]\ntargets = ["{targets[native]}"]\n'
            'method = "bridge.v1.Predictor/Predict"\n'
            f'protos = ["{PROTO / "bridge/v1/predictor.proto"}"]\nproto_path = ["{PROTO}"]\n'
            f'[models."{name}".output]\ntext = "output.chunks[].text"\n'
        )
    shared = f'[store]\nurl = "{store}"\n' if store else ""
    config.write_text(
        "[server]\nmax_running = 4096\nmax_queued = 4096\n"
        f'[webhooks]\nsecret_file = "{tmp / "secret"}"\n{models}{shared}'
    )
    argv = [PY, "-m", "bridge", "serve", "--stop-on-eof", "--config", str(config), "--port", "0"]
    argv += ["--workers", str(workers)] * (workers > 1)
    proc = Proc(argv, r"bridge listening on http://(\S+)", stderr=True)
    return proc, proc.found[0]


def start_peer(targets: dict[str, str]) -> tuple[Proc, str]:
    argv = [PY, str(HERE / "peer.py"), "--port", "0", *(f"{n}={t}" for n, t in targets.items())]
    proc = Proc(argv, r"peer listening on http://(\S+)")
    return proc, proc.found[0]


# -- what a process uses ---------------------------------------------------


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's redis-server on a free port, keeping nothing on disk."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.05)


def _workers(parent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True)
    return [int(p) for p in found.stdout.split()]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read())[1]) * 1024


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def usage(*pids: int) -> Iterator[dict[str, float]]:
    """CPU seconds and peak RSS (MiB) of *pids* together while the block runs."""
    out: dict[str, float] = {"peak_rss_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while True:
            rss = sum(_rss(pid) for pid in pids) / 2**20
            out["peak_rss_mib"] = max(out["peak_rss_mib"], rss)
            if stop.wait(0.05):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    cpu = sum(_cpu(pid) for pid in pids)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        out["cpu_s"] = sum(_cpu(pid) for pid in pids) - cpu


# -- readers ---------------------------------------------------------------


def readers(
    kind: str,
    where: str,
    model: str,
    input: dict[str, Any],
    streams: int,
    *,
    procs: int = 1,
    ticks: bool = False,
    sequential: bool = False,
    get: bool = False,
    read_addr: str | None = None,
    openai: bool = False,
    count: str = "ab",
    ramp: float = 0.0,
) -> dict[str, Any]:
    """Run *streams* streams split over *procs* reader processes; merged.
    With *get*, each creates, then GETs ``urls.stream`` (Replicate's way),
    from *read_addr* if given (another bridge sharing the store). With
    *ramp*, each process starts its streams evenly over that many seconds."""
    argv = [PY, str(HERE / "readers.py"), kind, "--model", model, "--input", json.dumps(input)]
    argv += ["--addr" if kind == "sse" else "--target", where]
    argv += ["--ticks"] * ticks + ["--sequential"] * sequential + ["--get"] * get
    argv += ["--read-addr", read_addr] * (read_addr is not None)
    argv += ["--openai"] * openai + ["--count", count] + ["--ramp", str(ramp)] * bool(ramp)
    shares = [streams // procs + (i < streams % procs) for i in range(procs)]
    running = [
        subprocess.Popen([*argv, "--streams", str(n)], stdout=subprocess.PIPE, env=ENV)
        for n in shares
        if n
    ]
    outs = [json.loads(p.communicate()[0]) for p in running]
    return {
        "cpu": sum(o["cpu"] for o in outs),
        "wall": max(o["wall"] for o in outs),
        "streams": [s for o in outs for s in o["streams"]],
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def ms(values: list[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {"p50": r(pct(values, 0.5)), "p99": r(pct(values, 0.99)), "max": r(pct(values, 1))}


# -- the measurements ------------------------------------------------------


def one_stream(urls: dict[str, str], targets: dict[str, str], chunks: int, rounds: int) -> dict:
    input = {"prompt": "-", "tokens": ["ab"], "repeat": chunks}
    runs: dict[str, list[float]] = {"direct": [], "bridge": [], "bridge_get": [], "peer": []}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        for name in runs:
            if name == "direct":
                out = readers("grpc", targets[ECHO], ECHO, input, 1)
            elif name == "bridge_get":  # Replicate's way: create, then GET urls.stream
                out = readers("sse", urls["bridge"], ECHO, input, 1, get=True)
            else:
                out = readers("sse", urls[name], ECHO, input, 1)
            (stream,) = out["streams"]
            assert stream["error"] is None and stream["chunks"] == chunks, (name, stream)
            runs[name].append(stream["end"])
            cpu[name] = out["cpu"]
    rates = {name: chunks / statistics.median(ends) for name, ends in runs.items()}
    return {
        "chunks": chunks,
        "chunks_per_s": {k: round(v) for k, v in rates.items()},
        "bridge_vs_direct": round(rates["bridge"] / rates["direct"], 2),
        "bridge_get_vs_direct": round(rates["bridge_get"] / rates["direct"], 2),
        "bridge_vs_peer": round(rates["bridge"] / rates["peer"], 2),
        "reader_cpu_s": cpu,
    }


def openai_stream(urls: dict[str, str], targets: dict[str, str], chunks: int, rounds: int) -> dict:
    """One stream read as OpenAI's chat completion chunks, against the
    direct drain of the same chunks (a character the chunks' JSON framing
    never holds, so they can be counted in it)."""
    input = {"prompt": "-", "tokens": ["~"], "repeat": chunks}
    runs: dict[str, list[float]] = {"direct": [], "openai": []}
    for _ in range(rounds):
        for name in runs:
            if name == "direct":
                out = readers("grpc", targets[ECHO], ECHO, input, 1, count="~")
            else:
                out = readers("sse", urls["bridge"], ECHO, input, 1, openai=True, count="~")
            (stream,) = out["streams"]
            assert stream["error"] is None and stream["chunks"] == chunks, (name, stream)
            runs[name].append(stream["end"])
    rates = {name: chunks / statistics.median(ends) for name, ends in runs.items()}
    return {
        "chunks": chunks,
        "chunks_per_s": {k: round(v) for k, v in rates.items()},
        "openai_vs_direct": round(rates["openai"] / rates["direct"], 2),
    }


def many_streams(urls: dict[str, str], pids: dict[str, int], streams: int, seconds: float) -> dict:
    per_second = 20
    tokens = int(seconds * per_second)
    input = {"tokens": tokens, "interval_ms": 1000 // per_second}
    out: dict[str, Any] = {"streams": streams, "chunks_per_stream": tokens}
    for name in ("bridge", "bridge_get", "peer"):
        server = name.removesuffix("_get")
        with usage(pids[server]) as used:
            result = readers(
                "sse", urls[server], TICKS, input, streams, procs=2, ticks=True,
                get=name == "bridge_get",
            )  # fmt: skip
        whole = [s for s in result["streams"] if s["error"] is None and s["chunks"] == tokens]
        out[name] = {
            "gap_ms": ms([g for s in result["streams"] for g in s["gaps"]]),
            "delay_ms": ms([d for s in result["streams"] for d in s["delays"]]),
            "not_whole": streams - len(whole),
            "errors": sorted({s["error"] for s in result["streams"] if s["error"]})[:3],
            "server_cpu_s": round(used["cpu_s"], 2),
            "server_peak_rss_mib": round(used["peak_rss_mib"], 1),
            "reader_cpu_s": round(result["cpu"], 2),
        }
    return out


def paced(
    create: str,
    pids: list[int],
    streams: int,
    seconds: float,
    read: str | None = None,
    model: str = TICKS,
    ramp: float = 0.0,
) -> dict[str, Any]:
    """*streams* at 20 chunks/s created on *create* (and read from *read*,
    created then read from urls.stream), the CPU of *pids* together; with
    *ramp*, the streams start evenly over that many seconds, and last that
    much longer (all of them run together for *seconds*)."""
    tokens = int((seconds + ramp) * 20)
    input = paced_input(model, tokens)
    with usage(*pids) as used:
        result = readers(
            "sse", create, model, input, streams, procs=2, ticks=True,
            get=read is not None, read_addr=read, ramp=ramp,
        )  # fmt: skip
    whole = [s for s in result["streams"] if s["error"] is None and s["chunks"] == tokens]
    return {
        "gap_ms": ms([g for s in result["streams"] for g in s["gaps"]]),
        "delay_ms": ms([d for s in result["streams"] for d in s["delays"]]),
        "not_whole": streams - len(whole),
        "errors": sorted({s["error"] for s in result["streams"] if s["error"]})[:3],
        # Streams not whole with no error: their chunk counts, the commonest.
        "short": collections.Counter(
            s["chunks"] for s in result["streams"] if s["error"] is None and s["chunks"] != tokens
        ).most_common(3),
        "server_cpu_s": round(used["cpu_s"], 2),
        "cpu_us_per_chunk": round(used["cpu_s"] / max(1, streams * tokens) * 1e6, 1),
    }


#: The bound of a capacity (DESIGN's): paced streams are carried when every
#: one is whole and the gap between a stream's chunks is at most this at p99.
#: The gap alone misses a server that falls behind at an even pace (its
#: streams arrive later and later, each chunk 50 ms after the one before),
#: so each step also shows the median delay (made by the model -> read), and
#: a capacity search also says what was carried *live*: delay p50 within
#: the same bound too.
BOUND_MS = 100.0


def carried(row: dict[str, Any]) -> bool:
    """Whether a :func:`paced` load was carried (:data:`BOUND_MS`)."""
    gap = row["gap_ms"]["p99"]
    return row["not_whole"] == 0 and gap is not None and gap <= BOUND_MS


def carried_live(row: dict[str, Any]) -> bool:
    """Carried, and the median delay within :data:`BOUND_MS` too."""
    delay = row["delay_ms"]["p50"]
    return carried(row) and delay is not None and delay <= BOUND_MS


def step_row(streams: int, row: dict[str, Any]) -> dict[str, Any]:
    """One step of a capacity search, as the table shows it."""
    return {
        "streams": streams,
        "whole": row["not_whole"] == 0,
        "gap_p99_ms": row["gap_ms"]["p99"],
        "delay_p50_ms": row["delay_ms"]["p50"],
        "live": carried_live(row),
        "cpu_us_per_chunk": row["cpu_us_per_chunk"],
    }


def paced_input(model: str, tokens: int) -> dict[str, Any]:
    """The input for *tokens* timestamps at 20 a second from *model*."""
    if model in (BATCH, BATCH_PREDICT):
        return {"prompt": "-", "max_tokens": tokens, "tokens_per_second": 20}
    input: dict[str, Any] = {"tokens": tokens, "interval_ms": 50}
    if model in GENERIC:  # bridge.v1's request as JSON: the input is a field
        input = {"input": input}
    return input


def in_turns(loads: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Each of *loads* (name: a paced() call) *rounds* times, in turns, for
    the CPU ratios between them: what the shared machine does meanwhile
    falls on all alike. Each name's result is its round of median CPU per
    chunk, with every round's CPU (``cpu_us_samples``)."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
    for _ in range(rounds):
        for name, load in loads.items():
            runs[name].append(load())
    out = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["cpu_us_per_chunk"])
        out[name] = {
            **ordered[len(ordered) // 2],
            "cpu_us_samples": [r["cpu_us_per_chunk"] for r in results],
            # A round with streams cut short is seen, whichever is the median.
            "not_whole": sum(r["not_whole"] for r in results),
            "short": [c for r in results for c in r.get("short", [])][:3],
            "errors": sorted({e for r in results for e in r["errors"]})[:3],
        }
    return out


def batch(
    urls: dict[str, str], pids: dict[str, int], streams: int, seconds: float, rounds: int,
    steps: tuple[int, ...], step_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """A batching model (bench/batch: demo/batch's step loop) at *streams*
    paced streams: the bridge reading it over Stream (one message a step),
    the bridge reading the same model over Predict (bench/batch-predict, a
    call a prediction), and the peer (Predict, as anyone writing it by hand
    would); server CPU per token of each, *rounds* times in turns. Then the
    capacity of the bridge over Stream and of the peer."""
    on_bridge, on_peer = (urls["bridge"], [pids["bridge"]]), (urls["peer"], [pids["peer"]])
    turns = in_turns(
        {
            "stream": lambda: paced(*on_bridge, streams, seconds, model=BATCH),
            "predict": lambda: paced(*on_bridge, streams, seconds, model=BATCH_PREDICT),
            "peer": lambda: paced(*on_peer, streams, seconds, model=BATCH),
        },
        rounds,
    )
    over_stream, over_predict, peer = turns["stream"], turns["predict"], turns["peer"]
    return {
        "streams": streams,
        "stream": over_stream,
        "predict": over_predict,
        "peer": peer,
        "stream_cpu_vs_peer": round(over_stream["cpu_us_per_chunk"] / peer["cpu_us_per_chunk"], 2),
        "predict_cpu_vs_peer": round(
            over_predict["cpu_us_per_chunk"] / peer["cpu_us_per_chunk"], 2
        ),
        "capacity": capacity(urls, pids, steps, step_seconds, model=BATCH),
    }


def shared(
    targets: dict[str, str], tmp: Path, memory_addr: str, memory_pid: int, smoke: bool
) -> dict[str, Any]:
    """The Redis store, in the same run as the in-memory one: one stream
    through it; 1,000 paced streams created on one bridge and read on
    another; ``--workers 2`` at 1,000 paced streams; and the in-memory
    bridge at the same paced load, for the ratios."""
    redis, url = start_redis(tmp)
    procs: list[Proc] = []
    try:
        a, a_addr = start_bridge(targets, tmp / "a", url)
        procs.append(a)
        b, b_addr = start_bridge(targets, tmp / "b", url)
        procs.append(b)
        w, w_addr = start_bridge(targets, tmp / "w", url, workers=2)
        procs.append(w)
        for addr in (a_addr, b_addr, w_addr):
            readers("sse", addr, ECHO, {"prompt": "warm up"}, 8)
        chunks, rounds = (2000, 1) if smoke else (200_000, 3)
        input = {"prompt": "-", "tokens": ["ab"], "repeat": chunks}
        ends: dict[str, list[float]] = {"direct": [], "memory": [], "redis": []}
        for _ in range(rounds):
            for name, out in (
                ("direct", lambda: readers("grpc", targets[ECHO], ECHO, input, 1)),
                ("memory", lambda: readers("sse", memory_addr, ECHO, input, 1)),
                ("redis", lambda: readers("sse", a_addr, ECHO, input, 1)),
            ):
                (stream,) = out()["streams"]
                assert stream["error"] is None and stream["chunks"] == chunks, (name, stream)
                ends[name].append(stream["end"])
        rates = {k: round(chunks / statistics.median(v)) for k, v in ends.items()}
        n, seconds, turns = (20, 1, 1) if smoke else (1000, 8, 3)
        workers = _workers(w.pid)
        same = in_turns(
            {
                "memory": lambda: paced(memory_addr, [memory_pid], n, seconds),
                "redis_same": lambda: paced(a_addr, [a.pid], n, seconds),
            },
            turns,
        )
        return {
            "one_stream": {"chunks": chunks, "chunks_per_s": rates,
                           "redis_vs_direct": round(rates["redis"] / rates["direct"], 2)},
            "streams": n,
            **same,
            "redis_vs_memory": round(
                same["redis_same"]["cpu_us_per_chunk"]
                / max(0.1, same["memory"]["cpu_us_per_chunk"]),  # (a smoke run's few ticks)
                2,
            ),
            "redis_other": paced(a_addr, [a.pid, b.pid], n, seconds, read=b_addr),
            "workers_2": paced(w_addr, [w.pid, *workers], n, seconds),
        }  # fmt: skip
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis.terminate()
        redis.wait()


def scaling(targets: dict[str, str], tmp: Path, smoke: bool) -> dict[str, Any]:
    """Workers under a CPU quota (bench/quota.py): each bridge process held
    to the same share of a core, the capacity (paced streams of
    ``bench/ticks`` whole at gap p99 <= 100 ms) of one in-memory process,
    and of 1, 2 and 3 workers on Redis; the backend, Redis and the readers
    unlimited."""
    from quota import quotas, unavailable

    if why := unavailable():
        return {"skipped": why}
    share, seconds, start, tries = (0.3, 1, 5, 1) if smoke else (QUOTA, 5, 60, 12)
    redis, url = start_redis(tmp)
    out: dict[str, Any] = {"share": share}
    try:
        for name, store, workers in (
            ("memory_1", None, 1), ("redis_1", url, 1), ("redis_2", url, 2), ("redis_3", url, 3),
        ):  # fmt: skip
            bridge, addr = start_bridge(targets, tmp / f"q-{name}", store, workers=workers)
            try:
                ready = re.compile(r"bridge listening on")
                while sum(bool(ready.search(line)) for line in bridge.lines) < workers:
                    assert bridge.wait_line(r"bridge listening on", 20), "a worker did not start"
                    time.sleep(0.05)  # the next worker's line
                pids = [bridge.pid, *(_workers(bridge.pid) if workers > 1 else [])]
                assert len(pids) == workers + (workers > 1), pids
                with quotas(share) as held:
                    for pid in pids:
                        held.hold(pid)
                    readers("sse", addr, ECHO, {"prompt": "warm up"}, 8 * workers)
                    out[name] = most_carried(addr, pids, start, seconds, tries)
                    out[name]["throttled_s"] = round(held.throttled_s(), 1)
            finally:
                bridge.stop()
            start = max(start, out[name]["streams"])  # more workers carry no less
    finally:
        redis.terminate()
        redis.wait()
    one = max(1, out["memory_1"]["streams"])
    for name in ("redis_1", "redis_2", "redis_3"):
        out[name + "_vs_memory"] = round(out[name]["streams"] / one, 2)
    return out


#: Under a quota, the streams of a capacity step start over this many
#: seconds, as clients arrive: started all at once, their creates (about 2 ms
#: of CPU each) take the first second of a 30% share, and the step measures
#: that burst instead of the streams.
RAMP_S = 2.0


def most_carried(
    addr: str, pids: list[int], start: int, seconds: float, tries: int
) -> dict[str, Any]:
    """The most paced streams of ``bench/ticks`` *addr* carries
    (:data:`BOUND_MS`), their starts spread over :data:`RAMP_S`: from
    *start* up by 1.4x until one fails, then halfway between the last
    carried and the first failed until they are within a tenth; at most
    *tries* steps."""
    top, failed, tried = 0, None, []
    streams = start
    while True:
        row = paced(addr, pids, streams, seconds, ramp=RAMP_S)
        tried.append(step_row(streams, row))
        if carried(row):
            top = streams
        else:
            failed = streams
        if failed is None:
            streams = int(streams * 1.4)
        elif failed - top > max(4, top // 10):
            streams = (top + failed) // 2
        else:
            break
        if len(tried) >= tries or (failed is not None and streams <= top):
            break
    return {"streams": top, "tried": tried}


def generic(
    targets: dict[str, str],
    addr: str,
    pid: int,
    chunks: int,
    rounds: int,
    streams: int,
    seconds: float,
) -> dict[str, Any]:
    """The same backend's Predict (a model offering Predict only) through
    the native path and through the generic one (its proto compiled by the
    bridge, its chunks read by the expression ``output.chunks[].text``):
    one fast stream, and paced
    streams' server CPU per chunk, taken in turns."""
    input = {"prompt": "-", "tokens": ["ab"], "repeat": chunks}
    ends: dict[str, list[float]] = {"direct": [], "native": [], "generic": []}
    for _ in range(rounds):
        for name, out in (
            ("direct", lambda: readers("grpc", targets[ECHO], ECHO, input, 1)),
            ("native", lambda: readers("sse", addr, GENERIC["generic/echo"], input, 1)),
            ("generic", lambda: readers("sse", addr, "generic/echo", {"input": input}, 1)),
        ):
            (stream,) = out()["streams"]
            assert stream["error"] is None and stream["chunks"] == chunks, (name, stream)
            ends[name].append(stream["end"])
    rates = {k: round(chunks / statistics.median(v)) for k, v in ends.items()}
    native = paced(addr, [pid], streams, seconds, model=GENERIC["generic/ticks"])
    made = paced(addr, [pid], streams, seconds, model="generic/ticks")
    return {
        "one_stream": {"chunks": chunks, "chunks_per_s": rates,
                       "generic_vs_native": round(rates["generic"] / rates["native"], 2)},
        "streams": streams,
        "native": native,
        "generic": made,
        "cpu_vs_native": round(made["cpu_us_per_chunk"] / native["cpu_us_per_chunk"], 2),
    }  # fmt: skip


def capacity(
    urls: dict[str, str],
    pids: dict[str, int],
    steps: tuple[int, ...],
    seconds: float,
    model: str = TICKS,
) -> dict:
    """The most paced streams (20 chunks/s) of *model* each server carries
    (:data:`BOUND_MS`): *steps* tried in order until one fails; and the
    most of those carried live."""
    out: dict[str, Any] = {"bound_ms": BOUND_MS}
    for name in ("bridge", "peer"):
        top, live, steps_run = 0, 0, []
        for streams in steps:
            row = paced(urls[name], [pids[name]], streams, seconds, model=model)
            steps_run.append(step_row(streams, row))
            if not carried(row):
                break
            top = streams
            if all(t["live"] for t in steps_run):
                live = streams
        out[name] = {"streams": top, "live": live, "tried": steps_run}
    return out


def first_token(urls: dict[str, str], targets: dict[str, str], trials: int) -> dict:
    input = {"tokens": 1, "interval_ms": 0}
    each = {"ticks": True, "sequential": True}
    firsts = {
        "direct": readers("grpc", targets[TICKS], TICKS, input, trials, **each),
        "bridge": readers("sse", urls["bridge"], TICKS, input, trials, **each),
        "peer": readers("sse", urls["peer"], TICKS, input, trials, **each),
    }
    out = {k: ms([s["first"] for s in v["streams"] if s["first"] is not None])
           for k, v in firsts.items()}  # fmt: skip
    out["bridge_added_p50_ms"] = round(out["bridge"]["p50"] - out["direct"]["p50"], 2)
    out["bridge_added_p99_ms"] = round(out["bridge"]["p99"] - out["direct"]["p99"], 2)
    return out


def _http(addr: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, data, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _open_stream(addr: str, path: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def cancel_latency(addr: str, backend: Proc, trials: int) -> dict:
    """HTTP cancel sent -> the model's generator closed (its own clock line)."""
    latencies = []
    for i in range(trials):
        key = f"c{i}-{os.getpid()}"
        input = {"key": key, "tokens": 10**9, "interval_ms": 10}
        status, body = _http(addr, "POST", f"/v1/models/{TICKS}/predictions", {"input": input})
        assert status == 201, body
        prediction = json.loads(body)
        with _open_stream(addr, prediction["urls"]["stream"].split(addr, 1)[1]) as sock:
            seen = b""
            while b"event: output" not in seen:  # running: the first chunk came
                seen += sock.recv(65536)
            sent = time.monotonic()
            status, _ = _http(addr, "POST", f"/v1/predictions/{prediction['id']}/cancel")
            assert status == 200
        line = backend.wait_line(rf"cancelled {re.escape(key)} (\S+)", 10)
        assert line is not None, f"the backend never saw cancel {key}"
        latencies.append(float(line[1]) - sent)
    return ms(latencies)


def _active(addr: str, gauge: str) -> float:
    _, text = _http(addr, "GET", "/metrics")
    return float(re.search(rf"^{gauge} (\S+)$", text.decode(), re.M)[1])


def _settled_rss(pid: int, timeout: float = 10.0) -> int:
    """RSS once it stops moving (within 64 KiB over half a second)."""
    last, deadline = _rss(pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _rss(pid)
        if abs(now - last) < 65536:
            return now
        last = now
    return last


def memory(targets: dict[str, str], tmp: Path, chunks: int, idle: int, stalled: int) -> dict:
    bridge, addr = start_bridge(targets, tmp)
    sockets: list[socket.socket] = []
    try:
        _http(addr, "GET", f"/v1/models/{ECHO}")  # described, warm
        _http(addr, "GET", f"/v1/models/{TICKS}")
        # One prediction first: what the first one costs once (jsonschema-rs
        # sets itself up with 4.7 MB) is not what each chunk costs.
        _http(addr, "POST", f"/v1/models/{ECHO}/predictions", {"input": {"prompt": "warm"}})
        while _active(addr, "bridge_predictions_active"):
            time.sleep(0.1)
        before = _settled_rss(bridge.pid)
        status, body = _http(
            addr,
            "POST",
            f"/v1/models/{ECHO}/predictions",
            {"input": {"prompt": "-", "tokens": ["ab"], "repeat": chunks}},
        )
        assert status == 201, body
        long = json.loads(body)
        while _active(addr, "bridge_predictions_active"):
            time.sleep(0.1)
        retained = _settled_rss(bridge.pid)
        per_chunk = (retained - before) / chunks

        status, body = _http(
            addr,
            "POST",
            f"/v1/models/{TICKS}/predictions",
            {"input": {"tokens": 1, "interval_ms": 600_000}},
        )
        path = json.loads(body)["urls"]["stream"].split(addr, 1)[1]
        before = _settled_rss(bridge.pid)
        sockets += [_open_stream(addr, path) for _ in range(idle)]
        while _active(addr, "bridge_stream_clients_active") < idle:
            time.sleep(0.1)
        per_idle = (_settled_rss(bridge.pid) - before) / idle

        before = _rss(bridge.pid)
        path = long["urls"]["stream"].split(addr, 1)[1]
        sockets += [_open_stream(addr, path, rcvbuf=4096) for _ in range(stalled)]
        time.sleep(1.0)
        per_stalled = (_settled_rss(bridge.pid) - before) / stalled
    finally:
        for sock in sockets:
            sock.close()
        bridge.stop()
    return {
        "retained_chunks": chunks,
        "rss_per_retained_chunk_bytes": round(per_chunk, 1),
        "rss_per_idle_stream_kib": round(per_idle / 1024, 1),
        "rss_per_stalled_late_reader_kib": round(per_stalled / 1024, 1),
    }


# -- the report ------------------------------------------------------------


def tried(side: dict, cpu: bool = False) -> str:
    """A capacity search's steps: streams, then the gap p99 and the delay
    p50 in ms at each (with *cpu*, the server's µs per chunk too)."""
    return ", ".join(
        f"{t['streams']:,}: {t['gap_p99_ms']} / {t['delay_p50_ms']}"
        + ("" if t["whole"] else " not whole")
        + (f" ({t['cpu_us_per_chunk']} µs)" if cpu else "")
        for t in side["tried"]
    )


#: What a capacity row says it counts.
WHOLE = f"paced streams (20 chunks/s) whole with gap p99 ≤ {BOUND_MS:g} ms"
STEPS = "(each step: gap p99 / delay p50, ms)"
CARRIED = f"{WHOLE}; live: delay p50 ≤ {BOUND_MS:g} ms too {STEPS}"


def most(side: dict[str, Any]) -> str:
    """A capacity search's result: the most carried, and of those live."""
    live = side.get("live")
    return f"{side['streams']:,}" + ("" if live is None else f" (live: {live:,})")


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(r: dict[str, Any]) -> str:
    one = r["one_stream"]
    lines = [
        f"`make bench`: {r['machine']}; everything in one run, ratios against it.",
        "",
        "| | direct gRPC drain (the limit) | this bridge | the FastAPI peer |",
        "|---|---|---|---|",
    ]
    for o in filter(None, (one, r.get("one_stream_long"))):
        rate = o["chunks_per_s"]
        lines.append(
            f"| one stream, {o['chunks']:,} chunks of `demo/echo`: chunks/s | "
            f"{rate['direct']:,} | {rate['bridge']:,} ({o['bridge_vs_direct']}x the limit) | "
            f"{rate['peer']:,} (the bridge is {o['bridge_vs_peer']}x the peer) |"
        )
        lines.append(
            f"| the same, created then read from `urls.stream` (Replicate's way): chunks/s | "
            f"{rate['direct']:,} | {rate['bridge_get']:,} ({o['bridge_get_vs_direct']}x the "
            "limit) | - |"
        )
    if oa := r.get("openai_stream"):
        rate = oa["chunks_per_s"]
        lines.append(
            f"| one stream, {oa['chunks']:,} one-character chunks, as OpenAI's chat completion "
            f"chunks: chunks/s | {rate['direct']:,} | {rate['openai']:,} "
            f"({oa['openai_vs_direct']}x the limit) | - |"
        )
    one = r.get("one_stream_long", one)
    for key in ("streams_100", "streams_1000"):
        m = r.get(key)
        if not m:
            continue
        b, p = m["bridge"], m["peer"]
        n = f"{m['streams']:,} streams at 20 chunks/s"

        def fmt(d: dict) -> str:
            return f"{d['p50']} / {d['p99']} / {d['max']}"

        lines += [
            f"| {n}: gap between chunks p50 / p99 / max, ms (50 ideal) | - | "
            f"{fmt(b['gap_ms'])} | {fmt(p['gap_ms'])} |",
            f"| {n}: delay p50 / p99 / max, ms | - | {fmt(b['delay_ms'])} | {fmt(p['delay_ms'])} |",
            f"| {n}: streams not whole; server CPU s, peak RSS MiB; readers' CPU s | - | "
            f"{b['not_whole']}; {b['server_cpu_s']}, {b['server_peak_rss_mib']}; "
            f"{b['reader_cpu_s']} | {p['not_whole']}; {p['server_cpu_s']}, "
            f"{p['server_peak_rss_mib']}; {p['reader_cpu_s']} |",
        ]
        if g := m.get("bridge_get"):
            lines += [
                f"| {n}, created then read from `urls.stream`: gap p50 / p99 / max, ms | - | "
                f"{fmt(g['gap_ms'])} | - |",
                f"| {n}, created then read from `urls.stream`: not whole; server CPU s | - | "
                f"{g['not_whole']}; {g['server_cpu_s']} | - |",
            ]
    if sh := r.get("shared"):
        o, n = sh["one_stream"], f"{sh['streams']:,} streams at 20 chunks/s"
        lines.append(
            f"| shared store (Redis): one stream, {o['chunks']:,} chunks: chunks/s | "
            f"{o['chunks_per_s']['direct']:,} | {o['chunks_per_s']['redis']:,} "
            f"({o['redis_vs_direct']}x the limit; in memory {o['chunks_per_s']['memory']:,}) | - |"
        )
        for key, what in (
            ("memory", "in memory, one process"),
            ("redis_same", "Redis store, read on the bridge running them"),
            ("redis_other", "Redis store, created on one bridge, read on another (CPU: both)"),
            ("workers_2", "`--workers 2` on Redis (CPU: parent and workers)"),
        ):
            row = sh[key]
            lines.append(
                f"| {n}, {what}: gap p50 / p99 ms; not whole; server CPU µs per chunk | - | "
                f"{row['gap_ms']['p50']} / {row['gap_ms']['p99']}; {row['not_whole']}; "
                f"{row['cpu_us_per_chunk']}{_samples(row)} | - |"
            )
    if ge := r.get("generic"):
        lines += generic_rows(ge)
    if ba := r.get("batch"):
        lines += batch_rows(ba)
    if sc := r.get("scaling"):
        lines += scaling_rows(sc)
    if cap := r.get("capacity"):
        lines.append(
            f"| capacity: most {CARRIED} | - | "
            f"{most(cap['bridge'])}: {tried(cap['bridge'])} | "
            f"{most(cap['peer'])}: {tried(cap['peer'])} |"
        )
    t = r["first_token"]
    c, mem = r["cancel_ms"], r["memory"]
    lines += [
        f"| time to first chunk p50 / p99, ms | {t['direct']['p50']} / {t['direct']['p99']} | "
        f"{t['bridge']['p50']} / {t['bridge']['p99']} (+{t['bridge_added_p50_ms']} p50) | "
        f"{t['peer']['p50']} / {t['peer']['p99']} |",
        f"| cancel to the model seeing it p50 / p99, ms | - | {c['p50']} / {c['p99']} | - |",
        f"| RSS per retained 2-character chunk ({mem['retained_chunks']:,} retained) | - | "
        f"{mem['rss_per_retained_chunk_bytes']} bytes | - |",
        f"| RSS per idle open stream | - | {mem['rss_per_idle_stream_kib']} KiB | - |",
        f"| RSS per stalled late reader of that prediction | - | "
        f"{mem['rss_per_stalled_late_reader_kib']} KiB | - |",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    targets = [
        (f"one stream ({one['chunks']:,} chunks) ≥ 0.9x the direct rate",
         f"{one['bridge_vs_direct']}x",
         one["bridge_vs_direct"] >= 0.9),
        (f"one stream ({one['chunks']:,} chunks) ≥ 1.5x the peer", f"{one['bridge_vs_peer']}x",
         one["bridge_vs_peer"] >= 1.5),
        (f"one stream ({one['chunks']:,} chunks), created then read from urls.stream, "
         "≥ 0.9x the direct rate", f"{one['bridge_get_vs_direct']}x",
         one["bridge_get_vs_direct"] >= 0.9),
    ]  # fmt: skip
    if m := r.get("streams_1000"):
        b, p = m["bridge"]["gap_ms"], m["peer"]["gap_ms"]
        targets.append((
            "1,000 streams whole, gap p99 ≤ 100 ms and below the peer's",
            f"{m['bridge']['not_whole']} not whole, {b['p99']} ms vs {p['p99']} ms",
            m["bridge"]["not_whole"] == 0 and b["p99"] <= 100 and b["p99"] < p["p99"],
        ))  # fmt: skip
    if ge := r.get("generic"):
        targets += generic_targets(ge)
    if ba := r.get("batch"):
        targets += batch_targets(ba)
    if sh := r.get("shared"):
        in_memory, on_redis = sh["memory"]["cpu_us_per_chunk"], sh["redis_same"]["cpu_us_per_chunk"]
        targets.append((
            f"the Redis path, unloaded: CPU per paced chunk ≤ 1.15x in memory "
            f"({sh['streams']:,} streams)",
            f"{sh['redis_vs_memory']}x ({on_redis} vs {in_memory} µs)",
            sh["redis_vs_memory"] <= 1.15,
        ))  # fmt: skip
    if (sc := r.get("scaling")) and "skipped" not in sc:
        targets += scaling_targets(sc)
    if cap := r.get("capacity"):
        b, p = cap["bridge"]["streams"], cap["peer"]["streams"]
        targets.append(
            ("capacity: the bridge carries at least the peer's paced streams",
             f"{b:,} vs {p:,}", b >= p)
        )  # fmt: skip
    targets += [
        ("added time to first chunk p50 ≤ 3 ms", f"{t['bridge_added_p50_ms']} ms",
         t["bridge_added_p50_ms"] <= 3),
        ("cancel reaches the model p99 ≤ 50 ms", f"{c['p99']} ms", c["p99"] <= 50),
        ("≤ 100 bytes per retained 2-character chunk",
         f"{mem['rss_per_retained_chunk_bytes']} bytes",
         mem["rss_per_retained_chunk_bytes"] <= 100),
        ("≤ 1 MiB per stalled late reader", f"{mem['rss_per_stalled_late_reader_kib']} KiB",
         mem["rss_per_stalled_late_reader_kib"] <= 1024),
        ("≤ 40 KiB per idle open stream", f"{mem['rss_per_idle_stream_kib']} KiB",
         mem["rss_per_idle_stream_kib"] <= 40),
    ]  # fmt: skip
    lines += [f"| {name} | {value} | {_mark(ok)} |" for name, value, ok in targets]
    return "\n".join(lines) + "\n"


def _samples(row: dict[str, Any]) -> str:
    """A load measured in turns (:func:`in_turns`): its rounds' CPU, of
    which the row shows the median."""
    samples = row.get("cpu_us_samples", [])
    return f" (median of {' / '.join(map(str, samples))})" if len(samples) > 1 else ""


def batch_rows(ba: dict[str, Any]) -> list[str]:
    n = f"{ba['streams']:,} paced streams of a batching model (`demo/batch`'s step loop)"
    rows = []
    for key, what in (("stream", "over Stream"), ("predict", "over Predict")):
        row, peer = ba[key], ba["peer"]
        rows.append(
            f"| {n}, {what}: server CPU µs per token; gap p99 ms; not whole | - | "
            f"{row['cpu_us_per_chunk']}{_samples(row)} ({ba[key + '_cpu_vs_peer']}x the peer); "
            f"{row['gap_ms']['p99']}; {row['not_whole']} | {peer['cpu_us_per_chunk']}"
            f"{_samples(peer)}; {peer['gap_ms']['p99']}; {peer['not_whole']} |"
        )
    cap = ba["capacity"]
    rows.append(
        f"| capacity, a batching model over Stream: {CARRIED} | - | "
        f"{most(cap['bridge'])}: {tried(cap['bridge'])} | "
        f"{most(cap['peer'])}: {tried(cap['peer'])} |"
    )
    return rows


def batch_targets(ba: dict[str, Any]) -> list[tuple[str, str, bool]]:
    cap = ba["capacity"]
    b, p = cap["bridge"]["streams"], cap["peer"]["streams"]
    return [
        ("a batching model over Stream: CPU per token ≤ 0.5x the peer's",
         f"{ba['stream_cpu_vs_peer']}x", ba["stream_cpu_vs_peer"] <= 0.5),
        ("the same over Predict: CPU per token ≤ the peer's",
         f"{ba['predict_cpu_vs_peer']}x", ba["predict_cpu_vs_peer"] <= 1.0),
        ("a batching model over Stream: capacity ≥ 2x the peer's", f"{b:,} vs {p:,}",
         b > 0 and b >= 2 * p),
    ]  # fmt: skip


def scaling_rows(sc: dict[str, Any]) -> list[str]:
    if why := sc.get("skipped"):
        return [f"| workers under a CPU quota | - | not measured: {why} | - |"]
    rows = []
    for name, what in (
        ("memory_1", "one process in memory"),
        ("redis_1", "one process on Redis"),
        ("redis_2", "`--workers 2` on Redis"),
        ("redis_3", "`--workers 3` on Redis"),
    ):
        row = sc[name]
        ratio = f", {sc[name + '_vs_memory']}x one in memory" if name != "memory_1" else ""
        rows.append(
            f"| capacity under {sc['share']:.0%} of a core per bridge process, {what}: {WHOLE}"
            f" {STEPS} (and server CPU µs per chunk); seconds held back | - | "
            f"{row['streams']:,}{ratio} ({tried(row, cpu=True)}); {row['throttled_s']} | - |"
        )
    return rows


def scaling_targets(sc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    two, three = sc["redis_2_vs_memory"], sc["redis_3_vs_memory"]
    return [
        ("under a per-process quota, 2 workers on Redis ≥ 1.8x one process in memory",
         f"{two}x", two >= 1.8),
        ("under a per-process quota, 3 workers on Redis ≥ 2.6x one process in memory",
         f"{three}x", three >= 2.6),
    ]  # fmt: skip


def generic_rows(ge: dict[str, Any]) -> list[str]:
    o, n = ge["one_stream"], f"{ge['streams']:,} streams at 20 chunks/s"
    rate = o["chunks_per_s"]
    lines = [
        f'| a bridged service (the same Predict by its proto, `text = "output.chunks[].text"`):'
        f" one stream, {o['chunks']:,} chunks: chunks/s | {rate['direct']:,} | "
        f"{rate['generic']:,} ({o['generic_vs_native']}x the native path's {rate['native']:,})"
        " | - |"
    ]
    for key, what in (("native", "the native path"), ("generic", "a bridged service")):
        row = ge[key]
        lines.append(
            f"| {n}, {what}: gap p50 / p99 ms; not whole; server CPU µs per chunk | - | "
            f"{row['gap_ms']['p50']} / {row['gap_ms']['p99']}; {row['not_whole']}; "
            f"{row['cpu_us_per_chunk']} | - |"
        )
    return lines


def generic_targets(ge: dict[str, Any]) -> list[tuple[str, str, bool]]:
    o = ge["one_stream"]
    return [
        (f"a bridged service's one stream ({o['chunks']:,} chunks) ≥ 0.5x the native path's",
         f"{o['generic_vs_native']}x", o["generic_vs_native"] >= 0.5),
        (f"a bridged service's CPU per chunk at {ge['streams']:,} paced streams ≤ 1.3x the "
         "native path's", f"{ge['cpu_vs_native']}x", ge["cpu_vs_native"] <= 1.3),
    ]  # fmt: skip


#: What a run measures, by --only's names.
ALL_PARTS = [
    "one",
    "streams",
    "capacity",
    "first",
    "cancel",
    "memory",
    "shared",
    "generic",
    "batch",
    "scaling",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long, tiny sizes")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument(
        "--only",
        help=f"comma-separated: {','.join(ALL_PARTS)} (default: all)",
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else set(ALL_PARTS)
    smoke = args.smoke
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d')}"
        + (" (smoke run: sizes too small to mean anything)" if smoke else ""),
    }
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            backend, targets = start_backend()
            procs.append(backend)
            bridge, bridge_addr = start_bridge(targets, Path(tmp))
            procs.append(bridge)
            peer, peer_addr = start_peer(targets)
            procs.append(peer)
            urls = {"bridge": bridge_addr, "peer": peer_addr}
            pids = {"bridge": bridge.pid, "peer": peer.pid}
            for addr in urls.values():  # connected, described, warm
                readers("sse", addr, ECHO, {"prompt": "warm up"}, 4)

            def step(name: str) -> None:
                print(f"bench: {name}", file=sys.stderr, flush=True)

            if "one" in only:
                step("one stream")
                results["one_stream"] = one_stream(
                    urls, targets, 2000 if smoke else 20000, 1 if smoke else 5
                )
                if not smoke:
                    # At a million chunks/s, 20,000 chunks last 20 ms: mostly
                    # request setup (measured apart, as time to first chunk).
                    results["one_stream_long"] = one_stream(urls, targets, 200_000, 5)
                step("one stream, OpenAI's chat completion")
                results["openai_stream"] = openai_stream(
                    urls, targets, 2000 if smoke else 200_000, 1 if smoke else 5
                )
            for n in ((10,) if smoke else (100, 1000)) if "streams" in only else ():
                step(f"{n} streams")
                results[f"streams_{100 if smoke else n}"] = many_streams(
                    urls, pids, n, 1 if smoke else 8
                )
            if "capacity" in only:
                step("capacity")
                results["capacity"] = capacity(
                    urls, pids, (5, 10) if smoke else (250, 500, 1000, 1500, 2000),
                    1 if smoke else 5,
                )  # fmt: skip
            if "first" in only:
                step("time to first chunk")
                results["first_token"] = first_token(urls, targets, 5 if smoke else 100)
            if "cancel" in only:
                step("cancel")
                results["cancel_ms"] = cancel_latency(bridge_addr, backend, 3 if smoke else 50)
            if "generic" in only:
                step("a bridged service (the generic path) beside the native path")
                results["generic"] = generic(
                    targets, bridge_addr, bridge.pid,
                    *((2000, 1, 20, 1) if smoke else (200_000, 5, 1000, 8)),
                )  # fmt: skip
            if "batch" in only:
                step("a batching model: over Stream, over Predict, and the peer")
                sizes = (
                    (20, 1, 1, (5, 10), 1)
                    if smoke
                    else (1000, 8, 3, (250, 500, 1000, 1500, 2000, 3000), 5)
                )
                results["batch"] = batch(urls, pids, *sizes)
            if "shared" in only:
                step("shared store (Redis) and --workers 2")
                results["shared"] = shared(targets, Path(tmp), bridge_addr, bridge.pid, smoke)
            if "scaling" in only:
                step(f"workers under {QUOTA:.0%} of a core each")
                results["scaling"] = scaling(targets, Path(tmp), smoke)
            if "memory" in only:
                step("memory")
                results["memory"] = memory(
                    targets, Path(tmp), *((2000, 20, 2) if smoke else (200_000, 500, 10))
                )
        finally:
            for proc in reversed(procs):
                proc.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(results) if only >= {"one", "first", "cancel", "memory"} else ""
    (args.out / "results.md").write_text(table)
    print(table or json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
