"""Predictions shared through a real Redis: bridges (real hypercorn servers)
given the same ``[store] url`` serve each other's predictions: get, list,
stream from the start or resumed, cancel; a restarted bridge finds them
again; retention becomes expiry. The store's contract itself is in
tests/test_store.py."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import coredis
import httpx
import pytest
import trio
import trio.testing

from bridge.config import ConfigError, Settings
from bridge.core.events import OutputBatch
from bridge.core.predictions import Prediction, owner_of
from bridge.errors import Overloaded, StoreUnavailable
from bridge.http.replicate_json import prediction_json
from bridge.server import serve
from bridge.store_redis import codec, open_redis_store, writer
from bridge.store_redis.endings import ORPHANED
from bridge.store_redis.scripts import WRITE

from .conftest import (
    GATES,
    StartBridge,
    bridge_settings,
    create,
    poll_until,
    read_stream,
    redis_server,
    wait_closed,
)
from .helpers import assert_problem, wait_status

TOKEN, OTHER = "r8_shared_token_one", "r8_shared_token_two"


async def test_a_prediction_made_on_one_bridge_is_served_by_another(
    start_bridge: StartBridge, redis: dict[str, str]
) -> None:
    one, two = await start_bridge(**redis), await start_bridge(**redis)
    async with (
        httpx.AsyncClient(base_url=one, timeout=30) as a,
        httpx.AsyncClient(base_url=two, timeout=30) as b,
    ):
        made = await create(a, "demo/echo", {"prompt": "one two three four"})
        # Streamed on the other bridge, live, from the start: the same
        # bytes (ids included) as on the bridge running it.
        there, there_raw = await read_stream(b, f"/v1/predictions/{made['id']}/stream")
        here, here_raw = await read_stream(a, f"/v1/predictions/{made['id']}/stream")
        assert there_raw == here_raw
        assert [e.event for e in there][-1] == "done"
        # Resumed there after any event read on the bridge running it.
        middle = here[2]
        resumed, _ = await read_stream(
            b, f"/v1/predictions/{made['id']}/stream", {"Last-Event-ID": middle.id}
        )
        assert resumed == there[3:] == here[3:]
        got = (await b.get(f"/v1/predictions/{made['id']}")).json()
        assert got["status"] == "succeeded"
        assert got["output"] == (await a.get(f"/v1/predictions/{made['id']}")).json()["output"]
        assert got["input"] == {"prompt": "one two three four"}
        assert got["urls"]["get"].startswith(two)  # URLs of the bridge asked
        listed = (await b.get("/v1/predictions")).json()["results"]
        assert [p["id"] for p in listed] == [made["id"]]


async def test_a_cancel_on_another_bridge_reaches_the_backend(
    start_bridge: StartBridge, redis: dict[str, str]
) -> None:
    one, two = await start_bridge(**redis), await start_bridge(**redis)
    key = f"shared-{uuid.uuid4().hex}"
    async with (
        httpx.AsyncClient(base_url=one, timeout=30) as a,
        httpx.AsyncClient(base_url=two, timeout=30) as b,
    ):
        made = await create(a, "test/endless", {"key": key})
        await wait_status(b, made, "processing")
        canceled = await b.post(f"/v1/predictions/{made['id']}/cancel")
        assert canceled.status_code == 200
        assert canceled.json()["status"] == "canceled"
        await wait_closed(key)  # the backend's generator was closed
        events, _ = await read_stream(b, f"/v1/predictions/{made['id']}/stream")
        assert events[-1].event == "done" and events[-1].data == '{"reason":"canceled"}'
        assert (await a.get(f"/v1/predictions/{made['id']}")).json()["status"] == "canceled"


async def test_readers_on_another_bridge_see_a_long_prediction_live(
    start_bridge: StartBridge, redis: dict[str, str]
) -> None:
    """Readers of a running prediction on the other bridge get each event
    as it is written, keep-alive comments while it is idle, and the final
    status with the end."""
    one, two = await start_bridge(**redis), await start_bridge(ping_seconds=0.1, **redis)
    key = f"live-{uuid.uuid4().hex}"
    async with (
        httpx.AsyncClient(base_url=one, timeout=30) as a,
        httpx.AsyncClient(base_url=two, timeout=30) as b,
    ):
        made = await create(a, "test/gate", {"key": key})
        url = f"/v1/predictions/{made['id']}/stream"
        async with b.stream("GET", url) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line == "data: waiting ":
                    break
            async for line in lines:
                if line == ": ping":
                    break
            GATES.setdefault(key, threading.Event()).set()
            rest = [line async for line in lines]
        assert "data: through" in rest and "event: done" in rest
        got = (await b.get(f"/v1/predictions/{made['id']}")).json()
        assert got["status"] == "succeeded" and got["metrics"]["predict_time"] > 0


async def test_a_restarted_bridge_finds_what_the_last_one_made(
    demo_targets: dict[str, str], tmp_path: Path, redis: dict[str, str]
) -> None:
    config = bridge_settings(tmp_path, demo_targets, None, **redis)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as a:
            made = await create(a, "demo/echo", {"prompt": "kept in redis"})
            _, raw = await read_stream(a, f"/v1/predictions/{made['id']}/stream")
        stop.set()
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        port = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            got = (await c.get(f"/v1/predictions/{made['id']}")).json()
            assert got["status"] == "succeeded" and got["output"] == ["kept ", "in ", "redis"]
            _, raw_after = await read_stream(c, f"/v1/predictions/{made['id']}/stream")
            assert raw_after == raw
            listed = (await c.get("/v1/predictions")).json()["results"]
            assert made["id"] in [p["id"] for p in listed]
        stop.set()


async def test_each_token_sees_only_its_own_and_redis_holds_no_token(
    start_bridge: StartBridge, redis: dict[str, str], redis_url: str
) -> None:
    tokens = frozenset({TOKEN, OTHER})
    one = await start_bridge(auth_tokens=tokens, **redis)
    two = await start_bridge(auth_tokens=tokens, **redis)
    mine = {"Authorization": f"Bearer {TOKEN}"}
    theirs = {"Authorization": f"Bearer {OTHER}"}
    async with (
        httpx.AsyncClient(base_url=one, timeout=30) as a,
        httpx.AsyncClient(base_url=two, timeout=30) as b,
    ):
        made = await create(a, "demo/echo", {"prompt": "private"}, headers=mine)
        await read_stream(a, f"/v1/predictions/{made['id']}/stream")
        assert (await b.get(f"/v1/predictions/{made['id']}", headers=mine)).status_code == 200
        assert_problem(await b.get(f"/v1/predictions/{made['id']}", headers=theirs), 404)
        assert_problem(await b.post(f"/v1/predictions/{made['id']}/cancel", headers=theirs), 404)
        listed = (await b.get("/v1/predictions", headers=mine)).json()["results"]
        assert [p["id"] for p in listed] == [made["id"]]
        assert (await b.get("/v1/predictions", headers=theirs)).json()["results"] == []
    client = coredis.Redis.from_url(redis_url)
    async with client:
        prefix = redis["store_key_prefix"]
        keys = await client.keys(f"{prefix}*")
        assert keys
        for key in keys:
            kind = await client.type(key)
            if kind == b"string":
                assert TOKEN.encode() not in (await client.get(key) or b"")
            assert TOKEN.encode() not in key


async def test_retention_becomes_expiry_and_counts_delete_the_oldest(
    redis: dict[str, str], redis_url: str
) -> None:
    settings = Settings(port=0, retention_seconds=600, metadata_retention_seconds=7200, **redis)
    async with open_redis_store(settings) as store:
        prediction = Prediction(model="o/m", version="", input={"x": 1}, events=store.new_log())
        await store.add(prediction)
        await store.flush()
        client = coredis.Redis.from_url(redis_url)
        async with client:
            key = partial(str.format, settings.store_key_prefix + "{}:" + prediction.id)
            # Running: nothing expires.
            assert await client.ttl(key("p")) == -1 and await client.ttl(key("in")) == -1
            prediction.succeed()
            store.ended(prediction)
            await store.flush()
            assert 7190 < await client.ttl(key("p")) <= 7200  # metadata
            for data in ("in", "log"):
                assert 590 < await client.ttl(key(data)) <= 600
            # Once the data expired, it is shown removed, metadata kept.
            await client.delete([key("in"), key("log")])
            again = await store.get(prediction.id)
            assert again.data_removed and again.status == "succeeded"
            assert prediction_json(again, "http://x")["output"] is None


async def test_a_process_bounds_what_it_keeps_of_the_predictions_it_runs(
    redis: dict[str, str],
) -> None:
    """max_retained_bytes is per process, for its running predictions:
    ended ones are Redis' to keep (and its maxmemory's to bound)."""
    settings = Settings(port=0, max_retained_bytes=1000, **redis)
    async with open_redis_store(settings) as store:

        async def add(size: int) -> Prediction:
            prediction = Prediction(
                model="o/m", version="", input={"x": "x" * size}, events=store.new_log()
            )
            await store.add(prediction)
            return prediction

        first = await add(400)
        await add(400)
        with pytest.raises(Overloaded):
            await add(400)  # the running ones fill it
        first.succeed()
        store.ended(first)
        await store.flush()
        assert not first.data_removed  # Redis keeps it, this process does not
        await add(400)  # room is back


async def test_a_bridge_that_cannot_reach_redis_says_so_at_start(
    tmp_path: Path, demo_targets: dict[str, Any]
) -> None:
    config = bridge_settings(tmp_path, demo_targets, None, store_url=f"unix://{tmp_path}/no.sock")
    with pytest.raises(ConfigError, match=r"\[store\] url: cannot reach Redis at unix://"):
        await serve(config)


async def test_while_redis_is_away_creates_get_503_and_nothing_is_made(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as (url, process):
        base = await start_bridge(store_url=url)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            made = await create(client, "demo/echo", {"prompt": "before"})
            await read_stream(client, made["urls"]["stream"])
            process.terminate()
            await trio.to_thread.run_sync(process.wait)
            response = await client.post(
                "/v1/models/demo/echo/predictions", json={"input": {"prompt": "during"}}
            )
            problem = assert_problem(response, 503)
            assert problem["title"] == "Store unavailable"
            assert "Redis" in problem["detail"] and response.headers["Retry-After"] == "1"


async def test_a_process_that_lost_its_lease_stops_what_survivors_ended(
    redis: dict[str, str], redis_url: str
) -> None:
    """A process away from Redis longer than its lease (here: its lease key
    deleted) finds the survivors may have failed its predictions: it stops
    them and never writes over what the survivors wrote."""
    settings = Settings(port=0, store_lease_seconds=0.4, **redis)
    async with open_redis_store(settings) as away, open_redis_store(settings) as survivor:
        stopped = trio.Event()
        away.serve_cancels(lambda prediction_id, error: stopped.set())
        prediction = Prediction(model="o/m", version="", input={}, events=away.new_log())
        await away.add(prediction)
        client = coredis.Redis.from_url(redis_url)
        async with client:
            prefix = settings.store_key_prefix
            await client.delete([f"{prefix}lease:{away.process}"])
            with trio.fail_after(5):
                await stopped.wait()  # it noticed, and stopped its prediction
                copy = await survivor.get(prediction.id)
                await copy.events.wait_closed()  # the survivor failed it
            assert copy.status == "failed" and copy.error == ORPHANED
            # Here it ends as it ended in Redis: one history.
            await prediction.events.wait_closed()
            assert prediction.status == "failed" and prediction.error == ORPHANED
            assert prediction.events.read(0) == copy.events.read(0)
            if not prediction.done:  # what its task does once stopped
                prediction.cancel()
            away.ended(prediction)
            await away.flush()
            again = await survivor.get(prediction.id)
            assert again.status == "failed" and again.error == ORPHANED


async def test_when_redis_stops_mid_stream_every_stream_ends_and_creates_get_503(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """Redis gone for lease_seconds: readers on the bridge running the
    prediction and on the other one get error and done; nothing hangs."""
    with redis_server(tmp_path) as (url, process):
        one = await start_bridge(store_url=url, store_lease_seconds=1, shutdown_timeout_seconds=1)
        two = await start_bridge(store_url=url, store_lease_seconds=1, shutdown_timeout_seconds=1)
        key = f"away-{uuid.uuid4().hex}"
        async with (
            httpx.AsyncClient(base_url=one, timeout=30) as a,
            httpx.AsyncClient(base_url=two, timeout=30) as b,
        ):
            made = await create(a, "test/gate", {"key": key})
            path = f"/v1/predictions/{made['id']}/stream"
            ends: dict[str, list[str]] = {}

            async def read(name: str, client: httpx.AsyncClient, *, task_status: Any) -> None:
                async with client.stream("GET", path) as response:
                    lines = response.aiter_lines()
                    async for line in lines:
                        if line == "data: waiting ":
                            break
                    task_status.started()
                    ends[name] = [line async for line in lines if line.startswith("event:")]

            with trio.fail_after(15):
                async with trio.open_nursery() as nursery:
                    await nursery.start(read, "running", a)
                    await nursery.start(read, "copy", b)
                    process.terminate()
                    await trio.to_thread.run_sync(process.wait)
            ended = ["event: error", "event: done"]
            assert ends == {"running": ended, "copy": ended}
            assert_problem(
                await a.post("/v1/models/demo/echo/predictions", json={"input": {"prompt": "x"}}),
                503,
            )
        GATES.setdefault(key, threading.Event()).set()


async def test_copies_follow_through_a_span_written_twice_and_a_status_alone(
    redis: dict[str, str], redis_url: str
) -> None:
    """A write retried after a timeout can put a span in the log twice; a
    status can change with no event (Started). Copies elsewhere take the
    second and skip the first; two readers asking at once share one copy."""
    settings = Settings(port=0, **redis)
    async with open_redis_store(settings) as here, open_redis_store(settings) as there:
        prediction = Prediction(model="o/m", version="", input={}, events=here.new_log())
        await here.add(prediction)
        await here.flush()
        first, second = await both_at_once(there.get, prediction.id)
        assert first is second  # one copy, however many ask at once
        prediction.start()  # a status, no event
        here.changed(prediction)  # as its runner tells the store
        await here.flush()
        with trio.fail_after(5):
            while first.status != "processing":  # noqa: ASYNC110 - no event here for another's read
                await trio.sleep(0.01)
        prediction.add_output(OutputBatch(["a", "b"]))
        here.changed(prediction)
        await here.flush()
        client = coredis.Redis.from_url(redis_url)
        async with client:
            key = f"{settings.store_key_prefix}log:{prediction.id}"
            (last,) = await client.xrevrange(key, "+", "-", count=1)
            await client.xadd(key, dict(last.field_values))  # the same span again
        prediction.add_output(OutputBatch(["c"]))
        prediction.succeed()
        here.ended(prediction)
        await here.flush()
        with trio.fail_after(5):
            await first.events.wait_closed()
        assert first.events.read(0, 10**6) == prediction.events.read(0, 10**6)
        assert first.status == "succeeded"


async def both_at_once(fn: Any, arg: str) -> list[Any]:
    """fn(arg) twice at once, in Trio; both results."""
    results: list[Any] = [None, None]

    async def one(i: int) -> None:
        results[i] = await fn(arg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
    return results


async def test_predictions_past_the_metadata_count_leave_the_listings_too(
    redis: dict[str, str], redis_url: str
) -> None:
    settings = Settings(port=0, retention_count=1, metadata_retention_count=1, **redis)
    async with open_redis_store(settings) as store:
        made = []
        for _ in range(3):
            prediction = Prediction(
                model="o/m", version="", input={}, owner=owner_of(TOKEN), events=store.new_log()
            )
            await store.add(prediction)
            prediction.succeed()
            store.ended(prediction)
            await store.flush()
            made.append(prediction.id)
        client = coredis.Redis.from_url(redis_url)
        async with client:
            prefix = settings.store_key_prefix
            everyone = await client.zrange(f"{prefix}all", 0, -1)
            owned = await client.zrange(f"{prefix}own:{owner_of(TOKEN)}", 0, -1)
            assert [m.decode() for m in everyone] == [m.decode() for m in owned] == made[-1:]
            assert not await client.exists([f"{prefix}p:{made[0]}", f"{prefix}p:{made[1]}"])
            assert list(await client.hkeys(f"{prefix}owners")) == [made[-1].encode()]


async def test_two_checks_of_one_lapsed_lease_lose_it_once(
    redis: dict[str, str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease's own task and a retried write can both find the lease
    lapsed: the process takes one new name, not one per check (a second
    would let go of what it started under the first)."""
    from bridge.store_redis.leases import Lease

    renames: list[str] = []
    rename = Lease.rename

    def counted(self: Lease) -> str:
        renames.append(self.process)
        return rename(self)

    monkeypatch.setattr(Lease, "rename", counted)
    settings = Settings(port=0, **redis)
    async with open_redis_store(settings) as store:
        client = coredis.Redis.from_url(redis_url)
        async with client:
            await client.delete([f"{settings.store_key_prefix}lease:{store.process}"])
        writer = store._writer
        await both_at_once(lambda _: writer.check_lease(), "")
        assert len(renames) == 1


