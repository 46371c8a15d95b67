"""python -m bridge: the bridge, the demo backends, a model file, the client.

python -m bridge serve --config bridge.toml [--host H] [--port P] [--workers N]
python -m bridge demo-backend [--host H] [--port P] [--model demo/echo]
python -m bridge serve-model predict.py:Predictor --name me/fox [--host H] [--port P]
python -m bridge run-demo [--host H] [--port P] [--config F] [--workers N] [--llm]   # make run
python -m bridge predict demo/story prompt="Tell me a story" [--json] [--wait]
python -m bridge check --config bridge.toml     # a config, its services' protos compiled
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    """Every command and its arguments: one table, read top to bottom
    (long, but flat: splitting it would only scatter the table)."""
    # As it was started: python -m bridge, or the grpc-sse-bridge script.
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    parser = argparse.ArgumentParser(
        prog=script if script and script != "__main__.py" else "python -m bridge",
        description=__doc__,
        epilog="serve, demo-backend, serve-model and run-demo take --stop-on-eof: a process\n"
        "started with a pipe as stdin stops when that pipe closes, so it ends with the\n"
        "process that started it.",
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
    serve.add_argument(
        "--workers",
        type=int,
        help="bridge processes on the port, one per core (default 1; more need [store] url)",
    )
    serve.add_argument("--log-format", choices=["text", "json"], default="text")

    demo = sub.add_parser("demo-backend", help="serve the demo models over gRPC", parents=[child])
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument(
        "--port",
        type=int,
        default=50051,
        help="first port: demo/echo here, demo/story and demo/batch on the next ones "
        "(0 picks free ports)",
    )
    demo.add_argument("--model", help="serve only this demo model, on --port")
    demo.add_argument(
        "--llm", action="store_true", help="serve demo/fable-gpt2 too (needs the llm extra)"
    )
    demo.add_argument(
        "--predict-only",
        action="store_true",
        help="offer the bridge Predict only, not Stream (as a backend written for Predict)",
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
    model.add_argument("--certfile", help="serve over TLS: this certificate (PEM) ...")
    model.add_argument("--keyfile", help="... and its key (PEM)")
    model.add_argument(
        "--client-ca", help="mutual TLS: clients must show a certificate from this CA (PEM)"
    )
    model.add_argument(
        "--setup-failure-seconds",
        type=float,
        help="if setup() fails, say why this long (health NOT_SERVING, the reason in Describe"
        " and in refused predictions), then exit 1 (default 30; inf: until stopped)",
    )

    predict = sub.add_parser("predict", help="run a prediction, streaming it to the terminal")
    predict.add_argument("model", help="owner/name")
    predict.add_argument("input", nargs="*", help='key=value, e.g. prompt="Tell me a story"')
    predict.add_argument("--url", help="the bridge (default $BRIDGE_URL or http://127.0.0.1:8000)")
    predict.add_argument("--token", help="API token (default $BRIDGE_TOKEN)")
    predict.add_argument("--json", action="store_true", help="one JSON event per line")
    predict.add_argument("--wait", action="store_true", help="poll instead of streaming")

    check = sub.add_parser(
        "check", help="check a config: its values, and its services' protos and methods"
    )
    check.add_argument("--config", required=True, help="TOML file naming the models")

    run = sub.add_parser(
        "run-demo", help="the demo backends and the bridge together", parents=[child]
    )
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to listen on (default 8000)")
    run.add_argument(
        "--config", help="TOML file: settings, and models besides the demo ones (optional)"
    )
    run.add_argument(
        "--llm",
        action="store_true",
        help="serve demo/fable-gpt2 too, a small transformer (needs the llm extra: make run-llm)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="bridge processes (default 1); more share a Redis: the config's [store] url,"
        " else a redis-server started (and stopped) with them",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        # As in __main__ (for the grpc-sse-bridge script, which starts here):
        # Ctrl-C works even if this process was started with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Each side imports only what it needs: the client is a small HTTP
        # program, not the server stack.
        if args.command == "predict":
            from .client import main_predict

            return main_predict(args)
        from .commands import run

        return run(args)
    except KeyboardInterrupt:
        # Ctrl-C before a command took charge of it (while starting up):
        # quietly, with the status a shell expects.
        return 130
