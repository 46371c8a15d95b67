"""The asyncio-loop adapter: batching, credits, deadlines, cleanup, errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import trio
import trio.lowlevel

from bridge._proto.v1 import predictor_pb2_grpc
from bridge.backends import grpc_loop as grpc_loop_module
from bridge.backends import wire
from bridge.backends.grpc_loop import PredictStream, map_rpc_error, open_grpc_loop
from bridge.errors import (
    BackendLoading,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    ModelError,
)
from tests.backends import RawServer
from tests.conftest import closed_port_target
from tests.helpers import asked


class _RawServicer(predictor_pb2_grpc.PredictorServicer):
    """A backend written against the raw stubs, to see what the bridge sends."""

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        messages = wire.request_input(request).get("messages")
        if messages is None:
            yield wire.output_response([f"{context.time_remaining()}"])
            return
        gap = float(wire.request_input(request).get("gap_ms", 0)) / 1000
        for i in range(int(messages)):  # one message per chunk, unbatched
            yield wire.output_response([f"{i} "])
            if gap:
                await asyncio.sleep(gap)


@pytest.fixture(scope="module")
def raw_target() -> Iterator[str]:
    with RawServer(_RawServicer()) as server:
        yield server.target


async def test_trio_deadline_becomes_the_grpc_deadline(raw_target: str) -> None:
    async with open_grpc_loop() as grpc_loop:
        with trio.fail_after(7):
            async with grpc_loop.predict(raw_target, asked("d", {})) as stream:
                with_deadline = [i async for b in stream for i in b]
        async with grpc_loop.predict(raw_target, asked("d", {})) as stream:
            no_deadline = [i async for b in stream for i in b]
    remaining = float(with_deadline[-1].chunks[0])
    assert 5 < remaining <= 7.1  # grpc-timeout is rounded up on the wire
    assert no_deadline[-1].chunks == ["None"]


async def test_loop_thread_and_calls_are_cleaned_up(demo_targets: dict[str, str]) -> None:
    before = {t.ident for t in threading.enumerate()}
    async with open_grpc_loop() as grpc_loop:
        assert len({t.ident for t in threading.enumerate()} - before) == 1
        request = asked("slow", {"prompt": "a b c", "delay_ms": 60_000})
        async with grpc_loop.predict(demo_targets["demo/echo"], request) as stream:
            # The call is under way (the backend started it) ...
            assert isinstance((await stream.receive_batch())[0], wire.Started)
            assert grpc_loop.active_calls == 1
        # ... and leaving the block, mid-call, ended it.
        assert grpc_loop.active_calls == 0
    assert {t.ident for t in threading.enumerate()} - before == set()


async def test_credit_window_bounds_what_is_in_flight(raw_target: str) -> None:
    window = 8
    sizes = []
    async with (
        open_grpc_loop(window=window) as grpc_loop,
        grpc_loop.predict(raw_target, asked("w", {"messages": 400})) as stream,
    ):
        async for batch in stream:
            sizes.append(len(batch))
            await trio.sleep(0.01)  # a slow consumer
            assert len(stream._items) <= window + 2
    assert sum(sizes) == 400 + 1  # started, 400 messages
    assert max(sizes) > 1  # several messages per wake-up


async def test_delivered_batches_never_wake_the_owner_until_the_end(raw_target: str) -> None:
    owner = trio.lowlevel.current_task()
    seen: list[wire.StreamItem] = []
    delivering = False

    def handle(batch: list[wire.StreamItem]) -> None:
        # In the hub's wake-up; or, for what had arrived already (a busy
        # machine's loop thread may be ahead), in deliver() itself.
        assert delivering or trio.lowlevel.current_task() is not owner
        seen.extend(batch)

    async with open_grpc_loop(window=8) as grpc_loop:
        request = asked("d", {"messages": 400})
        async with grpc_loop.predict(raw_target, request) as stream:
            delivering = True
            stream.deliver(handle)
            delivering = False
            with trio.fail_after(10):
                await stream.wait_end()
    assert seen[0] == wire.Started()
    assert [c for item in seen[1:] for c in item.chunks] == [f"{i} " for i in range(400)]


async def test_a_handler_that_raises_ends_the_call_in_its_owner(raw_target: str) -> None:
    seen: list[wire.StreamItem] = []

    def handle(batch: list[wire.StreamItem]) -> None:
        seen.extend(batch)
        if len(seen) > 100:
            raise BackendProtocolError("enough")

    async with open_grpc_loop(window=8) as grpc_loop:
        request = asked("d", {"messages": 100_000})
        with pytest.raises(BackendProtocolError, match="enough"):
            async with grpc_loop.predict(raw_target, request) as stream:
                stream.deliver(handle)
                with trio.fail_after(10):
                    await stream.wait_end()
        # The call was cancelled on the way out, and nothing more delivered.
        assert grpc_loop.active_calls == 0
        delivered = len(seen)
        await trio.sleep(0.05)
        assert len(seen) == delivered < 200


async def test_a_bug_reading_the_call_ends_it_at_once(
    raw_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the pump raises, the call ends with an error the owner
    sees (an exception left in the task's done callback hung it)."""

    def broken(response: Any) -> wire.StreamItem:
        raise AttributeError("a bug")

    monkeypatch.setattr(wire, "stream_item_from_pb", broken)
    async with open_grpc_loop() as grpc_loop:
        with pytest.raises(
            BackendProtocolError, match=r"failed reading the backend: AttributeError\('a bug'\)"
        ):
            with trio.fail_after(5):
                request = asked("d", {"messages": 3})
                async with grpc_loop.predict(raw_target, request) as stream:
                    [item async for batch in stream for item in batch]


