"""The core without HTTP or gRPC: a Bridge on the fake backend and the
in-memory store, under Trio's autojump clock. Deadlines, Cancel-After,
admission, retries and shutdown run in virtual seconds (each test takes
milliseconds), and the times asserted are exact."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from bridge.config import ModelSettings, Settings
from bridge.core import supervisor as supervisor_module
from bridge.core.predictions import Prediction, Status
from bridge.core.service import Bridge
from bridge.core.supervisor import CANCELED, SHUTDOWN, SHUTDOWN_ERROR, Failed
from tests.backends import SCRIPTED_INFO
from tests.fakes import FakeBackend, open_fake_backend

MODEL = "test/scripted"


@contextlib.asynccontextmanager
async def open_bridge(
    target: str = "fake:1", model: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[Bridge, FakeBackend]]:
    models = {MODEL: ModelSettings(MODEL, (target,), **(model or {}))}
    async with (
        open_fake_backend({"fake:1": SCRIPTED_INFO}) as backend,
        trio.open_nursery() as nursery,
    ):
        bridge = Bridge(Settings(port=0, models=models, **settings), backend, nursery)
        yield bridge, backend
        bridge.close()


async def run(bridge: Bridge, script: dict[str, Any], **create: Any) -> Prediction:
    return await bridge.create(bridge.catalog.model(MODEL), script, **create)


async def ended(prediction: Prediction) -> float:
    """Wait for *prediction*'s end; when it came, on Trio's clock."""
    await prediction.events.wait_closed()
    return trio.current_time()


async def test_a_prediction_runs_to_its_end(autojump_clock: Any) -> None:
    async with open_bridge() as (bridge, _):
        start = trio.current_time()
        prediction = await run(bridge, {"chunks": ["a", "b"], "gap_ms": 1000})
        assert await ended(prediction) - start == 2
        assert prediction.status is Status.SUCCEEDED
        assert prediction.events.snapshot().outputs() == ["a", "b"]
        assert bridge.active == 0


async def test_idle_and_first_output_deadlines_end_it_on_time(autojump_clock: Any) -> None:
    options = {"first_output_seconds": 5.0, "idle_seconds": 2.0}
    async with open_bridge(model=options) as (bridge, backend):
        start = trio.current_time()
        idle = await run(bridge, {"chunks": ["a", "b"], "gap_ms": 3000})
        assert await ended(idle) - start == 3 + 2  # the first chunk, then idle
        assert idle.error == ("deadline exceeded: no output for idle_seconds (2 s) between outputs")
        start = trio.current_time()
        silent = await run(bridge, {"hang": True})
        assert await ended(silent) - start == 5
        assert silent.error is not None and "first_output_seconds (5 s)" in silent.error
        assert {idle.id, silent.id} <= backend.cancelled


async def test_total_seconds_ends_a_prediction_that_keeps_talking(autojump_clock: Any) -> None:
    async with open_bridge(model={"total_seconds": 2.5}) as (bridge, backend):
        start = trio.current_time()
        prediction = await run(bridge, {"chunks": list("abcdef"), "gap_ms": 1000})
        assert await ended(prediction) - start == 2.5
        assert prediction.events.snapshot().outputs() == ["a", "b"]
        assert prediction.error is not None and "total_seconds (2.5 s)" in prediction.error
        assert prediction.id in backend.cancelled


async def test_cancel_after_ends_it_wherever_it_is(autojump_clock: Any) -> None:
    async with open_bridge(model={"max_running": 1}) as (bridge, backend):
        start = trio.current_time()
        running = await run(bridge, {"hang": True, "chunks": ["a"]}, cancel_after=3)
        queued = await run(bridge, {"chunks": ["b"]}, cancel_after=1)
        assert await ended(queued) - start == 1  # still queued then
        assert queued.status is Status.CANCELED and queued.started_at is None
        assert await ended(running) - start == 3
        assert running.status is Status.CANCELED
        assert running.id in backend.cancelled and queued.id not in backend.cancelled


async def test_a_model_s_predictions_queue_in_order_past_its_limit(autojump_clock: Any) -> None:
    async with open_bridge(model={"max_running": 1}) as (bridge, _):
        made = [await run(bridge, {"chunks": [str(i)], "gap_ms": 1000}) for i in range(3)]
        ends = [await ended(p) for p in made]
        assert ends == [1, 2, 3]  # one at a time, first come first served
        assert all(p.status is Status.SUCCEEDED for p in made)


async def test_an_unreachable_backend_is_retried_until_start_timeout(
    autojump_clock: Any,
) -> None:
    async with open_bridge(target="fake:away", model={"start_timeout_seconds": 4.0}) as (
        bridge,
        _,
    ):
        start = trio.current_time()
        prediction = await run(bridge, {"chunks": ["a"]})
        assert prediction.status is Status.STARTING
        assert await ended(prediction) - start == 4
        assert prediction.error is not None
        assert prediction.error.startswith("model backend unavailable")


async def test_shutdown_drains_then_fails_what_is_left(autojump_clock: Any) -> None:
    async with open_bridge() as (bridge, backend):
        quick = await run(bridge, {"chunks": ["a"], "gap_ms": 1000})
        slow = await run(bridge, {"hang": True})
        start = trio.current_time()
        await bridge.drain(5)
        assert trio.current_time() - start == 5
        assert quick.status is Status.SUCCEEDED and not slow.done
        bridge.close()
        await ended(slow)
        assert (slow.status, slow.error) == (Status.FAILED, SHUTDOWN_ERROR)
        assert slow.id in backend.cancelled


async def test_durations_are_measured_on_trio_s_clock_not_the_wall(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall clock stepped back (NTP, a VM resumed) shows in the times
    users see, never in a duration."""
    wall = iter(range(2_000_000_000, 0, -100))
    monkeypatch.setattr(time, "time", lambda: float(next(wall)))
    async with open_bridge() as (bridge, _):
        prediction = await run(bridge, {"chunks": ["a", "b"], "gap_ms": 1000})
        await ended(prediction)
    assert prediction.metrics["total_time"] == 2
    assert prediction.metrics["predict_time"] == 2
    assert prediction.metrics["time_to_first_token"] == 1
    assert prediction.metrics["tokens_per_second"] == 1