async def test_a_step_of_many_predictions_is_one_script_call(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """demo/batch steps its running predictions together, so each step
    brings a token for every one: the bridge writes them all to Redis in
    one script call, not one call each (which was most of the writer's own
    CPU). 20 predictions of 20 tokens: 400 tokens, and
    a call each would be about 400 calls."""
    with redis_server(tmp_path) as (url, _):
        base = await start_bridge(store_url=url)
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as client,
            coredis.Redis.from_url(url) as redis,
        ):
            paced = {"prompt": "-", "max_tokens": 20, "tokens_per_second": 20}
            made = [await create(client, "demo/batch", paced) for _ in range(20)]
            await redis.config_resetstat()
            for prediction in made:
                events, _ = await read_stream(client, f"/v1/predictions/{prediction['id']}/stream")
                assert [e.event for e in events].count("output") == 20
                assert events[-1].event == "done"
            stats = await redis.info("commandstats")
    calls = stats["cmdstat_evalsha"]
    calls = (
        calls["calls"]
        if isinstance(calls, dict)
        else int(str(calls).split("calls=")[1].split(",")[0])
    )
    assert calls < 100, calls


@asynccontextmanager
async def _two_and_a_client(settings: Settings, url: str) -> AsyncIterator[tuple[Any, Any, Any]]:
    """Two processes' stores on one Redis, and a client of it."""
    async with (
        open_redis_store(settings) as here,
        open_redis_store(settings) as there,
        coredis.Redis.from_url(url) as client,
    ):
        yield here, there, client