def test_as_trio_s_guest_the_calls_run_on_its_host_loop(raw_target: str) -> None:
    """How the servers run (grpc_loop.run): no loop thread; streams,
    cancels and unary calls as under trio.run."""

    async def main() -> tuple[list[wire.StreamItem], int, str]:
        async with open_grpc_loop(window=8) as grpc_loop:
            assert grpc_loop._thread is None
            assert grpc_loop._loop is asyncio.get_running_loop()
            request = asked("g", {"messages": 400})
            async with grpc_loop.predict(raw_target, request) as stream:
                items = [i async for b in stream for i in b]
            taken = 0
            request = asked("g", {"messages": 100_000})
            async with grpc_loop.predict(raw_target, request) as stream:
                async for batch in stream:
                    taken += len(batch)
                    if taken > 100:
                        break  # leaving the block cancels the call
            assert grpc_loop.active_calls == 0
            return items, taken, await grpc_loop.check_health(raw_target)

    items, taken, health = grpc_loop_module.run(main)
    assert [c for item in items[1:] for c in item.chunks] == [f"{i} " for i in range(400)]
    assert 100 < taken < 200
    assert health == "UNKNOWN"


class _IOWaits(trio.abc.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1


def test_as_trio_s_guest_delivered_messages_do_not_wake_trio(raw_target: str) -> None:
    """Trio and the loop share the thread, so the loop hands each message
    to a delivered stream's handler itself: Trio sleeps through the call
    (no hop through Trio's I/O thread per message) until its end."""

    async def main() -> tuple[list[wire.StreamItem], int]:
        seen: list[wire.StreamItem] = []
        waits = _IOWaits()
        async with open_grpc_loop() as grpc_loop:
            request = asked("q", {"messages": 20, "gap_ms": 10})
            async with grpc_loop.predict(raw_target, request) as stream:
                stream.deliver(seen.extend)
                trio.lowlevel.add_instrument(waits)
                with trio.fail_after(10):
                    await stream.wait_end()
                trio.lowlevel.remove_instrument(waits)
        return seen, waits.count

    seen, io_waits = grpc_loop_module.run(main)
    assert [c for item in seen[1:] for c in item.chunks] == [f"{i} " for i in range(20)]
    assert io_waits <= 3


def test_run_returns_or_raises_what_trio_s_main_did() -> None:
    async def answer(value: int) -> int:
        await trio.lowlevel.checkpoint()
        return value

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("from main")

    assert grpc_loop_module.run(answer, 42) == 42
    with pytest.raises(ValueError, match="from main"):
        grpc_loop_module.run(fail)


async def test_health_of_a_backend_without_the_health_service_is_unknown(
    raw_target: str,
) -> None:
    async with open_grpc_loop() as grpc_loop:
        # It answers (UNIMPLEMENTED, mapped as everywhere else): up, in a
        # state it does not say; one that cannot be reached is UNAVAILABLE.
        assert await grpc_loop.check_health(raw_target) == "UNKNOWN"
        assert await grpc_loop.check_health(closed_port_target()) == "UNAVAILABLE"


async def test_unreachable_backend_is_unavailable() -> None:
    async with open_grpc_loop() as grpc_loop:
        with pytest.raises(BackendUnavailable, match=r"^model backend unavailable: "):
            async with grpc_loop.predict(closed_port_target(), asked("x", {})) as stream:
                async for _ in stream:
                    pass
        with pytest.raises(BackendUnavailable) as failed:
            await grpc_loop.describe(closed_port_target())
        assert isinstance(failed.value.__cause__, grpc.RpcError)  # kept for the logs
        assert await grpc_loop.check_health(closed_port_target()) == "UNAVAILABLE"


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable, "model backend unavailable: gone"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, BackendTimeout, "model backend timed out: "),
        (grpc.StatusCode.UNIMPLEMENTED, BackendProtocolError, "does not implement bridge.v1"),
        (grpc.StatusCode.UNKNOWN, ModelError, "gone"),
        (grpc.StatusCode.INTERNAL, ModelError, "model backend error INTERNAL: gone"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ModelError, "RESOURCE_EXHAUSTED: gone"),
        (grpc.StatusCode.CANCELLED, BackendUnavailable, "cancelled the call: gone"),
    ],
)
def test_status_codes_map_in_one_place(code: grpc.StatusCode, error: type, message: str) -> None:
    exc = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone")
    mapped = map_rpc_error(exc)
    assert type(mapped) is error
    assert message in str(mapped)


