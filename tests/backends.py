"""Backends that misbehave on purpose, and a demo backend in a process of
its own (so that a test can kill it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import trio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridge._proto.v1 import predictor_pb2 as pb
from bridge._proto.v1 import predictor_pb2_grpc
from bridge.backends import wire

ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


async def read_until(
    stream: trio.abc.ReceiveStream,
    pattern: bytes,
    seen: list[bytes] | None = None,
    within: float = 60,
) -> re.Match[bytes]:
    """Read a process's output until what it wrote matches *pattern* (what
    was read is kept in *seen*); fails if it ends first, or after *within* s."""
    seen = [] if seen is None else seen
    with trio.fail_after(within):
        while not (found := re.search(pattern, b"".join(seen))):
            data = await stream.receive_some()
            assert data, b"".join(seen).decode(errors="replace")
            seen.append(data)
    return found


class Misbehaving(predictor_pb2_grpc.PredictorServicer):
    """``behave`` in the input says how: ``hang`` (send nothing), ``one then
    hang`` (one chunk, then nothing), or a gRPC status code name to fail with
    after one chunk."""

    async def Describe(self, request: Any, context: Any) -> Any:
        info = wire.ModelInfo(
            "test/misbehaving",
            "v1",
            {"type": "object"},
            {"type": "array", "x-cog-array-type": "iterator"},
        )
        return wire.model_info_to_pb(info)

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        behave = wire.request_input(request)["behave"]
        if behave == "hang":
            await asyncio.sleep(3600)
        yield wire.output_response(["one "])
        if behave == "one then hang":
            await asyncio.sleep(3600)
        await context.abort(grpc.StatusCode[behave], f"told to fail with {behave}")


class RawServer:
    """Any ``PredictorServicer`` (or a generic handler, whose messages are
    bytes as sent) on a real grpc.aio server on 127.0.0.1:0,
    run from a thread with its own asyncio loop::

        with RawServer(Misbehaving()) as server:
            server.target
    """

    def __init__(
        self,
        servicer: predictor_pb2_grpc.PredictorServicer | grpc.GenericRpcHandler | None,
        *,
        health: bool = False,
        address: str = "127.0.0.1:0",
        reflect: tuple[tuple[str, ...], Any] | None = None,
        interceptors: tuple[grpc.aio.ServerInterceptor, ...] = (),
    ) -> None:
        self.servicer = servicer
        self.address = address
        self.target = ""
        self._started = threading.Event()
        self._with_health = health
        #: Server reflection of these service names, over this descriptor
        #: pool (None: protobuf's default one).
        self._reflect = reflect
        self._interceptors = interceptors
        #: With *health*: its grpc.health.v1 service (SERVING; see set_health).
        self.health: Any = None

    def set_health(self, status: str, service: str = "") -> None:
        """Say *status* (``SERVING``, ``NOT_SERVING``) for *service* on
        grpc.health.v1 (a server made with ``health=True``)."""
        value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        done = threading.Event()

        async def set_it() -> None:
            await self.health.set(service, value)
            done.set()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(set_it()))
        done.wait(5)

    def __enter__(self) -> RawServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),))
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = grpc.aio.server(interceptors=self._interceptors)
        if isinstance(self.servicer, grpc.GenericRpcHandler):  # bytes as it sends them
            server.add_generic_rpc_handlers((self.servicer,))
        elif self.servicer is not None:
            predictor_pb2_grpc.add_PredictorServicer_to_server(self.servicer, server)
        if self._with_health:
            self.health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if self._reflect is not None:
            names, pool = self._reflect
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server, pool)
        host = self.address.rpartition(":")[0]
        self.target = f"{host}:{server.add_insecure_port(self.address)}"
        await server.start()
        self._started.set()
        await self._stop.wait()
        await server.stop(None)


class BackendProcess:
    """``python -m bridge demo-backend --model demo/echo`` as a process
    (*predict_only*: offering the bridge Predict, not Stream)."""

    def __init__(self, port: int = 0, *, predict_only: bool = False) -> None:
        self.port = port
        self.predict_only = predict_only
        self.process: trio.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> BackendProcess:
        self.process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "bridge",
                "demo-backend",
                "--stop-on-eof",  # with stdin a pipe: it ends with this test run
                "--model",
                "demo/echo",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *["--predict-only"] * self.predict_only,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
        )
        found = await read_until(self.process.stdout, rb"listening on 127\.0\.0\.1:(\d+)\n")
        self.port = int(found[1])
        return self

    async def kill(self) -> None:
        """Kill it (SIGKILL: no goodbye to its clients) and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


