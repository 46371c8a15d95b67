"""OpenAI's official JS client (openai from npm, installed by ``make test``
into tests/js), unmodified, against a real bridge."""

from __future__ import annotations

from tests.conftest import StartBridge
from tests.helpers import node

STORY = [{"role": "user", "content": "Tell me about the lion and the mouse"}]


async def test_js_streams_a_chat_completion_word_by_word(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    args = {"model": "demo/story", "messages": STORY, "max_words": 20, "delay_ms": 20}
    (result,) = await node(url, "chat-stream", args, "openai.mjs")
    assert result["id"].startswith("chatcmpl-") and result["finish"] == "stop"
    assert len(result["deltas"]) > 3
    assert "lion" in "".join(result["deltas"]).lower()
    # A chunk is a word (no counts from the model); a delta may hold several.
    assert result["usage"]["completion_tokens"] == len("".join(result["deltas"]).split())


async def test_js_raises_the_model_s_error_after_its_text(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    args = {"model": "demo/echo", "messages": [{"role": "user", "content": "one two three"}]}
    (result,) = await node(url, "chat-error", args | {"fail_after": 2}, "openai.mjs")
    assert "".join(result["deltas"]) == "one two "
    assert "echo failed after 2 chunks" in result["error"]
