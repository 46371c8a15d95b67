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
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Generator, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge._proto.v1 import predictor_pb2, predictor_pb2_grpc

from ..backends import wire
from ..errors import ListenError

__all__ = [
    "Field",
    "Log",
    "Metrics",
    "Model",
    "ModelServer",
    "Predictor",
    "ServerTLS",
    "serve",
    "serve_async",
]

log = logging.getLogger(__name__)

#: The name prefix of the threads that run a model's sync code
#: (ThreadPoolExecutor names them model_0, model_1, ...).
MODEL_THREADS = "model"
#: How long serve() waits, once stopped, for model calls still running.
STUCK_CALL_SECONDS = 5.0


class Predictor:
    """Cog-style base class; subclassing it is optional (any object with a
    ``predict`` method will do)."""

    def setup(self) -> None:
        """Load weights and other slow state; called once before serving."""

    #: The model: called with the inputs as keyword arguments (its
    #: signature is the input schema); returns the output, or yields it.
    predict: Callable[..., Any]


#: Yield ``Log("...")`` from ``predict`` to emit a log line.
Log = wire.LogLine

#: Yield ``Metrics({...})`` from ``predict`` to report numbers it measured.
Metrics = wire.MetricsUpdate


@dataclasses.dataclass(frozen=True)
class Field:
    """What an input is for, and its limits, for its schema (and the page's
    form)::

        def predict(prompt: Annotated[str, Field("What to write about")],
                    words: Annotated[int, Field("How many", ge=1, le=500)] = 100):
    """

    description: str | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    choices: tuple[Any, ...] | None = None

    def schema(self) -> dict[str, Any]:
        keys = {
            "description": self.description,
            "minimum": self.ge,
            "maximum": self.le,
            "minLength": self.min_length,
            "maxLength": self.max_length,
            "enum": list(self.choices) if self.choices is not None else None,
        }
        return {key: value for key, value in keys.items() if value is not None}


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


def _schema_for(annotation: Any) -> dict[str, Any]:
    """A JSON schema for a parameter annotation (the common cases only)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(annotation)
        schema = _schema_for(inner)
        for extra in extras:
            if isinstance(extra, Field):
                schema |= extra.schema()
        return schema
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _schema_for(args[0]) if len(args) == 1 else {}
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return {"type": "array", "items": _schema_for(item)}
    if origin is dict:
        return {"type": "object"}
    json_type = _JSON_TYPES.get(annotation)
    return {"type": json_type} if json_type else {}


def input_property(name: str, order: int) -> dict[str, Any]:
    """What every input's schema starts with, as Cog writes it: a title made
    from its name, and its place in the form (``x-order``)."""
    return {"title": name.replace("_", " ").title(), "x-order": order}


def input_object(
    properties: dict[str, Any], required: list[str], *, closed: bool = True
) -> dict[str, Any]:
    """The input schema around its *properties*, as Cog writes it; *closed*:
    no other field (the bridge answers 422 for one, before anything runs)."""
    schema: dict[str, Any] = {"type": "object", "title": "Input", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


def input_schema_for(func: Callable[..., Any]) -> dict[str, Any]:
    """The input schema of a predict function, from its signature."""
    hints = typing.get_type_hints(func, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    params = inspect.signature(func).parameters.values()
    for order, param in enumerate(
        p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
    ):
        prop = input_property(param.name, order)
        prop |= _schema_for(hints.get(param.name, param.annotation))
        if param.default is param.empty:
            required.append(param.name)
        elif param.default is not None:
            prop["default"] = param.default
        properties[param.name] = prop
    # Only what the signature takes (unless it takes **kwargs): another field
    # is a 422, not a prediction failing with "unexpected keyword argument".
    closed = not any(p.kind is p.VAR_KEYWORD for p in params)
    return input_object(properties, required, closed=closed)


def output_schema_for(func: Callable[..., Any]) -> dict[str, Any]:
    """Streaming output (a generator) is a concatenated iterator of strings."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        return copy.deepcopy(wire.TEXT_STREAM_SCHEMA)
    return {"title": "Output"}


def _coerce(value: Any, schema: dict[str, Any]) -> Any:
    """Undo protobuf Struct's numbers-are-doubles for integer fields."""
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "array" and isinstance(value, list):
        return [_coerce(v, schema.get("items", {})) for v in value]
    return value