SCRIPTED_INFO = wire.ModelInfo(
    "test/scripted", "v1", {"type": "object"}, {"type": "array", "x-cog-array-type": "iterator"}
)


class Failed(Exception):
    """A script's ``fail``."""


class Scripted(predictor_pb2_grpc.PredictorServicer):
    """A backend that does what its input says (the script tests/fakes.py's
    FakeBackend runs in Trio too): ``log`` a line, then each of ``chunks``
    as a message, ``gap_ms`` before each; then ``metrics``; then ``hang``
    until cancelled, or ``fail`` with that message. It notes the ids of
    the calls that were cancelled.

    *multiplexed*: its Describe offers Stream, which it serves by hand (a
    second implementation of bridge.v1's Stream beside the SDK's: one
    message per step, no batching), and it refuses Predict unless
    *predict_too*."""

    def __init__(self, *, multiplexed: bool = False, predict_too: bool = False) -> None:
        self.cancelled: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.multiplexed = multiplexed
        self.predict_too = predict_too

    def cancelled_event(self, prediction_id: str) -> threading.Event:
        with self._lock:
            return self.cancelled.setdefault(prediction_id, threading.Event())

    async def Describe(self, request: Any, context: Any) -> Any:
        response = wire.model_info_to_pb(SCRIPTED_INFO)
        response.multiplexed = self.multiplexed
        return response

    async def _run(self, request: Any) -> AsyncIterator[Any]:
        """The script's messages; raises Failed at a ``fail``."""
        script = wire.request_input(request)
        # Cancelled in an await (CancelledError) or at a yield (the
        # generator is closed): either way it did not get to the end.
        completed = False
        try:
            if "log" in script:
                yield wire.log_response(script["log"])
            for chunk in script.get("chunks", []):
                await asyncio.sleep(script.get("gap_ms", 0) / 1000)
                yield wire.output_response([chunk])
            if "metrics" in script:
                yield wire.metrics_response(script["metrics"])
            if script.get("hang"):
                await asyncio.sleep(3600)
            completed = True
        finally:
            if not completed:
                self.cancelled_event(request.id).set()
        if "fail" in script:
            raise Failed(script["fail"])

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.multiplexed and not self.predict_too:  # seen to be unused
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this test's backend serves Stream")
        await context.send_initial_metadata(())
        try:
            async for response in self._run(request):
                yield response
        except Failed as exc:
            await context.abort(grpc.StatusCode.UNKNOWN, str(exc))

    async def Stream(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        if not self.multiplexed:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        write = asyncio.Lock()

        async def send(**update: Any) -> None:
            async with write:
                await context.write(pb.StreamResponse(updates=[pb.Update(**update)]))

        async def one(key: int, request: Any) -> None:
            await send(key=key, started=True)
            end = pb.End()
            try:
                async for response in self._run(request):
                    await send(key=key, responses=[response])
            except Failed as exc:
                end = pb.End(code=grpc.StatusCode.UNKNOWN.value[0], message=str(exc))
            await send(key=key, end=end)

        running: dict[int, asyncio.Task[None]] = {}
        async with asyncio.TaskGroup() as tasks:
            async for request in requests:
                for start in request.start:
                    running[start.key] = tasks.create_task(one(start.key, start.request))
                for key in request.cancel:
                    if key in running:
                        running.pop(key).cancel()


@contextlib.asynccontextmanager
async def backend_processes(
    *, predict_only: bool = False
) -> AsyncIterator[Callable[..., Awaitable[BackendProcess]]]:
    """Starts demo backend processes (on a port, if given); kills them all
    at the end, whatever happened."""
    started: list[BackendProcess] = []

    async def start(port: int = 0) -> BackendProcess:
        started.append(BackendProcess(port, predict_only=predict_only))
        return await started[-1].start()

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for backend in started:
                await backend.kill()
