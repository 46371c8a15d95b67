"""``python -m bridge.sdk FILE.py:NAME``: serve a model file over gRPC, in
an environment that has only the model side (``grpc-sse-bridge-model``);
``python -m bridge serve-model`` is the same where the bridge is installed."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ListenError
from . import SETUP_FAILURE_SECONDS, ServerTLS, loading_a_model_file, serve
from .cog import ModelLoadError, load_model

__all__ = ["add_setup_failure_option", "main", "serve_file"]


def add_setup_failure_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--setup-failure-seconds",
        type=float,
        default=SETUP_FAILURE_SECONDS,
        help="if setup() fails, say why this long (health NOT_SERVING, the reason in "
        f"Describe and in refused predictions), then exit 1 (default {SETUP_FAILURE_SECONDS:g};"
        " inf: until stopped)",
    )


def serve_file(args: argparse.Namespace) -> int:
    """Serve the model *args* name (``ref``, ``name``, ``host``, ``port``,
    ``certfile``, ``keyfile``, ``client_ca``) until stopped; its exit status
    (2 for a file or TLS options that cannot be served). A port that is
    taken raises :class:`~bridge.errors.ListenError`."""
    if (args.certfile is None) != (args.keyfile is None) or (args.client_ca and not args.certfile):
        print(
            "error: --certfile and --keyfile go together (and --client-ca needs them)",
            file=sys.stderr,
        )
        return 2
    tls = ServerTLS(args.certfile, args.keyfile, args.client_ca) if args.certfile else None
    name = args.name or f"local/{Path(args.ref.rpartition(':')[0]).stem}"
    try:
        with loading_a_model_file(f"{args.host}:{args.port}"):
            model = load_model(args.ref, name)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = args.setup_failure_seconds
    serve(
        model, host=args.host, port=args.port, tls=tls,
        setup_failure_seconds=SETUP_FAILURE_SECONDS if seconds is None else seconds,
    )  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.sdk", description="serve a model file over bridge.v1 gRPC"
    )
    parser.add_argument("ref", help="FILE.py:NAME, the class or function to serve")
    parser.add_argument("--name", help="owner/name it is served as (default local/<file>)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    parser.add_argument("--certfile", help="serve over TLS: this certificate (PEM) ...")
    parser.add_argument("--keyfile", help="... and its key (PEM)")
    parser.add_argument(
        "--client-ca", help="mutual TLS: clients must show a certificate from this CA"
    )
    add_setup_failure_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return serve_file(args)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
