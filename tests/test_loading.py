"""A model that is still loading (its setup() running, as weights load for
minutes): the backend listens at once, and the bridge keeps predictions
waiting, cancellable, until it is ready or load_timeout_seconds passes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from bridge.sdk import Model, ModelServer
from tests.conftest import StartBridge, create, poll_until


class Slow:
    """setup() waits for the test to let it finish."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def setup(self) -> None:
        self.release.wait(30)

    def predict(self, prompt: str) -> Iterator[str]:
        yield from (word + " " for word in prompt.split())


def refused(caplog: pytest.LogCaptureFixture) -> int:
    return sum("refused: model is loading" in r.getMessage() for r in caplog.records)


async def test_predictions_wait_while_the_model_loads_then_run(
    start_bridge: StartBridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.sdk")
    slow = Slow()
    with ModelServer(Model("test/slow", slow), wait_for_setup=False) as server:
        try:
            url = await start_bridge({"test/slow": server.target})
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                health = (await client.get("/health")).json()
                assert health["models"]["test/slow"] == "LOADING"
                assert health["ready"] is False
                predictions = [
                    await create(client, "test/slow", {"prompt": f"word {i}"}) for i in range(3)
                ]

                # Each has been refused as loading at least once, and waits.
                async def tried() -> bool:
                    return refused(caplog) >= 3

                await poll_until(tried)
                for prediction in predictions:
                    got = (await client.get(prediction["urls"]["get"])).json()
                    assert got["status"] == "starting"
                canceled = await client.post(predictions[2]["urls"]["cancel"])
                assert canceled.json()["status"] == "canceled"  # waiting is cancellable
                slow.release.set()

                async def done() -> bool:
                    got = [(await client.get(p["urls"]["get"])).json() for p in predictions[:2]]
                    return all(g["status"] == "succeeded" for g in got)

                await poll_until(done)
                outputs = [
                    (await client.get(p["urls"]["get"])).json()["output"] for p in predictions[:2]
                ]
                assert outputs == [["word ", "0 "], ["word ", "1 "]]

                async def serving() -> bool:  # /health is at most a second old
                    return (await client.get("/health")).json()["models"]["test/slow"] == "SERVING"

                await poll_until(serving)
        finally:
            slow.release.set()


async def test_a_model_that_never_loads_fails_its_predictions_after_load_timeout(
    start_bridge: StartBridge,
) -> None:
    slow = Slow()
    with ModelServer(Model("test/stuck", slow), wait_for_setup=False) as server:
        try:
            options: dict[str, Any] = {"load_timeout_seconds": 1}
            url = await start_bridge(
                {"test/stuck": server.target}, model_options={"test/stuck": options}
            )
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                prediction = await create(client, "test/stuck", {"prompt": "never"})
                start = trio.current_time()

                async def failed() -> bool:
                    got = (await client.get(prediction["urls"]["get"])).json()
                    return got["status"] == "failed"

                await poll_until(failed)
                assert trio.current_time() - start > 0.5
                error = (await client.get(prediction["urls"]["get"])).json()["error"]
        finally:
            slow.release.set()
    assert error == (
        "model backend unavailable: model is loading: "
        "still loading after load_timeout_seconds (1 s)"
    )
