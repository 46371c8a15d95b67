"""Real parts: gRPC model servers on 127.0.0.1:0, a real hypercorn bridge,
real HTTP clients. No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from bridge.config import ModelSettings, Settings
from bridge.core.store import PredictionStore
from bridge.sdk import Model, ModelServer
from bridge.sdk.demo import make_models
from bridge.server import serve

from .sse_clients import Ev, replicate_events, spec_events


class Probe:
    """What the ``test/endless`` backend did for one ``key``, seen from the
    backend's side: tokens made, and whether its generator was closed."""

    def __init__(self) -> None:
        self.made = 0
        self.closed = threading.Event()


PROBES: dict[str, Probe] = {}


async def endless(key: str, delay_ms: int = 20) -> AsyncIterator[str]:
    """Yields tokens until cancelled; records what it did in PROBES[key]."""
    probe = PROBES.setdefault(key, Probe())
    try:
        while True:
            await asyncio.sleep(delay_ms / 1000)
            probe.made += 1
            yield f"t{probe.made} "
    finally:
        probe.closed.set()


#: ``test/gate`` predictions wait for their key's gate to open.
GATES: dict[str, threading.Event] = {}


async def gate(key: str) -> AsyncIterator[str]:
    """Yields ``waiting``, then ``through`` once ``GATES[key]`` is set:
    a prediction that ends exactly when a test says so."""
    opened = GATES.setdefault(key, threading.Event())
    yield "waiting "
    while not opened.is_set():  # noqa: ASYNC110 - set from another thread
        await asyncio.sleep(0.005)
    yield "through"


def open_gate(key: str) -> None:
    GATES.setdefault(key, threading.Event()).set()


def upper(text: str) -> str:
    """``test/upper``: one value, not a stream."""
    return text.upper()


@contextlib.contextmanager
def serve_test_models(multiplexed: bool) -> Iterator[dict[str, str]]:
    """The demo models, ``test/endless``, ``test/gate`` and ``test/upper``,
    each on its own real gRPC server (*multiplexed*: offering Stream)."""
    models = make_models(multiplexed)
    with (
        ModelServer(models["demo/echo"]) as echo,
        ModelServer(models["demo/story"]) as story,
        ModelServer(models["demo/batch"]) as batch,
        ModelServer(Model("test/endless", endless, multiplexed=multiplexed)) as probe,
        ModelServer(Model("test/gate", gate, multiplexed=multiplexed)) as gated,
        ModelServer(Model("test/upper", upper, multiplexed=multiplexed)) as single,
    ):
        yield {
            "demo/echo": echo.target,
            "demo/story": story.target,
            "demo/batch": batch.target,
            "test/endless": probe.target,
            "test/gate": gated.target,
            "test/upper": single.target,
        }


@pytest.fixture(scope="session")
def demo_targets() -> Iterator[dict[str, str]]:
    """:func:`serve_test_models` for the session, on Stream (the SDK's default)."""
    with serve_test_models(multiplexed=True) as targets:
        yield targets


@pytest.fixture(scope="session")
def predict_only_targets() -> Iterator[dict[str, str]]:
    """:func:`serve_test_models` for the session, offering Predict only (as a
    backend written for Predict does)."""
    with serve_test_models(multiplexed=False) as targets:
        yield targets


@pytest.fixture(params=["stream", "predict"])
def transport(
    request: pytest.FixtureRequest,
    demo_targets: dict[str, str],
    predict_only_targets: dict[str, str],
) -> dict[str, str]:
    """The test models on each of bridge.v1's transports in turn: a test
    that takes it runs against both."""
    return demo_targets if request.param == "stream" else predict_only_targets


@contextlib.contextmanager
def redis_server(
    where: Path, *options: str, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on 127.0.0.1 and a free port, or *port* (its
    files in *where*, *options* on its command line): its URL and process.
    make test installs Debian's."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: make test installs it (apt-get)")
    for _ in range(5):  # the free port may be taken before Redis binds it
        chosen = port
        if chosen is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                chosen = probe.getsockname()[1]
        process = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(chosen), "--save", "",
             "--appendonly", "no", "--dir", str(where), *options],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if _answers(process, chosen):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{chosen}/0", process
    finally:
        process.terminate()
        process.wait()