async def test_what_a_prediction_was_charged_is_given_back_when_it_is_forgotten(
    autojump_clock: Any,
) -> None:
    """Output, logs and the names of its metrics are charged to the store
    as they come; once the prediction is forgotten, the store keeps none
    of it (a ledger that leaked would shrink max_retained_bytes for good)."""
    async with open_bridge(retention_count=0, metadata_retention_count=0) as (bridge, _):
        script = {"log": "a line", "chunks": ["a", "b"], "metrics": {"input_token_count": 3}}
        for _ in range(3):
            await ended(await run(bridge, script))
        assert bridge.store.kept_bytes == 0


async def test_a_prediction_started_as_the_bridge_closes_ends_at_once(
    autojump_clock: Any,
) -> None:
    """A create under way when close() came (here: waiting for a slow
    Describe) still makes its prediction, which ends at once, failed as
    the shutdown's; nothing is left running for the nursery to wait on."""
    async with open_bridge() as (bridge, backend):
        backend.describe_seconds = 1.0
        async with trio.open_nursery() as nursery:
            made: list[Prediction] = []

            async def create() -> None:
                made.append(await run(bridge, {"hang": True}))

            nursery.start_soon(create)
            await trio.sleep(0.5)
            bridge.close()
        await ended(made[0])
        assert (made[0].status, made[0].error) == (Status.FAILED, SHUTDOWN_ERROR)


async def test_a_backend_gets_no_more_predictions_at_once_than_it_runs(
    autojump_clock: Any,
) -> None:
    """A model whose backends say concurrency 1, on two targets: at most
    one prediction at a time on each, two at once in all, the rest queued
    in order; a model that says nothing is not limited."""
    one_at_a_time = dataclasses.replace(SCRIPTED_INFO, concurrency=1)
    models = {
        MODEL: ModelSettings(MODEL, ("fake:1", "fake:2")),
        "test/free": ModelSettings("test/free", ("fake:3",)),
    }
    infos = {"fake:1": one_at_a_time, "fake:2": one_at_a_time, "fake:3": SCRIPTED_INFO}
    async with open_fake_backend(infos) as backend, trio.open_nursery() as nursery:
        bridge = Bridge(Settings(port=0, models=models), backend, nursery)
        script = {"chunks": ["a"], "gap_ms": 1000}
        start = trio.current_time()
        made = [await run(bridge, script) for _ in range(5)]
        free = [await bridge.create(bridge.catalog.model("test/free"), script) for _ in range(5)]
        for prediction in made + free:
            await ended(prediction)
        assert [p.completed_clock - start for p in made] == [1, 1, 2, 2, 3]  # type: ignore[operator]
        assert [p.completed_clock - start for p in free] == [1] * 5  # type: ignore[operator]
        bridge.close()
    assert backend.most_in_flight == {"fake:1": 1, "fake:2": 1, "fake:3": 5}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ([], CANCELED),  # stopped by its deadline, which gives no reason
        ([CANCELED, CANCELED], CANCELED),
        ([Failed("first"), Failed("second")], Failed("first")),
        ([Failed("lost"), CANCELED], Failed("lost")),
        ([CANCELED, Failed("lost"), SHUTDOWN, Failed("late")], SHUTDOWN),
    ],
)
def test_a_run_handle_keeps_the_strongest_reason(given: list, kept: object) -> None:
    """Shutdown over a failure over a cancel, and of two failures the
    first: what a stopped prediction ends as, whoever asked last."""
    handle = supervisor_module._Handle(None, trio.CancelScope())  # type: ignore[arg-type]
    for reason in given:
        handle.stop(reason)
    assert handle.reason == kept
