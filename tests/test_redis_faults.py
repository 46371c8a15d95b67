"""Redis that fails the bridges sharing it (issue 30, items 2 to 4): one
prediction has one history, whichever process a reader is on, and nothing
waits for Redis forever. Two real bridges on one real redis-server each,
stopped (SIGSTOP), filled (``maxmemory``) and restarted empty for real."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest
import trio

from bridge.store_redis.endings import ORPHANED, VANISHED
from tests.conftest import (
    StartBridge,
    create,
    poll_until,
    redis_server,
    wait_closed,
)
from tests.helpers import health_is_quick
from tests.sse_clients import Ev, spec_events


async def read_all(
    client: httpx.AsyncClient, path: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> list[Ev]:
    """A whole stream's events; started once the first output came."""
    pieces: list[bytes] = []
    started = False
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for piece in response.aiter_raw():
            pieces.append(piece)
            if not started and b"event: output" in b"".join(pieces):
                started = True
                task_status.started()
    return spec_events(pieces)


async def two_readers(
    a: httpx.AsyncClient, b: httpx.AsyncClient, path: str, meanwhile: Any
) -> tuple[list[Ev], list[Ev]]:
    """Read *path* on both bridges to its end, doing *meanwhile* once both
    read some output."""
    got: dict[str, list[Ev]] = {}

    async def read(name: str, client: httpx.AsyncClient, *, task_status: Any) -> None:
        got[name] = await read_all(client, path, task_status=task_status)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(read, "a", a)
            await nursery.start(read, "b", b)
            await meanwhile()
    return got["a"], got["b"]


def stream_path(prediction: dict[str, Any]) -> str:
    """Its stream on whichever bridge a client is for (its urls name the
    bridge that created it)."""
    return f"/v1/predictions/{prediction['id']}/stream"