async def _running(store: Any, count: int) -> list[Prediction]:
    """*count* predictions added to *store*, started, written."""
    made = [
        Prediction(model="o/m", version="", input={"i": i}, events=store.new_log())
        for i in range(count)
    ]
    for prediction in made:
        await store.add(prediction)
        prediction.start()
        store.changed(prediction)
    await store.flush()
    return made


async def _writes_during(client: coredis.Redis[bytes], work: Any) -> list[Any]:
    """The WRITE calls Redis ran while ``await work()`` ran, as its slow
    log (set to log every command) shows them."""
    await client.config_set({"slowlog-log-slower-than": 0, "slowlog-max-len": 1024})
    await client.slowlog_reset()
    try:
        await work()
        logged = await client.slowlog_get(1024)
    finally:  # Redis' defaults again
        await client.config_set({"slowlog-log-slower-than": 10_000, "slowlog-max-len": 128})
    return [e for e in logged if e.command[:2] == [b"EVALSHA", WRITE.sha.encode()]]


async def _ended_and_read_elsewhere(here: Any, there: Any, made: list[Prediction]) -> None:
    """End *made* on *here*; *there* reads each back byte for byte."""
    for prediction in made:
        prediction.succeed()
        here.ended(prediction)
    await here.flush()
    for prediction in made:
        copy = await there.get(prediction.id)
        with trio.fail_after(5):
            await copy.events.wait_closed()
        assert copy.events.read(0, 10**6) == prediction.events.read(0, 10**6)
        assert copy.events.output_count == prediction.events.output_count


