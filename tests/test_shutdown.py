"""Graceful shutdown: drain, then cancel what is left, and leave nothing."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import trio

from bridge.server import serve
from bridge.service import SHUTDOWN_ERROR
from tests.conftest import bridge_settings, create, read_stream
from tests.test_api import assert_problem


async def test_drain_then_cancel_then_exit(demo_targets: dict, tmp_path: Path) -> None:
    threads_before = {t.name for t in threading.enumerate()}
    stop = trio.Event()
    settings = bridge_settings(
        tmp_path, demo_targets, drain_seconds=1.5, shutdown_timeout_seconds=2
    )
    got: dict = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(settings, shutdown_trigger=stop.wait, task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            short = await create(client, "demo/echo", {"prompt": "just in time", "delay_ms": 200})
            long = await create(client, "test/endless", {"key": uuid.uuid4().hex})

            async def read(name: str, prediction: dict) -> None:
                got[name], _ = await read_stream(client, prediction["urls"]["stream"])

            with trio.fail_after(15):
                async with trio.open_nursery() as readers:
                    readers.start_soon(read, "short", short)
                    readers.start_soon(read, "long", long)
                    await trio.sleep(0.1)
                    stop.set()  # SIGTERM
                    await trio.sleep(0.1)
                    health = await client.get("/health")
                    assert health.status_code == 503
                    assert health.json()["status"] == "draining"
                    refused = await client.post(
                        "/v1/models/demo/echo/predictions", json={"input": {"prompt": "too late"}}
                    )
                    assert_problem(refused, 503)
                    assert refused.headers["Retry-After"] == "1"
    # Finished within the drain: as if nothing happened.
    assert got["short"][-1].data == "{}"
    assert "".join(e.data for e in got["short"] if e.event == "output") == "just in time"
    # Still running after it: error (saying to retry) + done.
    assert [e.event for e in got["long"][-2:]] == ["error", "done"]
    assert json.loads(got["long"][-2].data) == {"detail": SHUTDOWN_ERROR}
    assert "retry" in SHUTDOWN_ERROR
    # serve() returned; nothing of the bridge is left running.
    assert {t.name for t in threading.enumerate()} - threads_before == set()
