"""``serve --workers N``: real processes on one port, sharing a real Redis.
Creates land on either worker, each prediction is served by both, a
worker that dies is replaced, and one signal stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import coredis
import httpx
import trio

from .backends import ENV, read_until
from .conftest import create, read_stream
from .helpers import BRIDGE, gone, wait_status


def config(tmp_path: Path, demo_targets: dict[str, str], redis: dict[str, str]) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'[models."demo/echo"]\ntargets = ["{demo_targets["demo/echo"]}"]\n'
        f'[store]\nurl = "{redis["store_url"]}"\nkey_prefix = "{redis["store_key_prefix"]}"\n'
        f'[webhooks]\nsecret_file = "{tmp_path / "secret"}"\n'
    )
    return path


async def start_workers(path: Path, workers: int = 2) -> tuple[trio.Process, str, list[bytes]]:
    """``serve --workers`` in its own session; its URL once every worker listens."""
    process = await trio.lowlevel.open_process(
        [*BRIDGE, "serve", "--config", str(path), "--port", "0", "--workers", str(workers)],
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )
    seen: list[bytes] = []
    try:
        port = (await read_until(process.stderr, rb"workers serving [\d.]+:(\d+)", seen))[1]
        await read_until(process.stderr, rb"(?s)(bridge listening.*){%d}" % workers, seen)
    except BaseException:
        process.kill()
        raise
    return process, f"http://127.0.0.1:{port.decode()}", seen


def workers_of(parent: int) -> set[int]:
    """The worker processes of *parent* (not multiprocessing's helpers)."""
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return {
        int(pid)
        for pid in found.stdout.split()
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }


async def processes_that_ran(redis: dict[str, str]) -> set[str]:
    client = coredis.Redis.from_url(redis["store_url"])
    async with client:
        keys = await client.keys(f"{redis['store_key_prefix']}p:*")
        records = await client.mget(keys) if keys else ()
    return {json.loads(r)["process"] for r in records if r is not None}


async def test_workers_share_a_port_and_every_prediction(
    tmp_path: Path, demo_targets: dict[str, str], redis: dict[str, str]
) -> None:
    process, url, _ = await start_workers(config(tmp_path, demo_targets, redis))
    try:
        made = []
        # A new connection each time: the kernel hands each to a worker
        # that is accepting, until both have taken some.
        for _ in range(200):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                response = await client.post(
                    "/v1/models/demo/echo/predictions", json={"input": {"prompt": "a b c"}}
                )
                assert response.status_code == 201, response.text
                made.append(response.json())
            if len(made) >= 4 and len(await processes_that_ran(redis)) == 2:
                break
        assert len(await processes_that_ran(redis)) == 2
        # Each one streams and gets the same on any connection, any worker.
        for prediction in made[-4:]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert [e.data for e in events if e.event == "output"] == ["a ", "b ", "c"]
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                got = (await client.get(prediction["urls"]["get"])).json()
            assert got["status"] == "succeeded" and got["output"] == ["a ", "b ", "c"]
        children = workers_of(process.pid)
        assert len(children) == 2
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
        assert all(gone(pid) for pid in children)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)


async def test_a_worker_that_dies_is_replaced(
    tmp_path: Path, demo_targets: dict[str, str], redis: dict[str, str]
) -> None:
    process, url, seen = await start_workers(config(tmp_path, demo_targets, redis))
    try:
        first = workers_of(process.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await read_until(process.stderr, rb"exited \(status (-9|unknown)\): replacing it", seen)
        await read_until(process.stderr, rb"(?s)replacing it.*bridge listening", seen)
        now = workers_of(process.pid)
        assert len(now) == 2 and victim not in now
        for _ in range(4):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                response = await client.post(
                    "/v1/models/demo/echo/predictions", json={"input": {"prompt": "x"}}
                )
            assert response.status_code == 201
        process.send_signal(signal.SIGINT)  # as Ctrl-C: the parent passes it on
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)