async def test_a_token_s_write_names_its_log_alone_in_one_argument(
    redis: dict[str, str], redis_url: str
) -> None:
    """At load a write carries about one token for each running
    prediction, so what a prediction adds to the WRITE call is paid per
    token: its log's key, and its fields packed into the call's one
    argument (coredis wraps, checks and packs every argument apart: twelve
    a prediction were most of the writer's CPU). Whatever bytes its tokens
    hold (ones that look like the lengths the fields are packed with, one
    larger than coredis' 6,000-byte pieces, empty lines), another process
    reads them back exactly."""
    settings = Settings(port=0, **redis)
    tokens = ["plain ", "\x00\x01\x00\x00\x00\x09", "é" * 40_000, "\n\n", "\r\n$3\r\n"]
    async with _two_and_a_client(settings, redis_url) as (here, there, client):
        made = await _running(here, 100)

        async def tokens_written() -> None:
            for token in tokens:
                for prediction in made:
                    prediction.add_output(OutputBatch([token]))
                    here.changed(prediction)
                await here.flush()

        writes = await _writes_during(client, tokens_written)
        assert len(writes) == len(tokens), writes
        for write in writes:  # EVALSHA sha numkeys: 5 of the process, a log each; 3 ARGV
            assert int(write.command[2]) == 5 + len(made)
            # The slow log keeps 31 arguments, then says how many more.
            more = int(write.command[-1].split(b"(")[1].split()[0])
            assert 31 + more == 3 + 5 + len(made) + 3
        await _ended_and_read_elsewhere(here, there, made[:3])
        assert made[0].events.output_count == len(tokens)


