"""The commands users type, run as real processes."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.backends import read_until
from tests.conftest import StartBridge, create, poll_until, read_stream
from tests.helpers import gone, kill_what_is_left, start_run_demo

BRIDGE = [sys.executable, "-m", "bridge"]
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes keep their state (the webhook secret) in tmp_path."""
    monkeypatch.setitem(ENV, "XDG_STATE_HOME", str(tmp_path / "state"))


async def _start(args: list[str]) -> trio.Process:
    # With a pipe as stdin and --stop-on-eof, it ends with this test run.
    return await trio.lowlevel.open_process(
        [sys.executable, "-m", "bridge", *args[:1], "--stop-on-eof", *args[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )


async def _stop(proc: trio.Process, sig: int) -> int:
    proc.send_signal(sig)
    with trio.fail_after(20):
        return await proc.wait()


async def test_demo_backend_and_serve_with_a_config_file(tmp_path: Path) -> None:
    backend = await _start(
        ["demo-backend", "--host", "127.0.0.1", "--port", "0", "--model", "demo/echo"]
    )
    try:
        out: list[bytes] = []
        target = (await read_until(backend.stdout, rb"demo/echo listening on (\S+)\n", out))[1]
        config = tmp_path / "bridge.toml"
        config.write_text(f'[models."demo/echo"]\ntargets = ["{target.decode()}"]\n')
        bridge = await _start(
            [
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log-format",
                "json",
            ]
        )
        try:
            err: list[bytes] = []
            port = (await read_until(bridge.stderr, rb"Running on http://[\d.]+:(\d+)", err))[1]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port.decode()}") as client:
                prediction = await create(client, "demo/echo", {"prompt": "from a config file"})
                events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert "".join(e.data for e in events if e.event == "output") == "from a config file"
            # Structured logs: JSON lines, those about it carrying its id.
            await read_until(bridge.stderr, rb'"status": "succeeded"', err)
            lines = [json.loads(line) for line in b"".join(err).decode().splitlines()]
            mine = [line for line in lines if line.get("prediction_id") == prediction["id"]]
            assert [line["message"] for line in mine] == [
                f"prediction {prediction['id']} created for demo/echo",
                f"prediction {prediction['id']} succeeded",
            ]
            assert mine[-1]["model"] == "demo/echo" and mine[-1]["level"] == "info"
        finally:
            assert await _stop(bridge, signal.SIGINT) == 0
    finally:
        assert await _stop(backend, signal.SIGTERM) == 0


async def test_run_demo_drains_a_story_on_ctrl_c_and_stops_everything() -> None:
    run, url, backend_pid = await start_run_demo()
    async with httpx.AsyncClient(base_url=url) as client:
        prediction = await create(
            client, "demo/story", {"prompt": "Tell me a story", "max_words": 20, "delay_ms": 50}
        )
        async with trio.open_nursery() as nursery:
            got: dict = {}

            async def read() -> None:
                got["events"], _ = await read_stream(client, prediction["urls"]["stream"])

            nursery.start_soon(read)
            await trio.sleep(0.2)  # mid-story
            os.killpg(run.pid, signal.SIGINT)
    # The story was allowed to finish (drain), then everything stopped.
    assert got["events"][-1].event == "done" and got["events"][-1].data == "{}"
    assert len([e for e in got["events"] if e.event == "output"]) >= 3
    with trio.fail_after(20):
        assert await run.wait() == 0
    assert not await trio.Path(f"/proc/{backend_pid}").exists()  # stopped and reaped


async def test_the_demo_backend_ends_with_run_demo_even_on_sigkill() -> None:
    run, _, backend_pid = await start_run_demo()
    try:
        run.kill()
        assert await run.wait() == -signal.SIGKILL
        # Gone, and with it every socket it held (a zombie holds none).
        with trio.fail_after(10):
            while not gone(backend_pid):  # noqa: ASYNC110 - no event for another's exit
                await trio.sleep(0.05)
    finally:  # whatever failed, nothing of this test runs on
        kill_what_is_left(run, backend_pid)


async def test_a_process_started_with_stop_on_eof_ends_when_its_parent_does() -> None:
    backend = await _start(["demo-backend", "--host", "127.0.0.1", "--port", "0"])
    try:
        await read_until(backend.stdout, rb"demo/story listening", [])
        assert backend.stdin is not None
        await backend.stdin.aclose()  # what the kernel does when the parent dies
        with trio.fail_after(10):
            assert await backend.wait() == 0
    finally:
        if backend.returncode is None:
            backend.kill()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '[models."nope"]\ntargets = ["127.0.0.1:1"]\n',
            "model name 'nope' is not of the form owner/name",
        ),
        (
            '[models."demo/echo"]\ntargets = ["127.0.0.1:1"]\n[server]\nport = "eighty"\n',
            "[server] port: expected `int`, got `str`",
        ),
    ],
)
async def test_bad_config_exits_2_with_a_message(tmp_path: Path, text: str, said: str) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(text)
    result = await trio.run_process(
        [sys.executable, "-m", "bridge", "serve", "--config", str(config)],
        capture_stderr=True,
        check=False,
        env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.decode().strip() == f"error: {config}: {said}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_a_second_signal_during_the_drain_stops_now(sig: signal.Signals) -> None:
    """Twice Ctrl-C (or two SIGTERMs, as ``kill`` of make's process group
    delivers) while a long prediction drains: it stops at once, without a
    traceback, and leaves no process behind."""
    run, url, backend_pid = await start_run_demo()
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            long = {"prompt": "on and on", "repeat": 1000, "delay_ms": 100}  # 300 s
            prediction = await create(client, "demo/echo", long)

            async def running() -> bool:
                got = await client.get(prediction["urls"]["get"])
                return got.json()["status"] == "processing"

            await poll_until(running)
        os.killpg(run.pid, sig)
        err: list[bytes] = []
        await read_until(run.stderr, rb"shutting down \(again to stop now\)", err)
        os.killpg(run.pid, sig)
        # Well before drain_seconds (10 s) would have let it go.
        with trio.fail_after(8):
            assert await run.wait() == 0
        while data := await run.stderr.receive_some():
            err.append(data)
        said = b"".join(err).decode()
        assert "again: stopping now" in said
        assert "Traceback" not in said and "KeyboardInterrupt" not in said
        assert gone(backend_pid)
    finally:
        kill_what_is_left(run, backend_pid)


async def test_run_demo_takes_a_config_file(tmp_path: Path) -> None:
    """Settings and models of its own beside the demo ones: here the CORS
    the seed's cross-origin example needs, and a deployment of a demo model."""
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[cors]\nallow_origins = ["http://app.example"]\n'
        '[deployments."acme/teller"]\nmodel = "demo/echo"\n'
    )
    run, url, backend_pid = await start_run_demo("--config", str(config))
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            origin = {"Origin": "http://app.example"}
            models = await client.get("/v1/models", headers=origin)
            assert models.headers["access-control-allow-origin"] == "http://app.example"
            assert {m["name"] for m in models.json()["results"]} == {"echo", "story", "batch"}
            deployment = (await client.get("/v1/deployments/acme/teller")).json()
            assert deployment["current_release"]["model"] == "demo/echo"
        os.killpg(run.pid, signal.SIGTERM)
        with trio.fail_after(20):
            assert await run.wait() == 0
    finally:
        kill_what_is_left(run, backend_pid)