@pytest.mark.parametrize("rich", [False, True])
def test_a_backend_still_loading_is_told_apart_from_one_away(rich: bool) -> None:
    """Also when its status carries a google.rpc.Status with details."""
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=14, message=wire.LOADING)
    status.details.add().Pack(error_details_pb2.LocalizedMessage(message="weights: 40%"))
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        trailers if rich else grpc.aio.Metadata(),
        details=wire.LOADING,
    )
    mapped = map_rpc_error(exc)
    assert type(mapped) is BackendLoading and isinstance(mapped, BackendUnavailable)
    assert str(mapped) == "model backend unavailable: model is loading"


def test_status_details_that_do_not_decode_are_skipped_and_controls_dropped() -> None:
    """A detail that is not what its type says is left out, not the
    status with it; a detail's text carries no control characters."""
    from google.rpc import error_details_pb2, status_pb2

    status = status_pb2.Status(code=3, message="bad")
    broken = status.details.add()
    broken.type_url = "type.googleapis.com/google.rpc.BadRequest"
    broken.value = b"\xff\xff\xff"
    forged = "x\x1b[31m\nERROR forged\u202e"
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=forged))
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), trailers, details="bad"
    )
    assert str(map_rpc_error(exc)) == (
        "model backend error INVALID_ARGUMENT: bad (x [31m ERROR forged )"
    )


def _no_loop(*args: Any) -> None:
    """What a stream made without a call schedules on the loop: nothing
    (its credits have no pump to go back to)."""


async def test_one_trio_wake_up_for_all_streams_with_news() -> None:
    """Streams that got messages in one loop iteration cost Trio one
    wake-up between them, not one each."""
    async with open_grpc_loop() as grpc_loop:
        hub = grpc_loop._hub
        wake_ups = []
        schedule = hub.schedule

        def counted(fn: Any) -> None:
            wake_ups.append(fn)
            schedule(fn)

        hub.schedule = counted
        streams = [PredictStream(hub, 8, _no_loop) for _ in range(50)]

        pushed: concurrent.futures.Future[None] = concurrent.futures.Future()

        def news_for_all() -> None:  # one loop iteration, on the loop thread
            for stream in streams:
                stream._push(wire.Started())
            pushed.set_result(None)

        assert grpc_loop._loop is not None
        grpc_loop._loop.call_soon_threadsafe(news_for_all)
        # Trio waits here without looking at its entry queue, as it would be
        # busy elsewhere: on a busy machine the loop thread can lose the GIL
        # mid-iteration, and a Trio that looked then would rightly take a
        # second wake-up for the rest.
        pushed.result(timeout=10)
        with trio.fail_after(10):
            batches = [await stream.receive_batch() for stream in streams]
    assert batches == [[wire.Started()]] * 50
    assert len(wake_ups) == 1


