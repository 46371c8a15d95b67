"""Soak: 500 streams at once; half the readers vanish, a quarter of the
predictions are cancelled, the rest finish. Nothing is lost, nothing leaks.
Bounded: 500 predictions of 20 chunks, well under a minute."""

from __future__ import annotations

import json
import re
import threading
import uuid

import httpx
import trio

from tests.conftest import StartBridge, poll_until
from tests.sse_clients import spec_events

N = 500
WORDS = [f"w{i} " for i in range(20)]


def gauge(metrics: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)[1])


async def test_soak(start_bridge: StartBridge) -> None:
    url = await start_bridge(max_queued=N)  # 256 run at once, the rest wait
    threads_at_start = {t.ident for t in threading.enumerate()}
    # Room for every stream, create and cancel at once: a cancel that waited
    # for a free connection could come after its prediction ended.
    limits = httpx.Limits(max_connections=2 * N)
    streams: dict[int, bytes] = {}
    ids: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        creating = trio.CapacityLimiter(50)

        async def one(i: int) -> None:
            # Those to cancel never end by themselves: the cancel lands
            # mid-stream however late their reader connects.
            model, input = (
                ("test/endless", {"key": uuid.uuid4().hex})
                if i % 4 == 0
                else ("demo/echo", {"prompt": "".join(WORDS), "delay_ms": 20})
            )
            async with creating:
                r = await client.post(f"/v1/models/{model}/predictions", json={"input": input})
            prediction = r.json()
            ids[i] = prediction["id"]
            drop, cancel = i % 2 == 1, i % 4 == 0
            received = b""
            async with client.stream("GET", prediction["urls"]["stream"]) as response:
                async for piece in response.aiter_raw():
                    received += piece
                    outputs = received.count(b"event: output")
                    if drop and outputs >= 3:
                        return  # this reader vanishes mid-stream
                    if cancel and outputs >= 5 and b"cancel sent" not in received:
                        canceled = await client.post(prediction["urls"]["cancel"])
                        assert canceled.json()["status"] == "canceled", i
                        received += b": cancel sent\n"
            streams[i] = received

        with trio.fail_after(50):
            async with trio.open_nursery() as nursery:
                for i in range(N):
                    nursery.start_soon(one, i)

        statuses = {}
        for i, prediction_id in ids.items():
            statuses[i] = (await client.get(f"/v1/predictions/{prediction_id}")).json()["status"]

        async def all_idle() -> bool:
            metrics = (await client.get("/metrics")).text
            return all(
                gauge(metrics, g) == 0
                for g in (
                    "bridge_grpc_calls_active",
                    "bridge_predictions_active",
                    "bridge_stream_clients_active",
                )
            )

        await poll_until(all_idle)
        metrics = (await client.get("/metrics")).text

    assert len(ids) == N and len(streams) == N // 2
    for i in range(N):
        assert statuses[i] == ("canceled" if i % 4 == 0 else "succeeded"), i
    for i, raw in streams.items():  # the readers that stayed
        events = spec_events([raw])
        outputs = [e.data for e in events if e.event == "output"]
        numbers = [int(e.id.split(":")[1]) for e in events]
        assert numbers == sorted(set(numbers)), i  # in order, each once
        assert events[-1].event == "done"
        if i % 4 == 0:
            assert json.loads(events[-1].data) == {"reason": "canceled"}
            assert len(outputs) >= 5
            assert outputs == [f"t{k} " for k in range(1, len(outputs) + 1)]
        else:
            assert events[-1].data == "{}"
            assert outputs == WORDS, i
    assert 'bridge_predictions_total{model="test/endless",status="canceled"} 125.0' in metrics
    assert 'bridge_predictions_total{model="demo/echo",status="succeeded"} 375.0' in metrics
    # No thread started during the soak is left (threads of earlier tests in
    # this process may have ended meanwhile, so counts alone would mislead).
    assert {t.ident for t in threading.enumerate()} - threads_at_start == set()
