"""Lean readers for the bench, run as processes of their own.

Each reads N streams at once (or one after another with ``--sequential``)
and prints one JSON object: per stream whether it was whole, its time to
first chunk, and for ``--ticks`` streams the delay of every chunk (receive
time minus the monotonic time the backend wrote into it) and the gap
between consecutive chunks; plus the process's own CPU seconds, so a run
can show that readers were not the bottleneck.

* ``sse``: raw sockets, an HTTP/1.0 request (so the body comes with no
  chunked framing to undo), a regex over the bytes; no HTTP library.
* ``grpc``: grpc.aio straight to the backend, the limit any bridge has.

    python bench/readers.py sse --addr 127.0.0.1:8000 --model bench/ticks \\
        --input '{"tokens": 20}' --streams 100 --ticks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from typing import Any

TICK = re.compile(rb"(\d+\.\d{6}) ")
DONE = b"event: done"  # sse-starlette frames with CRLF, the bridge with LF
ERROR = b"event: error"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Stream:
    """What one stream saw."""

    def __init__(self, ticks: bool, count: bytes) -> None:
        self.ticks = ticks
        self.count = count
        self.chunks = 0
        self.started = time.monotonic()
        self.first: float | None = None
        self.ended: float | None = None
        self.last: float | None = None
        self.delays: list[float] = []
        self.gaps: list[float] = []
        self.error: str | None = None

    def chunks_in(self, data: bytes, now: float) -> int:
        """Count (and for ticks, time) the chunks in *data*; returns the
        offset up to which *data* was consumed."""
        if not self.ticks:
            self.chunks += data.count(self.count)
            return max(0, len(data) - len(self.count) + 1)
        end = 0
        for match in TICK.finditer(data):
            self.delays.append(now - float(match[1]))
            if self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
            self.chunks += 1
            end = match.end()
        return end

    def seen(self, now: float) -> None:
        if self.first is None and self.chunks:
            self.first = now - self.started

    def result(self) -> dict[str, Any]:
        return {
            "chunks": self.chunks,
            "first": self.first,
            "end": None if self.ended is None else self.ended - self.started,
            "error": self.error,
            "delays": [round(d, 6) for d in self.delays],
            "gaps": [round(g, 6) for g in self.gaps],
        }


class SSEReader(asyncio.Protocol):
    def __init__(
        self, request: bytes, stream: Stream, done: asyncio.Future[None], end: bytes = DONE
    ) -> None:
        self.request = request
        self.stream = stream
        self.done = done
        self.end = end  # what says the stream is over
        self.head = b""
        self.body = False
        self.tail = b""
        self.failure: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.request.startswith(b"POST"):  # timed from the request (a GET: from the create)
            self.stream.started = time.monotonic()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head[9:12]
            if not status.startswith(b"2"):
                self._finish(f"HTTP {status.decode()}")
                return
            self.body = True
            data, self.head = self.head[end + 4 :], b""
        buffer = self.tail + data
        consumed = self.stream.chunks_in(buffer, now)
        self.stream.seen(now)
        failed = buffer.find(ERROR)
        if failed >= 0 and self.failure is None:  # the prediction failed: what it said
            at = buffer.find(b"data: ", failed)
            said = buffer[at + 6 : at + 206] if at >= 0 else b"?"
            self.failure = "error event: " + said.partition(b"\n")[0].decode(errors="replace")
        if self.end in buffer:
            self.stream.ended = now
            self._finish(self.failure)
        self.tail = buffer[consumed:][-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(self.failure or f"connection lost before done: {exc}")

    def _finish(self, error: str | None) -> None:
        if not self.done.done():
            self.stream.error = error
            self.done.set_result(None)
            self.transport.close()


async def read_sse(args: argparse.Namespace) -> list[Stream]:
    """The streaming create (``Accept: text/event-stream`` on the POST), or
    with ``--get`` Replicate's way: create, then GET ``urls.stream`` (timed
    from the create)."""
    host, port = args.addr.rsplit(":", 1)
    # With --read-addr, urls.stream is read from that server (another bridge
    # sharing the store).
    read_host, read_port = (args.read_addr or args.addr).rsplit(":", 1)
    input = json.loads(args.input)
    body = json.dumps({"input": input}).encode()
    accept = "" if args.get else "Accept: text/event-stream\r\n"
    path, end = f"/v1/models/{args.model}/predictions", DONE
    if args.openai:  # OpenAI's streamed chat completion; the model's other inputs beside
        said = [{"role": "user", "content": input.pop("prompt", "-")}]
        body = json.dumps({"model": args.model, "stream": True, "messages": said, **input}).encode()
        path, end = "/v1/chat/completions", b"data: [DONE]"
    create = (
        f"POST {path} HTTP/1.0\r\nHost: {host}\r\n"
        f"{accept}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()

    async def stream_path() -> str:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(create)
        answer = await reader.read()  # HTTP/1.0: the server closes after it
        writer.close()
        url = json.loads(answer.partition(b"\r\n\r\n")[2])["urls"]["stream"]
        return "/" + url.split("/", 3)[3]

    async def one() -> Stream:
        stream = Stream(args.ticks, args.count.encode())
        done = loop.create_future()
        try:
            request = create
            if args.get:
                path = await stream_path()
                request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
            await loop.create_connection(
                lambda: SSEReader(request, stream, done, end), read_host, int(read_port)
            )
            await done
        except OSError as exc:
            stream.error = f"connect: {exc}"
        return stream

    return await _run(one, args)


async def read_grpc(args: argparse.Namespace) -> list[Stream]:
    import grpc

    from bridge._proto.v1 import predictor_pb2, predictor_pb2_grpc

    request = predictor_pb2.PredictRequest(id="direct")
    request.input.update(json.loads(args.input))
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = predictor_pb2_grpc.PredictorStub(channel)
        await channel.channel_ready()

        async def one() -> Stream:
            stream = Stream(args.ticks, args.count.encode())
            try:
                async for message in stub.Predict(request):
                    now = time.monotonic()
                    # The least any consumer does: take each chunk's text.
                    text = "".join([c.text for c in message.output.chunks]).encode()
                    stream.chunks_in(text, now)
                    stream.seen(now)
                stream.ended = time.monotonic()
            except grpc.RpcError as exc:
                stream.error = f"gRPC {exc.code().name}"
            return stream

        return await _run(one, args)


async def _run(one: Any, args: argparse.Namespace) -> list[Stream]:
    if args.sequential:
        return [await one() for _ in range(args.streams)]
    if not args.ramp:
        return list(await asyncio.gather(*(one() for _ in range(args.streams))))

    async def later(i: int) -> Stream:  # the streams' starts spread evenly over the ramp
        await asyncio.sleep(i * args.ramp / args.streams)
        return await one()

    return list(await asyncio.gather(*(later(i) for i in range(args.streams))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["sse", "grpc"])
    parser.add_argument("--addr", help="host:port of the HTTP server (sse)")
    parser.add_argument("--target", help="host:port of the gRPC backend (grpc)")
    parser.add_argument("--model", default="bench/ticks")
    parser.add_argument("--input", default="{}", help="the prediction's input, JSON")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--sequential", action="store_true")
    parser.add_argument("--ramp", type=float, default=0.0, help="start the streams over S seconds")
    parser.add_argument("--ticks", action="store_true", help="chunks are timestamps")
    parser.add_argument("--count", default="ab", help="the chunk to count (not --ticks)")
    parser.add_argument("--get", action="store_true", help="create, then GET urls.stream")
    parser.add_argument("--read-addr", help="with --get: read urls.stream from this server")
    parser.add_argument("--openai", action="store_true", help="OpenAI's chat completion stream")
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    cpu = _cpu()
    started = time.monotonic()
    streams = run(read_sse(args) if args.kind == "sse" else read_grpc(args))
    out = {
        "wall": time.monotonic() - started,
        "cpu": _cpu() - cpu,
        "streams": [s.result() for s in streams],
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