async def test_run_demo_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[deployments."acme/teller"]\nmodel = "demo/none"\n')
    result = await trio.run_process(
        [*BRIDGE, "run-demo", "--port", "0", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith(f'error: {config}: [deployments."acme/teller"]')
    assert result.stdout == b""  # no backend was started


async def test_help_lists_every_command_in_plain_text() -> None:
    result = await trio.run_process([*BRIDGE, "--help"], capture_stdout=True, env=ENV)
    text = result.stdout.decode()
    note = text.index("take --stop-on-eof")
    for command in ("serve", "demo-backend", "serve-model", "run-demo", "predict"):
        assert text.index(f"python -m bridge {command} ") < note, command
    assert "``" not in text and "::" not in text  # no reST markup
    assert text.startswith("usage: python -m bridge ")
    script = Path(sys.executable).parent / "grpc-sse-bridge"  # the installed command
    result = await trio.run_process([script, "--help"], capture_stdout=True, env=ENV)
    assert result.stdout.decode().startswith("usage: grpc-sse-bridge ")


@pytest.mark.parametrize("command", ["serve", "run-demo", "demo-backend", "serve-model"])
async def test_a_port_in_use_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    """Whatever holds the port, even a gRPC server (which sets SO_REUSEPORT,
    so a second one would share its port and split its requests)."""
    import grpc

    holder = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    model = tmp_path / "model.py"
    model.write_text("def predict(prompt: str) -> str:\n    return prompt\n")
    config = tmp_path / "bridge.toml"
    config.write_text('[models."demo/echo"]\ntargets = ["127.0.0.1:1"]\n')
    args = {
        "serve": ["serve", "--config", str(config)],
        "run-demo": ["run-demo"],
        "demo-backend": ["demo-backend", "--model", "demo/echo"],
        "serve-model": ["serve-model", f"{model}:predict"],
    }[command]
    try:
        with trio.fail_after(30):
            result = await trio.run_process(
                [*BRIDGE, *args, "--port", str(port)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=ENV,
            )
    finally:
        holder.stop(None)
    assert result.returncode == 2, result.stderr.decode()
    said = f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    errors = result.stderr.decode()
    assert errors.splitlines()[-1] == said, errors  # after the start-up's log lines
    assert "Traceback" not in errors


async def test_a_model_server_whose_predict_is_stuck_still_exits(
    tmp_path: Path, start_bridge: StartBridge
) -> None:
    """A sync predict that never returns (stuck in a call) cannot be
    interrupted: SIGTERM stops the server, the call gets STUCK_CALL_SECONDS
    (5), and the process exits without it instead of waiting for ever."""
    model = tmp_path / "stuck.py"
    model.write_text(
        "import threading\n"
        "def predict(prompt: str):\n"
        "    yield 'first '\n"
        "    threading.Event().wait()  # stuck for good\n"
    )
    server = await _start(
        ["serve-model", f"{model}:predict", "--name", "test/stuck", "--port", "0"]
    )
    try:
        assert server.stdout is not None
        seen: list[bytes] = []
        target = (await read_until(server.stdout, rb"listening on (\S+)\n", seen))[1].decode()
        url = await start_bridge({"test/stuck": target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            prediction = await create(client, "test/stuck", {"prompt": "x"})

            async def outputs() -> bool:
                got = (await client.get(prediction["urls"]["get"])).json()
                return bool(got["output"])

            await poll_until(outputs)  # the model is inside predict, stuck
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await server.wait() == 0
    finally:
        if server.returncode is None:
            server.kill()
