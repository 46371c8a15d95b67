"""Graceful shutdown: drain, then cancel what is left, and leave nothing."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import trio

from bridge.core.supervisor import SHUTDOWN_ERROR
from bridge.server import serve
from tests.conftest import bridge_settings, create, open_gate, poll_until, read_stream
from tests.helpers import assert_problem, wait_status


async def test_drain_then_cancel_then_exit(transport: dict, tmp_path: Path) -> None:
    """SIGTERM with one prediction that finishes during the drain, one that
    never ends, and one still queued (its model at its limit): the first
    ends as if nothing happened, the other two fail with a retryable
    error, and serve() returns leaving nothing behind; over either of
    bridge.v1's transports (on Stream, the first two share one call)."""
    threads_before = {t.name for t in threading.enumerate()}
    stop = trio.Event()
    settings = bridge_settings(
        tmp_path,
        transport,
        {"test/endless": {"max_running": 1}},
        drain_seconds=3,
        shutdown_timeout_seconds=2,
    )
    gate_key = uuid.uuid4().hex
    got: dict = {}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(settings, shutdown_trigger=stop.wait, task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            short = await create(client, "test/gate", {"key": gate_key})
            long = await create(client, "test/endless", {"key": uuid.uuid4().hex})
            queued = await create(client, "test/endless", {"key": uuid.uuid4().hex})

            async def read(name: str, prediction: dict) -> None:
                got[name], _ = await read_stream(client, prediction["urls"]["stream"])

            async def draining() -> bool:
                return (await client.get("/health")).status_code == 503

            with trio.fail_after(20):
                async with trio.open_nursery() as readers:
                    for name, prediction in [("short", short), ("long", long), ("queued", queued)]:
                        readers.start_soon(read, name, prediction)
                    for prediction in (short, long):
                        await wait_status(client, prediction, "processing")
                    stop.set()  # SIGTERM
                    await poll_until(draining)
                    health = await client.get("/health")
                    assert health.json()["status"] == "draining"
                    refused = await client.post(
                        "/v1/models/demo/echo/predictions", json={"input": {"prompt": "too late"}}
                    )
                    assert_problem(refused, 503)
                    assert refused.headers["Retry-After"] == "1"
                    open_gate(gate_key)  # it finishes within the drain
    # Finished within the drain: as if nothing happened.
    assert got["short"][-1].data == "{}"
    assert "".join(e.data for e in got["short"] if e.event == "output") == "waiting through"
    # Still running after it, or still queued: error (saying to retry) + done.
    for name in ("long", "queued"):
        assert [e.event for e in got[name][-2:]] == ["error", "done"], name
        assert json.loads(got[name][-2].data) == {"detail": SHUTDOWN_ERROR}
    assert [e.event for e in got["queued"]] == ["error", "done"]  # it never ran
    # serve() returned; nothing of the bridge is left running.
    # (Trio's idle worker threads are named "Trio thread N": a thread
    # still doing a job of the bridge's bears the job's name.)
    left = {t.name for t in threading.enumerate()} - threads_before
    assert {name for name in left if not name.startswith("Trio thread ")} == set()