def _answers(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether the redis-server *process* answers PING on *port* (within 10 s)."""
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.01)  # a process starting, outside any Trio run
    return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis: tests share it, each under its own key prefix
    (the ``redis`` fixture)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url


@pytest.fixture
def redis(redis_url: str) -> dict[str, str]:
    """Settings for a store in the session's Redis, under a key prefix of
    this test's own."""
    return {"store_url": redis_url, "store_key_prefix": f"t{uuid.uuid4().hex[:12]}:"}


async def wait_closed(key: str) -> Probe:
    """The probe for *key* once its generator was closed (fails after 10 s)."""
    probe = PROBES.setdefault(key, Probe())
    assert await trio.to_thread.run_sync(probe.closed.wait, 10), f"{key} never closed"
    return probe


def closed_port_target() -> str:
    """A 127.0.0.1 address nothing listens on, below the kernel's range of
    ports it hands out for port 0: a bridge or backend started meanwhile
    cannot be given it (one was, under make test-busy, and the test that
    started a backend there later found its port taken)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        first_ephemeral = int(f.read().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, first_ephemeral - 12000), first_ephemeral)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # something uses it: another
            return f"127.0.0.1:{port}"
    raise AssertionError("no free port below the ephemeral range")


StartBridge = Callable[..., Awaitable[str]]


def bridge_settings(
    tmp_path: Path,
    targets: dict[str, str | tuple[str, ...]],
    model_options: dict[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> Settings:
    """Settings for a bridge on a free port that writes nothing outside
    *tmp_path*; *targets* are a target or several per model, and
    *model_options* ModelSettings fields, by model."""
    options = model_options or {}
    models = {
        name: ModelSettings(name, (t,) if isinstance(t, str) else tuple(t), **options.get(name, {}))
        for name, t in targets.items()
    }
    settings.setdefault("webhook_secret_file", str(tmp_path / "webhook_secret"))
    return Settings(port=0, models=models, **settings)


@pytest.fixture
def start_bridge(
    nursery: trio.Nursery, demo_targets: dict[str, str], tmp_path: Path
) -> StartBridge:
    """Start a bridge on a free port in the test's nursery; returns its URL.
    ``targets`` adds or replaces models, ``store`` makes its store from
    its settings (else the settings' own: memory, or Redis with
    ``store_url``); other keywords are Settings."""

    async def start(
        targets: dict[str, str | tuple[str, ...]] | None = None,
        model_options: dict[str, dict[str, Any]] | None = None,
        store: Callable[[Settings], PredictionStore] | None = None,
        **settings: Any,
    ) -> str:
        all_targets = {**demo_targets, **(targets or {})}
        config = bridge_settings(tmp_path, all_targets, model_options, **settings)
        made = store(config) if store is not None else None
        port = await nursery.start(partial(serve, config, store=made))
        return f"http://127.0.0.1:{port}"

    return start


@pytest.fixture
async def client(start_bridge: StartBridge) -> Any:
    async with httpx.AsyncClient(base_url=await start_bridge(), timeout=30) as client:
        yield client


async def read_stream(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> tuple[list[Ev], bytes]:
    """Read a whole SSE stream; both real parsers must agree on it."""
    pieces = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].split(";")[0] == "text/event-stream"
        async for piece in response.aiter_raw():
            pieces.append(piece)
    events = spec_events(pieces)
    assert replicate_events(pieces) == events
    return events, b"".join(pieces)


async def create(
    client: httpx.AsyncClient,
    model: str,
    input: dict[str, Any],
    status: int = 201,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/models/{model}/predictions", json={"input": input}, headers=headers
    )
    assert response.status_code == status, response.text
    return response.json()


async def ended(client: httpx.AsyncClient, prediction_id: str) -> dict[str, Any]:
    """The prediction once it has ended: its stream read to ``done`` (the
    status is set before the log closes), then got. A backend that saw its
    call cancelled (:func:`wait_closed`) may be ahead of the bridge, which
    records ``canceled`` once the call's cancellation completed."""
    events, _ = await read_stream(client, f"/v1/predictions/{prediction_id}/stream")
    assert events[-1].event == "done"
    response = await client.get(f"/v1/predictions/{prediction_id}")
    return dict(response.json())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    """A CA made for the test, and a certificate for localhost and
    127.0.0.1 signed by it (PEM files)."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return ca, certfile, keyfile


async def poll_until(check: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    """Ask the server until *check* holds: state seen over HTTP has no event
    to wait on. Fails after *within* seconds."""
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - polling over HTTP
            await trio.sleep(0.05)


# tests/llm needs the llm extra (transformers, torch): `make test-llm`
# installs it and runs them; elsewhere they are not collected.
if importlib.util.find_spec("transformers") is None:
    collect_ignore = ["llm"]