class Model:
    """A predict function or predictor object, described for the bridge.

    *concurrency*: how many predictions it runs at once, advertised in
    ``Describe`` (the bridge sends no more) and kept to here (more wait
    their turn). By default 1 for a predictor class, as Cog does (a model
    on a GPU runs one generation at a time), and no limit for a function.
    """

    def __init__(
        self,
        name: str,
        predictor: Any,  # a function, a predictor class, or an object with predict
        *,
        version: str | None = None,
        input_schema: dict[str, Any] | None = None,
        output_schema: dict[str, Any] | None = None,
        concurrency: int | None = None,
    ) -> None:
        if concurrency is None:
            concurrency = 1 if inspect.isclass(predictor) else 0
        if concurrency < 0:
            raise ValueError(f"concurrency must be 0 (no limit) or more, not {concurrency}")
        if inspect.isclass(predictor):
            predictor = predictor()
        self._setup: Callable[[], None] | None = getattr(predictor, "setup", None)
        func = predictor if inspect.isroutine(predictor) else predictor.predict
        self.predict: Callable[..., Any] = func
        in_schema = input_schema if input_schema is not None else input_schema_for(func)
        out_schema = output_schema if output_schema is not None else output_schema_for(func)
        if version is None:
            spec = json.dumps([name, in_schema, out_schema], sort_keys=True).encode()
            version = hashlib.sha256(spec).hexdigest()
        self.info = wire.ModelInfo(name, version, in_schema, out_schema, concurrency)

    def setup(self) -> None:
        if self._setup is not None:
            self._setup()

    def coerce_input(self, raw: dict[str, Any]) -> dict[str, Any]:
        props = self.info.input_schema.get("properties", {})
        return {k: _coerce(v, props.get(k, {})) for k, v in raw.items()}


#: A batch is split into Output messages of about this many bytes of text,
#: far below gRPC's 4 MiB default limit on a received message.
MESSAGE_BYTES = 64 * 1024

#: Items a model may produce ahead of what was written to the bridge.
OUTBOX_LIMIT = 1024


class _Outbox:
    """What a model produced that is not written yet.

    The producer (the model's generator, on the loop or in a worker thread)
    puts items; the writer takes all of them at once, each time its previous
    write completed. So the tokens a model yields while a write is in flight
    go out together as one message, and a token that comes alone goes out at
    once. At most :data:`OUTBOX_LIMIT` items wait; past that the producer
    waits too.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int = OUTBOX_LIMIT) -> None:
        self._loop = loop
        self._limit = limit
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # for a producer thread
        self._taken = asyncio.Event()  # for a producer on the loop
        self._ready = asyncio.Event()  # for the writer
        self._items: list[Any] = []
        self._signalled = False  # the writer was told about what is in _items
        self._ended = False
        self._error: BaseException | None = None
        self._cancelled = False

    def _signal(self) -> bool:
        """Under the lock: whether the writer must now be told (once per batch)."""
        first, self._signalled = not self._signalled, True
        return first

    async def put(self, item: Any) -> None:
        """Add *item* (on the loop thread)."""
        while len(self._items) >= self._limit:
            self._taken.clear()
            await self._taken.wait()
        with self._lock:
            self._items.append(item)
            tell = self._signal()
        if tell:
            self._ready.set()
            # An idle writer sends this item now; what the model yields while
            # that write is in flight waits here, for the next batch.
            await asyncio.sleep(0)

    def put_blocking(self, item: Any) -> bool:
        """Add *item* from a worker thread; False once the call is cancelled."""
        with self._lock:
            while len(self._items) >= self._limit and not self._cancelled:
                self._room.wait()
            if self._cancelled:
                return False
            self._items.append(item)
            tell = self._signal()
        if tell:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def end(self, error: BaseException | None = None) -> None:
        """No more items (on the loop thread); *error* if the model raised."""
        with self._lock:
            self._ended, self._error = True, error
            self._signal()
        self._ready.set()

    def cancel(self) -> None:
        """Stop a producer thread at its next item."""
        with self._lock:
            self._cancelled = True
            self._room.notify_all()

    async def take(self) -> tuple[list[Any], bool, BaseException | None]:
        """Everything waiting (at least one item, or the end): items, ended, error."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            with self._lock:
                items, self._items = self._items, []
                self._signalled = False
                ended, error = self._ended, self._error
                self._room.notify_all()
            self._taken.set()
            if items or ended:
                return items, ended, error


def _drain_generator(generator: Generator[Any, Any, Any], outbox: _Outbox) -> None:
    """Run a sync generator to its end in this worker thread. Cancelled, it is
    closed right after the ``next()`` in progress returns: never while it runs."""
    try:
        for item in generator:
            if not outbox.put_blocking(item):
                return
    finally:
        generator.close()