async def test_workers_need_a_shared_store_they_can_reach(
    tmp_path: Path, demo_targets: dict[str, str]
) -> None:
    path = tmp_path / "bridge.toml"
    model = f'[models."demo/echo"]\ntargets = ["{demo_targets["demo/echo"]}"]\n'
    serve = [*BRIDGE, "serve", "--config", str(path), "--port", "0", "--workers", "2"]
    path.write_text(model)
    done = await trio.run_process(serve, capture_stderr=True, check=False, env=ENV)
    assert done.returncode == 2
    assert b"bridge.toml: [server] workers = 2 needs [store] url" in done.stderr
    path.write_text(model + f'[store]\nurl = "unix://{tmp_path}/nothing.sock"\n')
    done = await trio.run_process(serve, capture_stderr=True, check=False, env=ENV)
    assert done.returncode == 2
    assert done.stderr.startswith(b"error: [store] url: cannot reach Redis at unix://")
    assert done.stderr.count(b"\n") == 1


async def test_run_demo_with_workers_runs_its_own_redis_and_stops_it() -> None:
    """What make run WORKERS=2 runs: no [store] url, so a redis-server of
    its own, gone with everything else at Ctrl-C."""
    run = await trio.lowlevel.open_process(
        [*BRIDGE, "run-demo", "--stop-on-eof", "--host", "127.0.0.1", "--port", "0",
         "--workers", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )  # fmt: skip
    seen: list[bytes] = []
    try:
        sock = (await read_until(run.stderr, rb"started redis-server at unix://(\S+)", seen))[1]
        port = (await read_until(run.stderr, rb"workers serving [\d.]+:(\d+)", seen))[1]
        await read_until(run.stderr, rb"(?s)(bridge listening.*){2}", seen)
        url = f"http://127.0.0.1:{port.decode()}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = await create(client, "demo/echo", {"prompt": "two workers"})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            events, _ = await read_stream(client, made["urls"]["stream"])
        assert [e.data for e in events if e.event == "output"] == ["two ", "workers"]
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C at the terminal
        with trio.fail_after(30):
            assert await run.wait() == 0
        assert not await trio.Path(sock.decode()).exists()  # its directory went with it
        found = await trio.run_process(["pgrep", "-f", sock], capture_stdout=True, check=False)
        assert found.returncode == 1, found.stdout  # no redis-server left
    finally:
        if run.returncode is None:
            os.killpg(run.pid, signal.SIGKILL)


async def test_the_predictions_of_a_worker_that_dies_fail_for_their_readers(
    tmp_path: Path, demo_targets: dict[str, str], redis: dict[str, str]
) -> None:
    """A worker killed mid-prediction: within lease_seconds another one
    marks it failed, and its readers (on any worker) get error and done."""
    path = config(tmp_path, {**demo_targets, "demo/echo": demo_targets["test/endless"]}, redis)
    path.write_text(path.read_text().replace("[store]\n", "[store]\nlease_seconds = 1\n"))
    process, url, _ = await start_workers(path)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = await create(client, "demo/echo", {"key": f"dies-{uuid.uuid4().hex}"})
            await wait_status(client, made, "processing")
            runner = json.loads(
                await redis_get(redis, f"{redis['store_key_prefix']}p:{made['id']}")
            )["process"]
            os.kill(int(runner.split("-")[-2]), signal.SIGKILL)
        # A new connection: the one above went to the worker now gone.
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            with trio.fail_after(10):
                events, _ = await read_stream(client, made["urls"]["stream"])
            assert events[-2].event == "error" and "process running this" in events[-2].data
            assert events[-1].event == "done" and events[-1].data == '{"reason":"error"}'
            got = (await client.get(made["urls"]["get"])).json()
            assert got["status"] == "failed"
            assert got["error"] == "the bridge process running this prediction stopped; retry it"
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)


async def redis_get(redis: dict[str, str], key: str) -> bytes:
    client = coredis.Redis.from_url(redis["store_url"])
    async with client:
        value = await client.get(key)
    assert value is not None
    return value
