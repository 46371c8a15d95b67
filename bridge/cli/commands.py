"""The commands that serve: ``serve``, ``demo-backend``, ``serve-model`` and
``run-demo`` (``python -m bridge``, see :mod:`bridge.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio
from msgspec.structs import replace

from ..config import ConfigError, Settings
from ..errors import ListenError
from .lifeline import stop_on_eof
from .logs import setup_logging
from .signals import Signals, lone, serve_until_signal, signals

__all__ = ["run"]

#: The cycle collector's first threshold in the serving commands (see run).
GC_THRESHOLD = 10_000

log = logging.getLogger("bridge")


def run(args: argparse.Namespace) -> int:
    """Run the serving command *args* names; its exit status."""
    setup_logging(getattr(args, "log_format", "text"))
    if getattr(args, "stop_on_eof", False):
        stop_on_eof()

    # The collector's first threshold, 700 allocations, is made for small
    # programs: under 1,000 paced streams it ran a young collection ~80
    # times a second and, as the heap grew, full ones of up to 260 ms that
    # stopped every stream (a cancel took 219 ms). At 10,000: 4% less CPU,
    # and that cancel took 16-41 ms. Reference counting frees what the hot
    # path allocates either way; this only spaces the cycle collector out.
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, ListenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:  # from inside a Trio run or a TaskGroup
        error = lone(group, (ConfigError, ListenError))
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    from ..backends.grpc_loop import run as run_trio  # trio.run, on the loop gRPC's calls run on

    settings = Settings.from_toml(args.config, host=args.host, port=args.port, workers=args.workers)
    if settings.workers > 1:
        return trio.run(_serve_workers, settings, args.log_format)
    run_trio(serve_until_signal, settings)
    return 0


async def _serve_workers(settings: Settings, log_format: str) -> int:
    from .workers import serve_workers

    async with signals() as caught:
        return await serve_workers(settings, log_format, caught)


def _run_demo_command(args: argparse.Namespace) -> int:
    from ..backends.grpc_loop import run as run_trio
    from ..sdk.demo import MODELS

    # The config is checked now, before anything starts (the demo models'
    # real targets are known once their backend listens).
    _demo_settings(args.config, args.host, args.port, dict.fromkeys(MODELS, "-"))
    run = functools.partial(_run_demo, args.config, args.host, args.port, args.workers, args.llm)
    if args.workers > 1:
        # The workers' parent only supervises: no gRPC loop to be a guest of.
        return trio.run(run)
    return run_trio(run)
    return 0


def _demo_backend_command(args: argparse.Namespace) -> int:
    asyncio.run(_demo_backend(args.host, args.port, args.model, args.llm, args.predict_only))
    return 0


async def _demo_backend(
    host: str, port: int, only: str | None, llm: bool = False, predict_only: bool = False
) -> None:
    from ..sdk import serve_async, stop_on_signals
    from ..sdk.demo import make_models

    stop = stop_on_signals()
    models = make_models(multiplexed=not predict_only)
    if llm:
        from ..sdk.hf import fable_model

        models["demo/fable-gpt2"] = fable_model()
        models["demo/fable-gpt2"].multiplexed = not predict_only
    if only is not None and only not in models:
        raise ConfigError(f"--model {only!r} is not a demo model: choose from {', '.join(models)}")
    names = [only] if only else list(models)

    def ready(name: str, bound: int) -> None:
        print(f"{name} listening on {host}:{bound}", flush=True)

    async with asyncio.TaskGroup() as tasks:
        for offset, name in enumerate(names):
            tasks.create_task(
                serve_async(
                    models[name],
                    host=host,
                    port=port + offset if port else 0,
                    ready=functools.partial(ready, name),
                    stop=stop,
                )
            )


def _serve_model(args: argparse.Namespace) -> int:
    from ..sdk.__main__ import serve_file  # python -m bridge.sdk, the model side's own

    return serve_file(args)  # a ListenError is reported by run


def _check(args: argparse.Namespace) -> int:
    """Load a config as ``serve`` would, compiling its services' protos and
    finding their methods (what ``make proto CONFIG=...`` runs): one line
    per model, or the first error."""
    from ..backends.generic.backend import bind_services

    settings = Settings.from_toml(args.config)
    services = bind_services(settings)
    for name, model in settings.models.items():
        if name not in services:
            print(f"{name}: bridge.v1 at {', '.join(model.targets)}")
            continue
        binding = services[name]
        if binding is None:
            print(f"{name}: {model.method}, its types asked by reflection when first described")
            continue
        method = binding.method
        shape = ["unary", "server-streaming", "client-streaming", "bidirectional"][
            method.server_streaming + 2 * method.client_streaming
        ]
        print(f"{name}: {model.method} ({shape}), version {binding.info.version}")
    return 0


#: Each serving command, by name: what it runs, returning its exit status.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check": _check,
    "serve": _serve,
    "demo-backend": _demo_backend_command,
    "serve-model": _serve_model,
    "run-demo": _run_demo_command,
}


_LISTENING = re.compile(rb"^(\S+/\S+) listening on (\S+:\d+)$", re.MULTILINE)


def _demo_settings(
    config: str | None, host: str | None, port: int | None, targets: dict[str, str]
) -> Settings:
    """``run-demo``'s settings: those of *config* if given (its models served
    too), with the demo models at *targets*."""
    extra: dict[str, tuple[str, ...]] = {name: (target,) for name, target in targets.items()}
    if config is None:
        return Settings.from_dict({}, extra_models=extra, host=host, port=port)
    return Settings.from_toml(config, extra_models=extra, host=host, port=port)


async def _run_demo(
    config: str | None, host: str | None, port: int | None, workers: int = 1, llm: bool = False
) -> int:
    """Start the demo backend process, then the bridge in front of it (with
    *workers* > 1: that many, sharing the config's Redis or one started for
    them); on SIGINT/SIGTERM stop the bridge (which drains first), then the
    backend. Signals stay caught to the end: a second one hurries both.
    Returns the exit status."""
    command = [sys.executable, "-m", "bridge", "demo-backend", "--stop-on-eof"]
    command += ["--host", "127.0.0.1", "--port", "0", *(["--llm"] if llm else [])]
    from ..sdk.demo import MODELS

    expected = len(MODELS) + llm  # each says "<model> listening on HOST:PORT"
    status = 0
    async with signals() as caught, trio.open_nursery() as nursery:
        # Its own session: a Ctrl-C at the terminal reaches only the bridge,
        # which drains while the backend goes on; then we stop the backend.
        # Its stdin is a pipe we hold: if we die, even by SIGKILL, it stops.
        backend = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        assert backend.stdout is not None
        output = backend.stdout
        try:
            targets: dict[str, str] = {}
            seen = b""
            with trio.fail_after(60), caught.stop_now.cuts(trio.CancelScope()):
                while len(targets) < expected and not caught.first.is_set():
                    data = await output.receive_some()
                    if not data:
                        raise RuntimeError("demo backend exited before it listened")
                    seen += data
                    targets = {m[1].decode(): m[2].decode() for m in _LISTENING.finditer(seen)}
            nursery.start_soon(_drain, output)
            if len(targets) == expected:
                settings = _demo_settings(config, host, port, targets)
                if workers == 1:
                    await caught.serve(settings)
                else:
                    status = await _demo_workers(settings, workers, caught)
        finally:
            with trio.CancelScope(shield=True):
                if backend.returncode is None:
                    backend.terminate()
                with trio.move_on_after(5), caught.stop_now.cuts(trio.CancelScope()):
                    await backend.wait()
                if backend.returncode is None:
                    backend.kill()
                    await backend.wait()
            nursery.cancel_scope.cancel()
    return status


async def _demo_workers(settings: Settings, workers: int, caught: Signals) -> int:
    """*workers* bridges on the settings' Redis, or one started for them."""
    from .workers import serve_workers

    if settings.store_url is not None:
        return await serve_workers(replace(settings, workers=workers), "text", caught)
    async with open_redis_server() as url:
        shared = replace(settings, workers=workers, store_url=url)
        return await serve_workers(shared, "text", caught)


@contextlib.asynccontextmanager
async def open_redis_server() -> AsyncIterator[str]:
    """A redis-server of our own, on a unix socket in a directory that goes
    with it (nothing kept: no snapshots, no append-only file); its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise ConfigError(
            "--workers needs a Redis: set [store] url in the config, or install "
            "redis-server (apt-get install redis-server) and one is started"
        )
    with tempfile.TemporaryDirectory(prefix="bridge-redis-") as where:
        sock = Path(where) / "redis.sock"
        command = [server, "--port", "0", "--unixsocket", str(sock), "--save", ""]
        command += ["--appendonly", "no", "--dir", where]
        # Its own session: a Ctrl-C reaches the bridge, which stops it last.
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, start_new_session=True
        )
        try:
            with trio.fail_after(10):
                while not sock.exists():
                    if process.returncode is not None:
                        raise ConfigError("redis-server exited as it started")
                    await trio.sleep(0.01)  # its socket appears: no event to wait on
            log.info("started redis-server at unix://%s", sock)
            yield f"unix://{sock}"
        finally:
            with trio.CancelScope(shield=True):
                process.terminate()
                with trio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while data := await stream.receive_some():
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