def _messages(items: list[Any]) -> Iterator[predictor_pb2.PredictResponse]:
    """The fewest messages for *items*, in order: consecutive outputs share an
    ``Output`` message (up to :data:`MESSAGE_BYTES` of text)."""
    chunks: list[Any] = []
    size = 0
    for item in items:
        if isinstance(item, Log | Metrics):
            if chunks:
                yield wire.output_response(chunks)
                chunks, size = [], 0
            if isinstance(item, Log):
                yield wire.log_response(item.line)
            else:
                yield wire.metrics_response(item.values)
            continue
        chunks.append(item)
        size += len(item) if isinstance(item, str) else 64
        if size >= MESSAGE_BYTES:
            yield wire.output_response(chunks)
            chunks, size = [], 0
    if chunks:
        yield wire.output_response(chunks)


class _Servicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(self, model: Model, executor: concurrent.futures.Executor) -> None:
        self._model = model
        self._executor = executor
        #: Until setup() has returned: predictions are refused (UNAVAILABLE,
        #: wire.LOADING), which the bridge waits out.
        self.loading = True
        #: Predictions running at once, at most the model's concurrency (a
        #: bridge that honours Describe never makes one wait here).
        limit = model.info.concurrency
        self._slots = asyncio.Semaphore(limit) if limit else None

    async def Describe(self, request: Any, context: Any) -> predictor_pb2.DescribeResponse:
        return wire.model_info_to_pb(self._model.info)

    async def _produce(self, input: dict[str, Any], outbox: _Outbox) -> None:
        """Everything ``predict`` produces, whatever kind of callable it is,
        into *outbox*; its end (or its exception) last."""
        func = self._model.predict
        try:
            if (
                inspect.isgeneratorfunction(func)
                or inspect.isasyncgenfunction(func)
                or inspect.iscoroutinefunction(func)
            ):
                result = func(**input)
            else:
                # A plain function may block: call it off the event loop.
                call = functools.partial(func, **input)
                result = await asyncio.wrap_future(self._executor.submit(call))
            if inspect.isasyncgen(result):
                try:
                    async for item in result:
                        await outbox.put(item)
                finally:
                    await result.aclose()
            elif inspect.isgenerator(result):
                try:
                    await asyncio.wrap_future(
                        self._executor.submit(_drain_generator, result, outbox)
                    )
                finally:
                    outbox.cancel()
            else:
                await outbox.put(await result if inspect.isawaitable(result) else result)
        except Exception as exc:
            outbox.end(exc)
        else:
            outbox.end()

    def _slot(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._slots if self._slots is not None else contextlib.nullcontext()

    async def Predict(
        self, request: predictor_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> None:
        if self.loading:
            log.info("prediction %s refused: %s", request.id, wire.LOADING)
            await context.abort(grpc.StatusCode.UNAVAILABLE, wire.LOADING)
        input = self._model.coerce_input(wire.request_input(request))
        log.info("prediction %s started", request.id)
        # Headers now tell the bridge the model is running.
        await context.send_initial_metadata(())
        outbox = _Outbox(asyncio.get_running_loop())
        # The producer is this call's child: a cancelled call (or a failed
        # write) cancels it, which closes the model's generator.
        async with self._slot(), asyncio.TaskGroup() as tasks:
            tasks.create_task(self._produce(input, outbox))
            while True:
                items, ended, error = await outbox.take()
                for message in _messages(items):
                    await context.write(message)
                if ended:
                    break
        if error is not None:
            log.info("prediction %s failed: %r", request.id, error)
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details(str(error) or type(error).__name__)


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
) -> None:
    """Serve *model* until *stop* is set (or forever); *ready* gets the port
    once it listens, and *loaded* is called once ``setup()`` is done.
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
        servicer = _Servicer(model, executor)
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
            await asyncio.get_running_loop().run_in_executor(executor, model.setup)
            servicer.loading = False
            await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
            if loaded is not None:
                loaded()
            await (stop.wait() if stop is not None else server.wait_for_termination())
        finally:
            await health_servicer.enter_graceful_shutdown()
            # Running predictions get a moment, then are cancelled.
            await server.stop(grace=1.0)
    finally:
        # Not waiting here for a model call stuck in predict (a sync
        # generator's next() cannot be interrupted): see serve.
        executor.shutdown(wait=False, cancel_futures=True)


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


def serve(
    model: Model, *, host: str = "127.0.0.1", port: int = 0, tls: ServerTLS | None = None
) -> None:
    """Serve *model* in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = stop_on_signals()

        def ready(bound: int) -> None:
            print(f"{model.info.name} listening on {host}:{bound}", flush=True)

        await serve_async(model, host=host, port=port, ready=ready, stop=stop, tls=tls)

    asyncio.run(main())
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
            )

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
