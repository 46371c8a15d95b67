"""``python -m bridge``: the bridge, the demo backends, and both at once.

::

    python -m bridge serve --config bridge.toml [--host H] [--port P]
    python -m bridge demo-backend [--host H] [--port P] [--model demo/echo]
    python -m bridge serve-model predict.py:Predictor --name me/fox [--host H] [--port P]
    python -m bridge run-demo [--host H] [--port P]     # what `make run` runs
    python -m bridge predict demo/story prompt="Tell me a story" [--json] [--wait]

``serve``, ``demo-backend``, ``serve-model`` and ``run-demo`` take ``--stop-on-eof``: a
process started with a pipe as stdin stops when that pipe closes, so it
ends with the process that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Sequence

import trio

from .config import ConfigError, ModelSettings, Settings
from .lifeline import stop_on_eof
from .logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("bridge")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bridge",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # For a process another one starts: it stops when its parent is gone.
    child = argparse.ArgumentParser(add_help=False)
    child.add_argument(
        "--stop-on-eof",
        action="store_true",
        help="stop (as on SIGTERM) when stdin reaches end-of-file: a parent that "
        "holds a pipe to it ties this process's life to its own",
    )

    serve = sub.add_parser("serve", help="run the bridge", parents=[child])
    serve.add_argument("--config", required=True, help="TOML file naming the models")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--log-format", choices=["text", "json"], default="text")

    demo = sub.add_parser("demo-backend", help="serve the demo models over gRPC", parents=[child])
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument(
        "--port",
        type=int,
        default=50051,
        help="first port: demo/echo here, demo/story on the next (0 picks free ports)",
    )
    demo.add_argument(
        "--model", choices=["demo/echo", "demo/story"], help="serve only this model, on --port"
    )

    model = sub.add_parser(
        "serve-model",
        help="serve a model file over gRPC: a Cog predictor unchanged, or a bridge.sdk model",
        parents=[child],
    )
    model.add_argument(
        "ref", help="FILE.py:NAME, the class or function to serve (as cog.yaml's predict:)"
    )
    model.add_argument("--name", help="owner/name it is served as (default local/<file>)")
    model.add_argument("--host", default="127.0.0.1")
    model.add_argument("--port", type=int, default=50051, help="0 picks a free port")

    predict = sub.add_parser("predict", help="run a prediction, streaming it to the terminal")
    predict.add_argument("model", help="owner/name")
    predict.add_argument("input", nargs="*", help='key=value, e.g. prompt="Tell me a story"')
    predict.add_argument("--url", help="the bridge (default $BRIDGE_URL or http://127.0.0.1:8000)")
    predict.add_argument("--token", help="API token (default $BRIDGE_TOKEN)")
    predict.add_argument("--json", action="store_true", help="one JSON event per line")
    predict.add_argument("--wait", action="store_true", help="poll instead of streaming")

    run = sub.add_parser(
        "run-demo", help="the demo backends and the bridge together", parents=[child]
    )
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8000)
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C works however this process was started: a shell that runs a
    # command in the background without job control (``cmd &`` in a script,
    # some CI runners) starts it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "predict":
        from .client import main_predict

        return main_predict(args)
    setup_logging(getattr(args, "log_format", "text"))
    if args.stop_on_eof:
        stop_on_eof()
    try:
        if args.command == "serve":
            settings = Settings.from_toml(args.config, host=args.host, port=args.port)
            trio.run(_serve_until_signal, settings)
        elif args.command == "demo-backend":
            asyncio.run(_demo_backend(args.host, args.port, args.model))
        elif args.command == "serve-model":
            return _serve_model(args.ref, args.name, args.host, args.port)
        elif args.command == "run-demo":
            trio.run(_run_demo, args.host, args.port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve_until_signal(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM. Signals stay caught until the end, so
    an impatient second Ctrl-C cannot break the orderly shutdown."""
    from .server import serve

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def first_signal() -> None:
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                return

        await serve(settings, shutdown_trigger=first_signal)


async def _demo_backend(host: str, port: int, only: str | None) -> None:
    from .demo import make_models
    from .sdk import serve_async

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    models = make_models()
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
                    ready=lambda bound, name=name: ready(name, bound),
                    stop=stop,
                )
            )


def _serve_model(ref: str, name: str | None, host: str, port: int) -> int:
    from pathlib import Path

    from .cogmodel import ModelLoadError, load_model
    from .sdk import serve

    name = name or f"local/{Path(ref.rpartition(':')[0]).stem}"
    try:
        model = load_model(ref, name)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(model, host=host, port=port)
    return 0


_LISTENING = re.compile(rb"^(\S+/\S+) listening on (\S+:\d+)$", re.MULTILINE)


async def _run_demo(host: str, port: int) -> None:
    """Start the demo backend process, then the bridge in front of it; on
    SIGINT/SIGTERM stop the bridge (which drains first), then the backend."""
    command = [sys.executable, "-m", "bridge", "demo-backend", "--stop-on-eof"]
    command += ["--host", "127.0.0.1", "--port", "0"]
    async with trio.open_nursery() as nursery:
        # Its own session: a Ctrl-C at the terminal reaches only the bridge,
        # which drains while the backend goes on; then we stop the backend.
        # Its stdin is a pipe we hold: if we die, even by SIGKILL, it stops.
        backend = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
        )
        try:
            targets: dict[str, str] = {}
            seen = b""
            with trio.fail_after(60):
                while len(targets) < 2:
                    data = await backend.stdout.receive_some()
                    if not data:
                        raise RuntimeError("demo backend exited before it listened")
                    seen += data
                    targets = {m[1].decode(): m[2].decode() for m in _LISTENING.finditer(seen)}
            nursery.start_soon(_drain, backend.stdout)
            settings = Settings(
                host=host,
                port=port,
                models={n: ModelSettings(n, (t,)) for n, t in targets.items()},
            )
            await _serve_until_signal(settings)
        finally:
            with trio.CancelScope(shield=True):
                if backend.returncode is None:
                    backend.terminate()
                with trio.move_on_after(5):
                    await backend.wait()
                if backend.returncode is None:
                    backend.kill()
                    await backend.wait()
            nursery.cancel_scope.cancel()


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while data := await stream.receive_some():
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
