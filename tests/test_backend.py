"""The backend's contract, run against every implementation of
:class:`~bridge.backends.interface.Backend`: the gRPC loop talking to a real gRPC
server, and the Trio fake of tests/fakes.py running the same script."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
import trio

from bridge.backends import wire
from bridge.backends.grpc_loop import open_grpc_loop
from bridge.backends.interface import Backend
from bridge.errors import BackendTimeout, BackendUnavailable, ModelError
from tests.backends import SCRIPTED_INFO, RawServer, Scripted
from tests.conftest import closed_port_target
from tests.fakes import open_fake_backend
from tests.helpers import asked


@dataclass
class Env:
    backend: Backend
    target: str
    unreachable: str
    #: Returns once the backend saw the call of that prediction cancelled.
    cancelled: Callable[[str], Awaitable[None]]


@pytest.fixture(scope="module")
def scripted() -> Iterator[RawServer]:
    with RawServer(Scripted()) as server:
        yield server


@pytest.fixture(scope="module")
def multiplexed() -> Iterator[RawServer]:
    with RawServer(Scripted(multiplexed=True)) as server:
        yield server


#: The gRPC loop over bridge.v1's two transports (Predict, one call per
#: prediction; Stream, many on one call, for a backend whose Describe says
#: so), and the fake.
@pytest.fixture(params=["grpc", "stream", "fake"])
async def env(
    request: pytest.FixtureRequest, scripted: RawServer, multiplexed: RawServer
) -> AsyncIterator[Env]:
    if request.param != "fake":
        server = scripted if request.param == "grpc" else multiplexed
        servicer = server.servicer
        assert isinstance(servicer, Scripted)

        async def seen(prediction_id: str) -> None:
            event = servicer.cancelled_event(prediction_id)
            assert await trio.to_thread.run_sync(event.wait, 10)

        async with open_grpc_loop(window=8) as grpc_loop:
            # As the bridge does before a prediction: which says Stream.
            await grpc_loop.describe(server.target)
            yield Env(grpc_loop, server.target, closed_port_target(), seen)
    else:
        async with open_fake_backend({"fake:1": SCRIPTED_INFO}, health="UNKNOWN") as fake:

            async def noted(prediction_id: str) -> None:
                await trio.lowlevel.checkpoint()
                assert prediction_id in fake.cancelled

            yield Env(fake, "fake:1", "fake:2", noted)


SCRIPT = {"log": "starting", "chunks": ["a", "b", "c"], "metrics": {"m": 1.5}}
EXPECTED = [
    wire.Started(),
    wire.LogLine("starting"),
    *(wire.OutputChunks([c]) for c in "abc"),
    wire.MetricsUpdate({"m": 1.5}),
]


async def test_a_call_yields_what_the_model_sends_in_order(env: Env) -> None:
    request = asked("p1", SCRIPT)
    with trio.fail_after(10):
        async with env.backend.predict(env.target, request) as call:
            items = [item async for batch in call for item in batch]
    assert items == EXPECTED
    assert env.backend.active_calls == 0


async def test_a_delivered_call_hands_over_the_same_and_ends(env: Env) -> None:
    items: list[wire.StreamItem] = []
    request = asked("p2", SCRIPT)
    with trio.fail_after(10):
        async with env.backend.predict(env.target, request) as call:
            call.deliver(items.extend)
            await call.wait_end()
            assert call.stopped
    assert items == EXPECTED


async def test_the_model_s_error_ends_the_call_after_what_it_sent(env: Env) -> None:
    request = asked("p3", {"chunks": ["a"], "fail": "it broke"})
    items: list[wire.StreamItem] = []
    with trio.fail_after(10), pytest.raises(ModelError, match=r"^it broke$"):
        async with env.backend.predict(env.target, request) as call:
            async for batch in call:
                items += batch
    assert items == [wire.Started(), wire.OutputChunks(["a"])]
    with trio.fail_after(10), pytest.raises(ModelError, match=r"^it broke$"):
        async with env.backend.predict(env.target, request) as call:
            call.deliver(lambda batch: None)
            await call.wait_end()


async def test_leaving_the_block_cancels_the_call_at_the_backend(env: Env) -> None:
    request = asked("p4", {"chunks": ["a"], "hang": True})
    with trio.fail_after(10):
        async with env.backend.predict(env.target, request) as call:
            async for batch in call:
                if wire.OutputChunks(["a"]) in batch:
                    break
        await env.cancelled("p4")
    assert env.backend.active_calls == 0


async def test_a_handler_that_raises_ends_the_call_in_its_owner(env: Env) -> None:
    def handle(batch: list[wire.StreamItem]) -> None:
        if wire.OutputChunks(["a"]) in batch:
            raise ValueError("enough")

    request = asked("p5", {"chunks": ["a", "b"], "hang": True})
    with trio.fail_after(10), pytest.raises(ValueError, match="enough"):
        async with env.backend.predict(env.target, request) as call:
            call.deliver(handle)
            await call.wait_end()
    with trio.fail_after(10):
        await env.cancelled("p5")


async def test_a_backend_that_cannot_be_reached_is_unavailable(env: Env) -> None:
    request = asked("p6", SCRIPT)
    with (
        trio.fail_after(10),
        pytest.raises(BackendUnavailable, match=r"^model backend unavailable"),
    ):
        async with env.backend.predict(env.unreachable, request) as call:
            async for _ in call:
                pass
    with trio.fail_after(10), pytest.raises(BackendUnavailable):
        await env.backend.describe(env.unreachable)
    assert await env.backend.check_health(env.unreachable) == "UNAVAILABLE"


async def test_describe_and_health_of_a_backend_that_answers(env: Env) -> None:
    with trio.fail_after(10):
        assert await env.backend.describe(env.target) == SCRIPTED_INFO
        assert await env.backend.check_health(env.target) == "UNKNOWN"  # no health service


async def test_the_caller_s_deadline_is_the_call_s(env: Env) -> None:
    """The caller's Trio deadline when the call starts is the call's own
    (gRPC's deadline; the fake's): past it the call ends by itself with
    BackendTimeout, even for a caller shielded from its own cancel, and the
    backend sees it end."""
    request = asked("p7", {"chunks": ["a"], "hang": True})
    raised = False
    with trio.move_on_after(0.5):
        async with env.backend.predict(env.target, request) as call:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 10):
                with pytest.raises(BackendTimeout, match="deadline exceeded"):
                    async for _ in call:
                        pass
                raised = True  # not reached if the shield's own deadline ended it
    assert raised  # by the call's own deadline, not the shield's 10 s
    with trio.fail_after(10):
        await env.cancelled("p7")
    assert env.backend.active_calls == 0


async def test_a_caller_cancelled_before_the_call_starts_is_cancelled(env: Env) -> None:
    """A caller already cancelled when it starts a call (a streaming
    create whose client reset while it was created) is cancelled, not
    timed out: its effective deadline then reads -inf, which is not a
    deadline of the call's."""
    request = asked("p8", {"chunks": ["a"], "hang": True})
    raised: BaseException | None = None
    with trio.fail_after(10), trio.CancelScope() as scope:
        scope.cancel()
        try:
            async with env.backend.predict(env.target, request) as call:
                async for _ in call:
                    pass
        except BaseException as exc:
            raised = exc
            raise
    assert isinstance(raised, trio.Cancelled), raised
    assert env.backend.active_calls == 0


def test_starts_are_split_into_requests_a_backend_receives() -> None:
    """Starts asked at once are written as few requests as a backend's
    4 MiB receive limit allows: five inputs of 900 kB in two."""
    from bridge._proto.v1 import predictor_pb2 as pb
    from bridge.backends.mux import MAX_REQUEST, _requests

    starts = [
        pb.Start(key=n, request=wire.predict_request(f"p{n}", {"prompt": "x" * 900_000}))
        for n in range(5)
    ]
    requests = _requests(starts, [7])
    assert [len(r.start) for r in requests] == [3, 2]
    assert list(requests[0].cancel) == [7]
    assert all(r.ByteSize() <= MAX_REQUEST for r in requests)
    assert [s.key for r in requests for s in r.start] == list(range(5))
