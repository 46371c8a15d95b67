"""OpenAI's official Python client (openai), unmodified, against a real
bridge: the one base URL serves it beside Replicate's clients."""

from __future__ import annotations

import openai
import replicate

from tests.conftest import StartBridge
from tests.helpers import in_thread


async def test_both_clients_list_the_same_models_from_one_answer(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge()
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    listed = [model async for model in client.models.list()]
    names = sorted(m.id for m in listed)
    assert "demo/echo" in names and "demo/story" in names
    echo = next(m for m in listed if m.id == "demo/echo")
    assert echo.object == "model" and echo.owned_by == "demo" and echo.created > 0
    await client.close()
    rc = replicate.Client(api_token="r8_test", base_url=url)
    page = await in_thread(rc.models.list)
    assert sorted(f"{m.owner}/{m.name}" for m in page.results) == names
