"""The model author's loop, with real model processes (``serve-model``)
behind a real bridge: edit the model file, restart its process, predict."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import trio

from bridge.sdk import Model, ModelServer
from tests.backends import ENV, read_until
from tests.conftest import StartBridge, create, ended

BEFORE = "def predict(prompt: str):\n    yield prompt\n"
AFTER = (
    "def predict(prompt: str, upper: bool = False):\n"
    "    yield prompt.upper() if upper else prompt\n"
)


async def serve_model(
    path: Path, port: int, name: str = "predict", model: str = "me/shout", *options: str
) -> tuple[trio.Process, int]:
    """``serve-model`` of *path*'s *name* as *model* on *port* (0: a free
    one), with *options*: the process, and its port once it listens."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge", "serve-model", f"{path.name}:{name}",
         "--name", model, "--port", str(port), "--stop-on-eof", *options],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd=path.parent,
    )  # fmt: skip
    assert process.stdout is not None
    found = await read_until(process.stdout, rb" listening on 127\.0\.0\.1:(\d+)")
    return process, int(found[1])


async def serve_broken(tmp_path: Path) -> tuple[trio.Process, str]:
    """BROKEN served as me/broken, saying why until stopped: its target."""
    (tmp_path / "broken.py").write_text(BROKEN)
    process, port = await serve_model(
        tmp_path / "broken.py", 0, "Broken", "me/broken", "--setup-failure-seconds", "inf"
    )
    return process, f"127.0.0.1:{port}"


async def stop(process: trio.Process) -> None:
    if process.returncode is None:
        process.kill()  # no goodbye to its clients, as a crash or a Ctrl-C'd restart
        await process.wait()


async def test_a_restarted_model_is_asked_again_before_its_next_prediction(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """An input added to the model file and its process restarted is
    taken by the very next prediction (it was refused for
    describe_ttl_seconds, 60 s by default); and the 422 before says which
    inputs the model has."""
    model = tmp_path / "shout.py"
    model.write_text(BEFORE)
    first, port = await serve_model(model, 0)
    try:
        url = await start_bridge(targets={"me/shout": f"127.0.0.1:{port}"})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = await create(client, "me/shout", {"prompt": "hi"})
            assert (await ended(client, made["id"]))["output"] == ["hi"]
            refused = await client.post(
                "/v1/models/me/shout/predictions", json={"input": {"prompt": "hi", "upper": True}}
            )
            assert refused.status_code == 422
            assert refused.json()["detail"] == (
                "input.upper: upper is not an input of this model (its inputs: prompt)"
            )
            await stop(first)
            model.write_text(AFTER)
            second, _ = await serve_model(model, port)
            try:
                made = await create(client, "me/shout", {"prompt": "hi", "upper": True})
                assert (await ended(client, made["id"]))["output"] == ["HI"]
            finally:
                await stop(second)
    finally:
        await stop(first)


BROKEN = """from bridge.sdk import Predictor


class Broken(Predictor):
    def setup(self):
        raise RuntimeError("weights file not found")

    def predict(self, prompt: str):
        yield prompt
"""


async def test_a_setup_that_fails_says_why_to_the_api_and_health(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """A model whose setup() raises keeps serving why (it used to exit, and
    the bridge said only 'failed to connect'): its predictions fail with
    the reason, /health and the model object carry it."""
    process, target = await serve_broken(tmp_path)
    try:
        url = await start_bridge(targets={"me/broken": target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = await create(client, "me/broken", {"prompt": "hi"})
            failed = await ended(client, made["id"])
            assert failed["status"] == "failed"
            assert failed["error"] == "model setup failed: weights file not found"
            health = (await client.get("/health")).json()
            assert health["setup_failed"] == {"me/broken": "weights file not found"}
            assert health["models"]["me/broken"] == "SETUP_FAILED" and not health["ready"]
            described = (await client.get("/v1/models/me/broken")).json()
            assert described["description"] == "setup failed: weights file not found"
    finally:
        await stop(process)


def test_a_setup_that_fails_exits_1_after_saying_so(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN)
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "serve-model", "broken.py:Broken", "--port", "0",
         "--setup-failure-seconds", "0"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("Traceback") == 1  # the model's, once
    assert "RuntimeError: weights file not found" in done.stderr


def shout(prompt: str) -> Iterator[str]:
    yield prompt


async def test_a_replica_whose_setup_failed_is_passed_over(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Of two replicas, one whose setup failed: predictions go to the
    other (one sent to the failed one is retried there), and /health shows
    that target SETUP_FAILED with why."""
    process, broken = await serve_broken(tmp_path)
    try:
        with ModelServer(Model("me/broken", shout)) as good:
            url = await start_bridge(targets={"me/broken": (broken, good.target)})
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for n in range(4):
                    made = await create(client, "me/broken", {"prompt": f"p{n}"})
                    assert (await ended(client, made["id"]))["output"] == [f"p{n}"]
                health = (await client.get("/health")).json()
        assert health["targets"]["me/broken"] == {broken: "SETUP_FAILED", good.target: "SERVING"}
        assert health["setup_failed"] == {"me/broken": "weights file not found"}
    finally:
        await stop(process)
