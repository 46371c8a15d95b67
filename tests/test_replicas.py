"""Several backends for one model (``targets = [a, b]``): real gRPC
replicas share the predictions; one that goes down gets none (its health
is checked, and a call that cannot reach it takes it out at once), and
/health shows each."""

from __future__ import annotations

import collections
import functools
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import trio

from bridge.sdk import Model, ModelServer

from .backends import RawServer, Scripted
from .conftest import StartBridge, poll_until


def replica(tag: str, served: collections.Counter[str]) -> Model:
    async def say(prompt: str) -> AsyncIterator[str]:
        served[tag] += 1
        yield prompt

    return Model("test/replica", say, version="v1")


async def predict(client: httpx.AsyncClient, prompt: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/models/test/replica/predictions",
        json={"input": {"prompt": prompt}},
        headers={"Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_replicas_share_predictions_and_one_that_is_down_gets_none(
    start_bridge: StartBridge,
) -> None:
    served: collections.Counter[str] = collections.Counter()
    # b's port is outside the ephemeral range: once b stops, no server that
    # another test starts on port 0 meanwhile can take it and answer there.
    a, b = ModelServer(replica("a", served)), ModelServer(replica("b", served), port=_low_port())
    with a, b:
        url = await start_bridge(
            targets={"test/replica": (a.target, b.target)},
            model_options={"test/replica": {"health_check_seconds": 0.2}},
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for n in range(20):
                assert (await predict(client, f"p{n}"))["output"] == [f"p{n}"]
            assert served == {"a": 10, "b": 10}  # in turn: none in flight at once
            health = (await client.get("/health")).json()
            assert health["targets"]["test/replica"] == {a.target: "SERVING", b.target: "SERVING"}
            await trio.to_thread.run_sync(b.__exit__, None, None, None)  # b goes down
            for n in range(20):
                got = await predict(client, f"q{n}")
                assert got["status"] == "succeeded" and got["output"] == [f"q{n}"]
            assert served == {"a": 30, "b": 10}
            health = (await client.get("/health")).json()
            assert health["targets"]["test/replica"] == {
                a.target: "SERVING",
                b.target: "UNAVAILABLE",
            }
            assert health["models"]["test/replica"] == "SERVING"
            assert health["status"] == "degraded" and health["ready"]


def _low_port() -> int:
    """A free port below Linux's ephemeral range (32768 on): port 0 never
    picks it."""
    for port in random.sample(range(20_000, 32_000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port between 20000 and 32000")


async def scripted(client: httpx.AsyncClient, n: int) -> None:
    """*n* ``test/scripted`` predictions, one after the other, each ended."""
    for _ in range(n):
        response = await client.post(
            "/v1/models/test/scripted/predictions",
            json={"input": {"chunks": ["x"]}},
            headers={"Prefer": "wait"},
        )
        assert response.json()["status"] == "succeeded", response.text


class Counting(Scripted):
    """A Scripted backend that counts the Predict calls it got."""

    def __init__(self, *, multiplexed: bool = False) -> None:
        super().__init__(multiplexed=multiplexed, predict_too=True)
        self.calls = 0

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        async for message in super().Predict(request, context):
            yield message


async def test_a_replica_that_says_not_serving_gets_no_new_predictions(
    start_bridge: StartBridge,
) -> None:
    """Health-gated: a replica still up but NOT_SERVING (draining, say) is
    left alone until it is SERVING again."""
    with RawServer(Counting(), health=True) as a, RawServer(Counting(), health=True) as b:
        url = await start_bridge(
            targets={"test/scripted": (a.target, b.target)},
            model_options={"test/scripted": {"health_check_seconds": 0.2}},
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            run = functools.partial(scripted, client)

            async def shows(status: str) -> bool:
                health = (await client.get("/health")).json()
                return bool(health["targets"]["test/scripted"][b.target] == status)

            await run(4)
            assert (a.servicer.calls, b.servicer.calls) == (2, 2)
            await trio.to_thread.run_sync(b.set_health, "NOT_SERVING")
            await poll_until(lambda: shows("LOADING"))  # NOT_SERVING, as /health shows it
            await run(6)
            assert (a.servicer.calls, b.servicer.calls) == (8, 2)
            await trio.to_thread.run_sync(b.set_health, "SERVING")
            await poll_until(lambda: shows("SERVING"))
            await run(4)
            assert (a.servicer.calls, b.servicer.calls) == (10, 4)


class Refusing(Counting):
    """Says SERVING, but refuses every prediction as UNAVAILABLE (a replica
    overloaded, or half gone)."""

    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "overloaded")
        yield  # a generator, as the others


async def test_a_call_that_cannot_reach_a_replica_takes_it_out_at_once(
    start_bridge: StartBridge,
) -> None:
    """Between health checks (a minute apart here), a replica that refuses a
    call gets no more: the prediction is retried on another, and so are
    the next ones, without trying it again."""
    with RawServer(Counting(), health=True) as a, RawServer(Refusing(), health=True) as b:
        url = await start_bridge(
            targets={"test/scripted": (a.target, b.target)},
            model_options={"test/scripted": {"health_check_seconds": 60}},
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for _ in range(10):
                response = await client.post(
                    "/v1/models/test/scripted/predictions",
                    json={"input": {"chunks": ["x"]}},
                    headers={"Prefer": "wait"},
                )
                assert response.json()["status"] == "succeeded", response.text
        assert (a.servicer.calls, b.servicer.calls) == (10, 1)


async def test_a_target_naming_several_addresses_is_balanced_and_health_gated_by_grpc(
    start_bridge: StartBridge,
) -> None:
    """``ipv4:a:port,b:port`` (or ``dns:///name:port``): one target whose
    addresses gRPC balances (round_robin) and health-checks itself; one
    that says NOT_SERVING gets no more calls. Backends that offer Stream
    get Predict calls all the same: one long Stream call would pin every
    prediction to one address."""
    with RawServer(Counting(multiplexed=True), health=True) as a:
        port = a.target.rpartition(":")[2]
        with RawServer(Counting(multiplexed=True), health=True, address=f"127.0.0.2:{port}") as b:
            url = await start_bridge(targets={"test/scripted": f"ipv4:{a.target},{b.target}"})
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                run = functools.partial(scripted, client)

                await run(20)
                assert a.servicer.calls + b.servicer.calls == 20
                assert min(a.servicer.calls, b.servicer.calls) >= 5  # both took their turns
                await trio.to_thread.run_sync(b.set_health, "NOT_SERVING")

                async def went_to_a() -> bool:  # once gRPC has seen it, b gets none
                    before = b.servicer.calls
                    await run(1)
                    return b.servicer.calls == before

                await poll_until(went_to_a)
                before = b.servicer.calls
                await run(10)
                assert b.servicer.calls == before