def clients(one: str, two: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    return httpx.AsyncClient(base_url=one, timeout=30), httpx.AsyncClient(base_url=two, timeout=30)


async def test_a_lost_lease_leaves_one_history(start_bridge: StartBridge, tmp_path: Path) -> None:
    """Redis stopped for longer than the running bridge's lease, shorter
    than lease_seconds: the other bridge fails the prediction. The reader
    on the running bridge used to get the outputs Redis never had and a
    ``canceled`` done, while every other reader got fewer and ``failed``
    (the same ids naming different events). Now both read one history,
    the survivor's error included, and the backend is cancelled."""
    lease = 3.0  # the lease key lives lease / 2
    with redis_server(tmp_path) as (url, process):
        one = await start_bridge(store_url=url, store_lease_seconds=lease)
        two = await start_bridge(store_url=url, store_lease_seconds=lease)
        a, b = clients(one, two)
        async with a, b:
            key = f"lease-{uuid.uuid4().hex}"
            made = await create(a, "test/endless", {"key": key})

            async def stop_redis() -> None:
                os.kill(process.pid, signal.SIGSTOP)
                try:
                    await trio.sleep(lease / 2 + 0.5)  # the outage: past the lease key's life
                finally:
                    os.kill(process.pid, signal.SIGCONT)

            on_a, on_b = await two_readers(a, b, stream_path(made), stop_redis)
            assert on_a == on_b
            assert [e.event for e in on_a[-2:]] == ["error", "done"]
            assert ORPHANED in on_a[-2].data
            for client in (a, b):
                prediction = (await client.get(f"/v1/predictions/{made['id']}")).json()
                assert (prediction["status"], prediction["error"]) == ("failed", ORPHANED)
            await wait_closed(key)  # the cancel reached the backend


async def test_a_full_redis_fails_the_prediction_it_refused_and_only_it(
    start_bridge: StartBridge, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis at maxmemory (noeviction) refuses a 4.4 MB prediction's
    output: it fails, saying so, with one history on both bridges (the
    other's readers used to wait forever); creates get 503 while Redis is
    full, and once it has room again predictions run; no log line carries
    the refused payload."""
    with redis_server(tmp_path, "--maxmemory", "3mb", "--maxmemory-policy", "noeviction") as (
        url,
        _,
    ):
        one = await start_bridge(store_url=url)
        two = await start_bridge(store_url=url)
        a, b = clients(one, two)
        async with a, b:
            big = await create(a, "demo/echo", {"prompt": "abcdefghij " * 1000, "repeat": 400})

            async def nothing() -> None:
                pass

            on_a, on_b = await two_readers(a, b, stream_path(big), nothing)
            assert on_a == on_b
            assert [e.event for e in on_a[-2:]] == ["error", "done"]
            assert "refused to keep its output" in on_a[-2].data and "OOM" in on_a[-2].data
            for client in (a, b):
                prediction = (await client.get(f"/v1/predictions/{big['id']}")).json()
                assert prediction["status"] == "failed"
                assert "refused to keep its output" in prediction["error"]
            redis = coredis.Redis.from_url(url)
            async with redis:
                # Full to the brim (the big one's part, and whatever else).
                filled = 0
                with pytest.raises(coredis.exceptions.ResponseError, match="OOM"):
                    while True:
                        await redis.set(f"filler:{filled}", b"x" * 65536)
                        filled += 1
                full = await a.post(
                    "/v1/models/demo/echo/predictions", json={"input": {"prompt": "x"}}
                )
                assert full.status_code == 503, full.text
                assert "memory" in full.json()["detail"]
                await health_is_quick(one)
                # Room again: what the end of their retention does.
                await redis.delete(
                    [f"bridge:log:{big['id']}", *(f"filler:{n}" for n in range(filled))]
                )

            async def created() -> bool:
                response = await a.post(
                    "/v1/models/demo/echo/predictions", json={"input": {"prompt": "after"}}
                )
                return response.status_code == 201

            await poll_until(created)
            small = await create(b, "demo/echo", {"prompt": "small one"})
            events = await read_all(a, stream_path(small))
            assert [e.event for e in events][-1] == "done" and events[-1].data == "{}"
    longest = max((len(r.getMessage()) for r in caplog.records), default=0)
    assert longest < 2000, longest


async def test_redis_restarted_empty_ends_every_reader(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Redis restarted empty under a running prediction: its copy on the
    other bridge stayed ``processing`` forever (readers got only pings).
    Now every reader ends with an error within lease_seconds, and the
    backend is cancelled."""
    with contextlib.ExitStack() as redis:
        url, process = redis.enter_context(redis_server(tmp_path))
        one = await start_bridge(store_url=url, store_lease_seconds=2)
        two = await start_bridge(store_url=url, store_lease_seconds=2)
        a, b = clients(one, two)
        async with a, b:
            key = f"restart-{uuid.uuid4().hex}"
            made = await create(a, "test/endless", {"key": key})

            async def restart_redis() -> None:
                process.kill()
                await trio.to_thread.run_sync(process.wait)
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                redis.enter_context(redis_server(tmp_path, port=port))

            on_a, on_b = await two_readers(a, b, stream_path(made), restart_redis)
            assert [e.event for e in on_b[-2:]] == ["error", "done"]
            assert VANISHED in on_b[-2].data
            assert [e.event for e in on_a[-2:]] == ["error", "done"]
            await wait_closed(key)


def test_a_copy_that_lost_track_after_its_end_was_taken_closes_its_log() -> None:
    """A gap in a copy's last entry: its record (taken first) ended it, its
    log has no end; the copy's log closes with the error, readers wait for
    nothing more (it raised IllegalTransition, or left them waiting)."""
    from bridge.core.events import MemoryEventLog
    from bridge.core.predictions import Prediction
    from bridge.store_redis.endings import LOST_TRACK
    from bridge.store_redis.replicas import _end

    copy = Prediction(model="o/m", version="", input={}, events=MemoryEventLog())
    ended = copy.record() | {"status": "succeeded", "completed_at": 1.0}
    copy.refresh(ended)
    assert copy.done and not copy.events.closed
    _end(copy, LOST_TRACK)
    assert copy.events.closed and copy.status == "succeeded"
    assert copy.events.names(0) == {"error", "done"}