async def test_a_write_is_cut_into_calls_of_about_call_bytes(
    redis: dict[str, str], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's fields are one argument, and Redis takes at most
    proto-max-bulk-len (512 MB) in one: a write carrying much (all that
    came while Redis was away) goes in calls of about CALL_BYTES each,
    here 2,000 bytes: ten predictions of about 950 bytes, five calls, and
    another process reads each back whole."""
    monkeypatch.setattr(writer, "CALL_BYTES", 2000)
    settings = Settings(port=0, **redis)
    async with _two_and_a_client(settings, redis_url) as (here, there, client):
        made = await _running(here, 10)

        async def one_write() -> None:
            for prediction in made:
                prediction.add_output(OutputBatch(["x" * 900]))
                here.changed(prediction)
            await here.flush()

        writes = await _writes_during(client, one_write)
        assert sorted(int(w.command[2]) - 5 for w in writes) == [2] * 5  # each call's logs
        await _ended_and_read_elsewhere(here, there, made)


async def test_under_load_writes_start_a_gap_apart_and_news_after_quiet_goes_at_once(
    redis: dict[str, str], redis_url: str, mock_clock: trio.testing.MockClock
) -> None:
    """A script call costs about the same CPU whatever it carries, so with
    [store] write_gap_seconds a write starts at least that long after the
    last one did, with all that came meanwhile. News after a quiet spell
    goes at once, and so do a prediction's first output (whatever it
    logged before) and its end, cutting a wait short (time to first token,
    to done). Readers here see a token once Redis holds it. Trio's clock
    stands still here unless the test moves it (by little: coredis' own
    timeouts run on it)."""
    settings = Settings(port=0, store_write_gap_seconds=0.2, **redis)
    async with _two_and_a_client(settings, redis_url) as (here, there, client):
        one, two = await _running(here, 2)  # at once: the clock never moved

        def token(prediction: Prediction, text: str) -> None:
            prediction.add_output(OutputBatch([text]))
            here.changed(prediction)

        token(one, "first")
        await here.flush()  # at once, right after the last write: its first output
        two.add_log("setting up")
        here.changed(two)
        await here.flush()  # at once too: no output of it in Redis yet
        shown = len(one.events), len(two.events)  # what readers here see

        async def written_at_once(changes: Callable[[], None]) -> bool:
            """Whether what *changes* did is written while the clock stands
            still (within 50 round trips to Redis: time for a write sent,
            and a trim after an end, to land); if not, the clock moves by
            the gap, and it is."""
            flushed = trio.Event()

            async def flush() -> None:
                await here.flush()
                flushed.set()

            async with trio.open_nursery() as nursery:
                changes()
                nursery.start_soon(flush)
                for _ in range(50):
                    if flushed.is_set():
                        break
                    await client.ping()
                at_once = flushed.is_set()
                if not at_once:
                    mock_clock.jump(0.2)
            return at_once

        assert not await written_at_once(lambda: token(one, "lingers"))
        assert (len(one.events), len(two.events)) == (shown[0] + 1, shown[1])

        token(one, "lingers again")  # a write just went
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for the gap
        assert await written_at_once(lambda: token(two, "first, after its log"))  # cut short
        assert (len(one.events), len(two.events)) == (shown[0] + 2, shown[1] + 1)

        mock_clock.jump(0.3)  # quiet
        assert await written_at_once(lambda: token(one, "after quiet"))

        def ends() -> None:
            one.succeed()
            here.ended(one)

        token(one, "with the end")  # a write just went
        await trio.testing.wait_all_tasks_blocked()
        assert await written_at_once(ends)  # cut short
        assert one.events.closed and one.events.output_count == 5
        await _ended_and_read_elsewhere(here, there, [two])
        assert two.events.output_count == 1


def _calls(stats: dict[str, Any], command: str) -> int:
    """How many times Redis ran *command* (INFO commandstats)."""
    found = stats.get(f"cmdstat_{command}")
    if found is None:
        return 0
    if isinstance(found, dict):
        return int(found["calls"])
    return int(str(found).split("calls=")[1].split(",")[0])


async def test_adds_that_arrive_together_share_one_script_call(
    redis: dict[str, str], redis_url: str
) -> None:
    """300 creates at once: each used to be an INCR and a MULTI of five
    commands; now the adds waiting together go in one ADD call (at most
    128 each), numbered in one INCRBY, each record holding its own seq."""
    settings = Settings(port=0, **redis)
    prefix = settings.store_key_prefix
    async with open_redis_store(settings) as store, coredis.Redis.from_url(redis_url) as client:
        made = [
            Prediction(
                model="o/m",
                version="",
                input={"i": i},
                owner="alice" if i % 2 else None,
                events=store.new_log(),
            )
            for i in range(300)
        ]
        await client.config_resetstat()
        async with trio.open_nursery() as nursery:
            for prediction in made:
                nursery.start_soon(store.add, prediction)
        stats = await client.info("commandstats")
        assert _calls(stats, "incr") == 0
        assert 3 <= _calls(stats, "incrby") <= 10, stats
        seqs = sorted(p.seq for p in made)
        assert seqs == list(range(seqs[0], seqs[0] + 300))
        for prediction in made[:20]:
            record = codec.decode(await client.get(f"{prefix}p:{prediction.id}") or b"{}")
            assert record == {**prediction.record(with_input=False), "process": store.process}
            assert await client.get(f"{prefix}in:{prediction.id}") == prediction.input_json
        assert await client.zcard(f"{prefix}all") == 300
        owned = await client.zrange(f"{prefix}own:alice", 0, -1, withscores=True)
        assert {(m.decode(), int(s)) for m, s in owned} == {
            (p.id, p.seq) for p in made if p.owner == "alice"
        }
        assert await client.scard(f"{prefix}running:{store.process}") == 300


async def test_an_add_cancelled_while_it_waits_leaves_nothing(
    redis: dict[str, str], redis_url: str
) -> None:
    """A create cancelled while its add waits for a write (taken out of the
    next one, or taken back once the one under way is done) leaves nothing
    in Redis, and the next add goes on."""
    settings = Settings(port=0, **redis)
    prefix = settings.store_key_prefix
    async with open_redis_store(settings) as store, coredis.Redis.from_url(redis_url) as client:
        gone, kept = (
            Prediction(model="o/m", version="", input={}, events=store.new_log()) for _ in range(2)
        )
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.add(gone)
        assert scope.cancelled_caught
        await store.add(kept)
        assert await client.exists([f"{prefix}p:{gone.id}", f"{prefix}in:{gone.id}"]) == 0
        assert list(await client.zrange(f"{prefix}all", 0, -1)) == [kept.id.encode()]
        assert await client.smembers(f"{prefix}running:{store.process}") == {kept.id.encode()}


async def test_an_add_given_up_on_mid_write_is_taken_back_after_it(
    redis: dict[str, str], redis_url: str
) -> None:
    """A create cancelled while the call carrying its add is under way (here
    Redis holds writes: CLIENT PAUSE) returns at once, not when Redis
    answers; the task that made the call takes it back once the call is
    done, never before it (taken back first, the write would outlive it)."""
    settings = Settings(port=0, **redis)
    prefix = settings.store_key_prefix
    async with open_redis_store(settings) as store, coredis.Redis.from_url(redis_url) as client:
        await store.add(Prediction(model="o/m", version="", input={}, events=store.new_log()))
        gone = Prediction(model="o/m", version="", input={}, events=store.new_log())
        await client.client_pause(2000, coredis.PureToken.WRITE)
        with trio.fail_after(1):  # well before Redis answers
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(store.add, gone)
                    await trio.testing.wait_all_tasks_blocked()  # its call is under way
                    assert not store._adds._pending
                    scope.cancel()
        assert scope.cancelled_caught
        assert await client.exists([f"{prefix}p:{gone.id}"]) == 0  # not written yet

        async def taken_back() -> bool:
            return await client.zcard(f"{prefix}all") == 1

        await poll_until(taken_back)  # written once Redis answers, then taken back
        assert await client.exists([f"{prefix}p:{gone.id}", f"{prefix}in:{gone.id}"]) == 0
        assert gone.id.encode() not in await client.smembers(f"{prefix}running:{store.process}")


async def test_large_inputs_are_added_in_calls_of_about_a_mebibyte(
    redis: dict[str, str], redis_url: str
) -> None:
    """Three creates of 700 kB inputs at once: each its own ADD call (two
    would pass MAX_ADD_BYTES), so one call stays quick."""
    settings = Settings(port=0, **redis)
    async with open_redis_store(settings) as store, coredis.Redis.from_url(redis_url) as client:
        made = [
            Prediction(model="o/m", version="", input={"x": "x" * 700_000}, events=store.new_log())
            for _ in range(3)
        ]
        await client.config_resetstat()
        async with trio.open_nursery() as nursery:
            for prediction in made:
                nursery.start_soon(store.add, prediction)
        assert _calls(await client.info("commandstats"), "incrby") == 3
        assert sorted(p.seq for p in made) == [1, 2, 3]


async def test_an_add_that_cannot_be_encoded_fails_alone(
    redis: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug encoding a new prediction (none is known: a record holds plain
    values) fails the creates of that call with 503, and the store's task
    that adds goes on for the next ones."""
    settings = Settings(port=0, **redis)
    encode = codec.record_around_seq

    def broken(prediction: Prediction, process: str) -> tuple[bytes, bytes]:
        if prediction.input == {"broken": True}:
            raise TypeError("a bug")
        return encode(prediction, process)

    monkeypatch.setattr(codec, "record_around_seq", broken)
    async with open_redis_store(settings) as store:
        bad = Prediction(model="o/m", version="", input={"broken": True}, events=store.new_log())
        with pytest.raises(StoreUnavailable):
            await store.add(bad)
        good = Prediction(model="o/m", version="", input={}, events=store.new_log())
        await store.add(good)
        assert good.seq == 1