async def test_no_wake_up_is_lost_between_the_two_threads() -> None:
    """With a loop thread, the ready flags of the hub and of each stream are
    written by both threads: Python's GIL makes each store and each deque
    append atomic, and the order of the writes (append, then check the
    flag; clear the flag, then drain) loses no wake-up. Stressed here on
    the classes alone: 200 streams get 200 items each, pushed from the loop
    thread in bursts while Trio drains them, with the GIL switching threads
    every microsecond. Every item arrives, in order."""
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        async with open_grpc_loop() as grpc_loop:
            assert grpc_loop._loop is not None and grpc_loop._thread is not None
            streams = [PredictStream(grpc_loop._hub, 8, _no_loop) for _ in range(200)]

            def burst(start: int) -> None:  # on the loop thread
                for stream in streams:
                    for i in range(start, start + 10):
                        stream._push(wire.OutputChunks([str(i)]))

            for start in range(0, 200, 10):
                grpc_loop._loop.call_soon_threadsafe(burst, start)
            whole = []

            async def drain(stream: PredictStream) -> None:
                got: list[int] = []
                while len(got) < 200:
                    got += [int(item.chunks[0]) for item in await stream.receive_batch()]  # type: ignore[union-attr]
                whole.append(got == list(range(200)))

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for stream in streams:
                        nursery.start_soon(drain, stream)
    finally:
        sys.setswitchinterval(switch)
    assert whole == [True] * 200


class _HangingDescribe(predictor_pb2_grpc.PredictorServicer):
    """A backend whose Describe never answers; it records the cancel."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    async def Describe(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await asyncio.sleep(3600)
        finally:
            self.cancelled.set()


async def test_a_unary_call_never_outlives_its_caller() -> None:
    servicer = _HangingDescribe()
    with RawServer(servicer) as server:
        async with open_grpc_loop() as grpc_loop:
            with trio.move_on_after(0.3):
                await grpc_loop.describe(server.target)
            # Back in Trio, the call has already ended on the loop thread...
            assert grpc_loop.active_calls == 0
            # ...and the backend saw it cancelled.
            assert await trio.to_thread.run_sync(servicer.cancelled.wait, 5)


async def test_a_wedged_loop_thread_cannot_hang_shutdown() -> None:
    release = threading.Event()
    try:
        with trio.fail_after(5):
            async with open_grpc_loop(stop_timeout=0.5) as grpc_loop:
                thread, loop = grpc_loop._thread, grpc_loop._loop
                assert thread is not None and loop is not None
                loop.call_soon_threadsafe(release.wait)  # wedges the loop
        # Shutdown went on without it; left behind, it cannot keep the
        # process alive.
        assert thread.is_alive() and thread.daemon
    finally:
        release.set()
    await trio.to_thread.run_sync(thread.join, 5)
    assert not thread.is_alive()


def test_trio_run_inside_a_running_asyncio_loop_still_gets_a_loop_thread(
    raw_target: str,
) -> None:
    """A plain trio.run called from a coroutine blocks that asyncio loop:
    it is not a host to run calls on (only grpc_loop.run's loop is)."""

    async def main() -> tuple[bool, str]:
        with trio.fail_after(10):
            async with open_grpc_loop() as grpc_loop:
                return grpc_loop._thread is not None, await grpc_loop.check_health(raw_target)

    async def in_asyncio() -> tuple[bool, str]:
        return trio.run(main)

    assert asyncio.run(in_asyncio()) == (True, "UNKNOWN")


async def test_a_unary_call_cancelled_before_it_starts_ends_at_once(raw_target: str) -> None:
    """A Describe whose caller is already cancelled (the runner's retry past
    its start deadline does this) ends at once on the loop, its task never
    having run a step: no wait for CLEANUP_TIMEOUT, and the gauge of calls
    goes back to 0."""
    async with open_grpc_loop() as grpc_loop:
        for _ in range(3):
            start = trio.current_time()
            with trio.CancelScope() as scope:
                scope.cancel()
                await grpc_loop.describe(raw_target)
            assert trio.current_time() - start < 1  # not CLEANUP_TIMEOUT (5 s)
        with trio.fail_after(5):
            while grpc_loop.active_calls:  # noqa: ASYNC110 - written on the loop thread
                await trio.sleep(0.01)
