"""Serve a model over bridge.v1 gRPC in a few lines.

A model is a function, or a Cog-style class with ``setup()`` and
``predict(**input)``. ``predict`` yields output tokens (a generator or an
async generator: the output streams) or returns one value. It may also
yield :class:`Log` and :class:`Metrics` objects. Its input schema is derived
from its signature unless one is given::

    from bridge.sdk import Model, serve

    def predict(prompt: str, repeat: int = 1):
        for word in prompt.split() * repeat:
            yield word + " "

    serve(Model("me/words", predict), port=50051)

Tokens go to the bridge in batches, never one message per token unless
they come one at a time: whatever the model yields while the previous write
to the bridge is in flight goes out as one ``Output`` message, and a token
that comes alone goes at once. A sync generator runs in a worker thread of
its own for the whole prediction (at most 1,024 items ahead of what was
written); an async one runs on the server's loop.

Cancellation of the RPC reaches the model: an async generator is closed at
its current ``await``; a sync generator is closed right after the
``next()`` in progress returns, so no further token is computed. An
exception ends the RPC with status ``UNKNOWN`` and the exception's message,
after everything yielded before it was sent.

The server is grpc.aio (asyncio). Tests and programs that are not asyncio
use :class:`ModelServer`, which runs it in a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge._proto.v1 import predictor_pb2_grpc

from ..errors import ListenError
from .batch import BatchPredictor, Emit
from .failure import error_message
from .model import (
    Field,
    Log,
    Metrics,
    Model,
    Predictor,
)
from .servicer import Servicer

__all__ = [
    "BatchPredictor",
    "Emit",
    "Field",
    "Log",
    "Metrics",
    "Model",
    "ModelServer",
    "Predictor",
    "ServerTLS",
    "SetupFailed",
    "serve",
    "serve_async",
]

log = logging.getLogger(__name__)

#: The name prefix of the threads that run a model's sync code
#: (ThreadPoolExecutor names them model_0, model_1, ...).
MODEL_THREADS = "model"
#: How long serve() waits, once stopped, for model calls still running.
STUCK_CALL_SECONDS = 5.0
#: How long a model whose setup() failed goes on saying so, by default,
#: and the most characters of why it says.
SETUP_FAILURE_SECONDS = 30.0
MAX_SETUP_ERROR = 2000


async def serve_async(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    max_threads: int = 64,
    tls: ServerTLS | None = None,
    loaded: Callable[[], None] | None = None,
    setup_failure_seconds: float = SETUP_FAILURE_SECONDS,
) -> None:
    """Serve *model* until *stop* is set (or forever); *ready* gets the port
    once it listens, and *loaded* is called once ``setup()`` is done. If
    ``setup()`` raises, why is served for *setup_failure_seconds* (health
    NOT_SERVING, Describe's ``setup_error``, predictions refused with it),
    then :class:`SetupFailed` is raised.
    With *tls*, over TLS only (and mutual TLS if it names a client CA).

    It listens at once and runs ``setup()`` (weights can take minutes to
    load) while it does: meanwhile Describe answers, the gRPC health status
    is NOT_SERVING, and predictions are refused as loading, which the
    bridge waits out."""
    executor = concurrent.futures.ThreadPoolExecutor(max_threads, MODEL_THREADS)
    try:
        if port:
            _check_free(host, port)
        # Not grpc's default SO_REUSEPORT: a second server on a port in use
        # would share it, and requests would split between old and new code.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = Servicer(model, executor, model.multiplexed)
        predictor_pb2_grpc.add_PredictorServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        try:
            if tls is None:
                bound = server.add_insecure_port(f"{host}:{port}")
            else:
                bound = server.add_secure_port(f"{host}:{port}", tls.credentials())
        except RuntimeError:  # grpc's "Failed to bind to address"
            bound = 0
        if bound == 0:
            raise ListenError(f"cannot listen on {host}:{port}")
        await server.start()
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
        if ready is not None:
            ready(bound)
        try:
            try:
                await asyncio.get_running_loop().run_in_executor(executor, model.setup)
            except Exception as exc:
                await _say_setup_failed(servicer, exc, stop, setup_failure_seconds)
            async with asyncio.TaskGroup() as tasks:
                if servicer.batcher is not None:  # a batching model's step loop
                    steps = tasks.create_task(servicer.batcher.run_forever())
                servicer.loading = False
                await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
                if loaded is not None:
                    loaded()
                await (stop.wait() if stop is not None else server.wait_for_termination())
                if servicer.batcher is not None:
                    steps.cancel()
        finally:
            await health_servicer.enter_graceful_shutdown()
            # Running predictions get a moment, then are cancelled.
            await server.stop(grace=1.0)
    finally:
        # Not waiting here for a model call stuck in predict (a sync
        # generator's next() cannot be interrupted): see serve.
        executor.shutdown(wait=False, cancel_futures=True)


class SetupFailed(Exception):
    """The model's setup() raised: served as said for a while, then this."""


async def _say_setup_failed(
    servicer: Servicer, error: Exception, stop: asyncio.Event | None, seconds: float
) -> NoReturn:
    """Keep serving why setup failed for *seconds* (until *stop*): health
    stays NOT_SERVING, Describe says it, predictions are refused with it;
    then raise :class:`SetupFailed`."""
    # Bounded: it travels in a status message (grpc refuses metadata past
    # 16 KiB, and a torch load error can be longer).
    servicer.setup_error = error_message(error)[:MAX_SETUP_ERROR]
    log.error(
        "%s: setup failed; serving that for %g s (the bridge shows it), then exiting",
        servicer.model_name,
        seconds,
        exc_info=error,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for((stop or asyncio.Event()).wait(), seconds)
    raise SetupFailed(servicer.setup_error) from error


async def _set_health(servicer: Any, status: Any) -> None:
    """The same status for the server as a whole and for bridge.v1."""
    await servicer.set("", status)
    await servicer.set("bridge.v1.Predictor", status)


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """A model server's certificate and key (PEM files), and for mutual TLS
    the CA its clients' certificates must chain to."""

    certfile: str
    keyfile: str
    client_ca: str | None = None

    def credentials(self) -> Any:
        """grpc's server credentials (the files are read now)."""
        with open(self.keyfile, "rb") as key, open(self.certfile, "rb") as cert:
            pair = (key.read(), cert.read())
        client_ca = None
        if self.client_ca is not None:
            with open(self.client_ca, "rb") as ca:
                client_ca = ca.read()
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


def _check_free(host: str, port: int) -> None:
    """Raise :class:`ListenError` if *host*:*port* cannot be listened on
    (taken, or not ours to take): said before grpc, which would log its own
    multi-line error first."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def stop_on_signals() -> asyncio.Event:
    """An event the running asyncio loop sets at SIGINT or SIGTERM: what a
    model server in the foreground stops on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


#: While ``serve-model`` (``python -m bridge.sdk``) loads a model file: the
#: address it serves on. A ``serve()`` the file makes meanwhile does nothing.
_file_served_at: str | None = None


@contextlib.contextmanager
def loading_a_model_file(address: str) -> Iterator[None]:
    """While a command loads a model file to serve it at *address*: the
    file's own ``serve()`` (the README's pattern) does nothing, said in one
    line, and the command serves what the file defines where it was told."""
    global _file_served_at
    _file_served_at = address
    try:
        yield
    finally:
        _file_served_at = None


def serve(
    model: Model,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: ServerTLS | None = None,
    setup_failure_seconds: float = SETUP_FAILURE_SECONDS,
) -> None:
    """Serve *model* in the foreground until SIGINT or SIGTERM (unless a
    command is loading the file this is in: see :func:`loading_a_model_file`).
    If its ``setup()`` fails, the process says why for
    *setup_failure_seconds* (see :func:`serve_async`), then exits with
    status 1."""
    if _file_served_at is not None:
        log.info(
            "serve(%s, port=%d) in the model file does nothing here: the command serves "
            "what the file defines, on %s",
            model.info.name,
            port,
            _file_served_at,
        )
        return

    async def main() -> None:
        stop = stop_on_signals()

        def ready(bound: int) -> None:
            print(f"{model.info.name} listening on {host}:{bound}", flush=True)

        await serve_async(
            model, host=host, port=port, ready=ready, stop=stop, tls=tls,
            setup_failure_seconds=setup_failure_seconds,
        )  # fmt: skip

    try:
        asyncio.run(main())
    except SetupFailed:  # logged with its traceback as it happened
        logging.shutdown()
        sys.exit(1)
    # A model call that is still running (a sync predict stuck in a call
    # that never returns) would keep the process alive for ever: the
    # interpreter joins its thread at exit. It gets a moment, then the
    # process ends without it.
    calls = [t for t in threading.enumerate() if t.name.startswith(f"{MODEL_THREADS}_")]
    give_up_at = time.monotonic() + STUCK_CALL_SECONDS
    for thread in calls:
        thread.join(max(0.0, give_up_at - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in calls)
    if stuck:
        log.warning(
            "%d model call(s) still running %g s after the server stopped; exiting without them",
            stuck,
            STUCK_CALL_SECONDS,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class ModelServer:
    """A model served from a thread with its own asyncio loop.

    For tests and for programs that are not asyncio::

        with ModelServer(model) as server:
            target = server.target   # "127.0.0.1:<port>"
    """

    def __init__(
        self,
        model: Model,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ServerTLS | None = None,
        wait_for_setup: bool = True,
    ) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.tls = tls
        #: Whether entering waits for setup() too, or only until it listens.
        self.wait_for_setup = wait_for_setup
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> ModelServer:
        self._thread = threading.Thread(target=self._main, name=f"model {self.model.info.name}")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        with contextlib.suppress(RuntimeError):  # loop already gone
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(bound: int) -> None:
                self.port = bound
                if not self.wait_for_setup:
                    self._ready.set()

            await serve_async(
                self.model,
                host=self.host,
                port=self.port,
                ready=ready,
                stop=self._stop,
                tls=self.tls,
                loaded=self._ready.set,
                # Waited for: a setup that fails is raised by __enter__ at once.
                setup_failure_seconds=0 if self.wait_for_setup else SETUP_FAILURE_SECONDS,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
