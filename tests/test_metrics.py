"""/metrics after predictions: gauges, counters and the latency histograms."""

from __future__ import annotations

import re

import httpx
import trio

from tests.conftest import StartBridge, create, read_stream


def sample(metrics: str, name: str, labels: str) -> float:
    return float(
        re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", metrics, re.MULTILINE)[1]
    )


async def test_histograms_per_model(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    async with httpx.AsyncClient(base_url=url) as client:
        # Two at once: the 200 ms between tokens are waited once, not twice.
        made = [
            await create(client, "demo/echo", {"prompt": "one two three four", "delay_ms": 200})
            for _ in range(2)
        ]
        async with trio.open_nursery() as nursery:
            for p in made:
                nursery.start_soon(read_stream, client, p["urls"]["stream"])
        failed = await create(client, "demo/echo", {"prompt": "x y", "fail_after": 1})
        await read_stream(client, failed["urls"]["stream"])
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    m = response.text
    echo = 'model="demo/echo"'
    assert sample(m, "bridge_predictions_total", f'{echo},status="succeeded"') == 2
    assert sample(m, "bridge_predictions_total", f'{echo},status="failed"') == 1
    assert sample(m, "bridge_tokens_total", echo) == 2 * 4 + 1
    assert sample(m, "bridge_time_to_first_token_seconds_count", echo) == 3
    # One observation per batch after the first (3 per prediction, fewer if
    # a busy machine delivered two tokens at once), each its gap shared by
    # its tokens: 200 ms apart, so none near 0, none beyond seconds.
    gaps = sample(m, "bridge_inter_token_seconds_count", echo)
    assert 2 <= gaps <= 2 * 3
    assert sample(m, "bridge_inter_token_seconds_bucket", f'le="0.05",{echo}') == 0
    assert sample(m, "bridge_inter_token_seconds_bucket", f'le="5.0",{echo}') == gaps
    assert 0.1 * gaps < sample(m, "bridge_inter_token_seconds_sum", echo) < 5 * gaps
    assert sample(m, "bridge_prediction_duration_seconds_count", f'{echo},status="succeeded"') == 2
    assert sample(m, "bridge_queue_wait_seconds_count", echo) == 3
    for gauge in (
        "bridge_predictions_active",
        "bridge_grpc_calls_active",
        "bridge_stream_clients_active",
        "bridge_predictions_queued",
    ):
        assert re.search(rf"^{gauge} 0\.0$", m, re.MULTILINE), gauge
