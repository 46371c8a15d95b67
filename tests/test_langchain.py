"""LangChain's ChatOpenAI (langchain-openai), unmodified, against a real
bridge: a model behind the bridge is a chat model to LangChain."""

from __future__ import annotations

from langchain_openai import ChatOpenAI

from tests.conftest import StartBridge
from tests.helpers import in_thread


async def test_chat_openai_streams_a_story(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    chat = ChatOpenAI(
        model="demo/story",
        base_url=f"{url}/v1",
        api_key="sk-test",
        max_retries=0,
        stream_usage=True,
        extra_body={"delay_ms": 20, "max_words": 20},
    )
    # (LangChain's async API runs on asyncio only; the sync one, in a thread.)
    chunks = await in_thread(lambda: list(chat.stream("Tell me about the lion and the mouse")))
    text = "".join(str(chunk.content) for chunk in chunks)
    assert sum(1 for chunk in chunks if chunk.content) > 3  # word by word
    assert "lion" in text.lower()
    usage = next(chunk.usage_metadata for chunk in chunks if chunk.usage_metadata)
    assert usage["output_tokens"] == len(text.split())
    answer = await in_thread(chat.invoke, [("system", "You tell fables."), ("user", "sour grapes")])
    assert "fox" in str(answer.content).lower()  # the fable of the sour grapes
