"""OpenAI's official Python client (openai), unmodified, against a real
bridge: the one base URL serves it beside Replicate's clients, over the
same predictions."""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import httpx
import openai
import pytest
import replicate
import trio

from bridge.sdk import Field, Metrics, Model, ModelServer
from tests.conftest import PROBES, StartBridge, ended, open_gate, poll_until, wait_closed
from tests.helpers import connect, health_is_quick, in_thread, request

STORY = {"role": "user", "content": "Tell me about the lion and the mouse"}


async def counted(
    prompt: str,
    max_tokens: Annotated[int, Field("The most words", ge=1)] = 100,
    system_prompt: str = "",
) -> AsyncIterator[Any]:
    """``test/counted``: the prompt's words back, up to ``max_tokens``, as a
    language model reports them: with its token counts in metrics."""
    words = (system_prompt + " | " + prompt).split()[:max_tokens]
    for word in words:
        yield word + " "
    yield Metrics({"input_token_count": len(prompt.split()), "output_token_count": len(words)})


@pytest.fixture(scope="module")
def counted_target() -> Iterator[str]:
    with ModelServer(Model("test/counted", counted, concurrency=0)) as server:
        yield server.target


@pytest.fixture
async def client(start_bridge: StartBridge, counted_target: str) -> AsyncIterator[Any]:
    url = await start_bridge(targets={"test/counted": counted_target})
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    client.bridge_url = url  # type: ignore[attr-defined]
    yield client
    await client.close()


async def prediction(client: Any, openai_id: str) -> dict[str, Any]:
    """The Replicate prediction behind an OpenAI id (chatcmpl-, cmpl-, resp_)."""
    prediction_id = openai_id.split("-", 1)[-1].removeprefix("resp_")
    async with httpx.AsyncClient(base_url=client.bridge_url) as http:
        response = await http.get(f"/v1/predictions/{prediction_id}")
    assert response.status_code == 200, response.text
    return response.json()


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


async def test_a_chat_stream_comes_word_by_word_then_usage(client: Any) -> None:
    stream = await client.chat.completions.create(
        model="demo/story",
        messages=[{"role": "system", "content": "You tell fables."}, STORY],
        stream=True,
        stream_options={"include_usage": True},
        seed=7,
        extra_body={"delay_ms": 20, "max_words": 30},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    words = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(words) > 5 and all(words)
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage is not None
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    # An ordinary prediction: its output is what the stream said, chunk for
    # chunk; with no counts from the model, a token is a chunk.
    behind = await prediction(client, chunks[0].id)
    assert behind["status"] == "succeeded" and behind["model"] == "demo/story"
    assert "".join(behind["output"]) == "".join(words)
    assert behind["input"] == {
        "prompt": STORY["content"],
        "seed": 7,
        "delay_ms": 20,
        "max_words": 30,
    }
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (0, len(behind["output"]))


async def test_the_sync_client_gets_one_answer_with_the_model_s_counts(
    client: Any,
) -> None:
    sync = openai.OpenAI(base_url=str(client.base_url), api_key="sk-test", max_retries=0)
    answer = await in_thread(
        sync.chat.completions.create,
        model="test/counted",
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": "a b c d e f"},
        ],
        max_completion_tokens=4,
    )
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    # The developer message is the model's system_prompt; four words, its limit.
    assert answer.choices[0].message.content == "be brief | a "
    assert answer.choices[0].finish_reason == "length"  # it stopped at the limit it was given
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (6, 4)
    whole = await in_thread(
        sync.chat.completions.create,
        model="test/counted",
        messages=[{"role": "user", "content": "a b"}],
        max_completion_tokens=40,
    )
    assert whole.choices[0].finish_reason == "stop"
    assert whole.choices[0].message.content == "| a b "
    sync.close()


async def test_completions_stream(client: Any) -> None:
    stream = await client.completions.create(
        model="demo/echo", prompt="one two three", stream=True, extra_body={"delay_ms": 20}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].object == "text_completion" and chunks[0].id.startswith("cmpl-")
    texts = [c.choices[0].text for c in chunks]
    assert "".join(texts) == "one two three" and len(texts) > 2 and texts[-1] == ""
    assert chunks[-1].choices[0].finish_reason == "stop"
    answer = await client.completions.create(model="demo/echo", prompt="all at once")
    assert answer.choices[0].text == "all at once" and answer.usage.completion_tokens == 3


async def test_responses_stream_and_retrieve(client: Any) -> None:
    stream = await client.responses.create(
        model="demo/story",
        instructions="You tell fables.",
        input="the lion and the mouse",
        stream=True,
        extra_body={"delay_ms": 20, "max_words": 20},
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and kinds.count("response.output_text.delta") == len(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.status == "completed" and done.output_text == "".join(deltas)
    assert done.instructions == "You tell fables."
    assert done.usage.output_tokens == len((await prediction(client, done.id))["output"])
    again = await client.responses.retrieve(done.id)
    assert (again.id, again.status, again.output_text) == (done.id, "completed", done.output_text)
    answer = await client.responses.create(
        model="demo/echo", input=[{"role": "user", "content": "said once"}]
    )
    assert (answer.status, answer.output_text) == ("completed", "said once")


async def test_unknown_models_and_bad_bodies_are_openai_s_errors(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="no/such", messages=[STORY])
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="demo/echo", messages="hi")
    assert bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as invalid:
        await client.chat.completions.create(
            model="demo/echo", messages=[STORY], extra_body={"delay_ms": -1}
        )
    assert invalid.value.param == "delay_ms" and "delay_ms" in invalid.value.message
    with pytest.raises(openai.BadRequestError) as chained:
        await client.responses.create(model="demo/echo", input="hi", previous_response_id="resp_1")
    assert chained.value.param == "previous_response_id"


async def test_a_model_failing_mid_stream_is_an_api_error_after_its_text(client: Any) -> None:
    stream = await client.chat.completions.create(
        model="demo/echo",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        extra_body={"fail_after": 2, "delay_ms": 5},
    )
    got = []
    with pytest.raises(openai.APIError) as failed:
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content)
    assert "".join(got[1:]) == "one two "
    assert "echo failed after 2 chunks" in failed.value.message
    events = await client.responses.create(
        model="demo/echo", input="one two three", stream=True, extra_body={"fail_after": 1}
    )
    last = [event async for event in events][-1]
    assert last.type == "response.failed" and "echo failed after 1" in last.response.error.message


async def test_closing_the_stream_cancels_the_prediction(client: Any) -> None:
    key = uuid.uuid4().hex
    stream = await client.chat.completions.create(
        model="test/endless", messages=[STORY], stream=True, extra_body={"key": key}
    )
    ids = []
    async for chunk in stream:
        ids.append(chunk.id)
        if len(ids) == 3:
            break
    made = await in_thread(lambda: PROBES[key].made)
    await stream.close()
    probe = await wait_closed(key)  # the backend's generator was closed
    assert probe.made < made + 100
    async with httpx.AsyncClient(base_url=client.bridge_url) as http:
        behind = await ended(http, ids[0].removeprefix("chatcmpl-"))
    assert behind["status"] == "canceled"


async def test_a_client_that_stops_waiting_for_an_answer_cancels_it(client: Any) -> None:
    """Not streamed: the client waits for the whole answer, then gives up."""
    key = uuid.uuid4().hex
    body = json.dumps({"model": "test/endless", "messages": [STORY], "key": key}).encode()
    stream = await connect(client.bridge_url)
    await stream.send_all(
        request("POST", "/v1/chat/completions", body=body, Content_Type="application/json")
    )

    async def running() -> bool:
        return key in PROBES and PROBES[key].made > 0

    await poll_until(running)
    await stream.aclose()
    await wait_closed(key)


async def test_auth_limits_and_sizes_answer_in_openai_s_shape(start_bridge: StartBridge) -> None:
    url = await start_bridge(
        auth_tokens=frozenset({"sk-right"}), max_running=1, max_queued=0, max_body_bytes=2000
    )
    wrong = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        await wrong.chat.completions.create(model="demo/echo", messages=[STORY])
    assert refused.value.code == "invalid_api_key"
    right = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-right", max_retries=0)
    with pytest.raises(openai.APIStatusError) as large:
        await right.chat.completions.create(model="demo/echo", messages=[STORY] * 100)
    assert large.value.status_code == 413 and large.value.type == "invalid_request_error"
    key = uuid.uuid4().hex
    holding = await right.chat.completions.create(
        model="test/gate", messages=[STORY], stream=True, extra_body={"key": key}
    )
    assert (await anext(aiter(holding))).choices[0].delta.role == "assistant"
    with pytest.raises(openai.RateLimitError) as full:
        await right.completions.create(model="demo/echo", prompt="one more")
    assert full.value.response.headers["Retry-After"].isdigit()
    assert full.value.type == "rate_limit_error"
    open_gate(key)
    assert "".join([c.choices[0].delta.content or "" async for c in holding]) == "waiting through"


async def test_no_chunk_breaks_a_line_and_idle_streams_get_keepalives(
    start_bridge: StartBridge,
) -> None:
    url = await start_bridge(ping_seconds=0.1)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    tokens = ["a\r\n", "b\rc", "\u2028d\n\n", "data: [DONE]\n\n", ""]
    stream = await client.chat.completions.create(
        model="demo/echo", messages=[STORY], stream=True, extra_body={"tokens": tokens}
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "".join(tokens)
    await client.close()
    key = uuid.uuid4().hex
    body = {"model": "test/gate", "messages": [STORY], "stream": True, "key": key}
    with trio.fail_after(10):
        raw = await read_while_gated(url, body, key)
    assert raw.endswith(b"data: [DONE]\n\n") and b"through" in raw


async def read_while_gated(url: str, body: dict[str, Any], key: str) -> bytes:
    """The stream of a test/gate chat, its gate opened once a keep-alive
    comment came while the model was silent."""
    raw = b""
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        async for piece in response.aiter_raw():
            raw += piece
            if b"\n: ping\n" in raw.split(b"waiting")[-1]:
                open_gate(key)
    return raw


async def test_a_request_keeps_no_more_than_its_prediction_does(client: Any) -> None:
    """The body is let go of once the prediction is created: ten streams
    whose bodies carry 100,000 ignored objects each hold about what ten
    Replicate predictions do, not ten parsed bodies (8 MB each)."""
    junk = [{}] * 100_000
    keys = [uuid.uuid4().hex for _ in range(10)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        streams = [
            await client.chat.completions.create(
                model="test/gate",
                messages=[STORY],
                stream=True,
                extra_body={"key": k, "junk": junk},
            )
            for k in keys
        ]
        for stream in streams:
            assert (await anext(aiter(stream))).choices[0].delta.role == "assistant"
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    await health_is_quick(client.bridge_url)  # ten such bodies stall no one
    for key, stream in zip(keys, streams, strict=True):
        open_gate(key)
        await stream.close()
    assert held < 10 * 1_000_000, held


async def test_log_lines_and_empty_chunks_do_not_hold_back_keepalives(
    start_bridge: StartBridge,
) -> None:
    # Empty chunks every 0.1 s, for 1.5 s: more often than a ping is due.
    url = await start_bridge(ping_seconds=0.3)
    body = {
        "model": "demo/echo", "messages": [STORY], "stream": True,
        "tokens": [""] * 15 + ["x"], "delay_ms": 100,
    }  # fmt: skip
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/chat/completions", json=body)
    before_x = response.content.split(b'"x"')[0]
    assert b"\n: ping\n" in before_x.split(b'"assistant"')[1]


async def test_a_canceled_answer_is_not_retried_by_the_client(client: Any) -> None:
    """A non-streaming request whose prediction is canceled gets a 500 that
    says not to retry: openai-python (max_retries 2) does not make a new
    prediction, undoing the cancel."""
    key = uuid.uuid4().hex
    retrying = openai.OpenAI(base_url=str(client.base_url), api_key="sk-test", max_retries=2)
    async with httpx.AsyncClient(base_url=client.bridge_url) as http, trio.open_nursery() as n:

        async def cancel_it() -> None:
            async def running() -> bool:
                return key in PROBES and PROBES[key].made > 0

            await poll_until(running)
            newest = (await http.get("/v1/predictions")).json()["results"][0]
            assert newest["input"]["key"] == key
            await http.post(f"/v1/predictions/{newest['id']}/cancel")

        n.start_soon(cancel_it)
        with pytest.raises(openai.InternalServerError) as failed:
            await in_thread(
                retrying.chat.completions.create,
                model="test/endless",
                messages=[STORY],
                extra_body={"key": key},
            )
        listed = (await http.get("/v1/predictions")).json()["results"]
    assert "canceled" in failed.value.message
    assert [p["input"].get("key") for p in listed].count(key) == 1
    retrying.close()


async def test_cancel_after_limits_an_openai_request_too(client: Any) -> None:
    stream = await client.chat.completions.create(
        model="test/endless",
        messages=[STORY],
        stream=True,
        extra_body={"key": uuid.uuid4().hex},
        extra_headers={"Cancel-After": "1s"},
    )
    with pytest.raises(openai.APIError) as ended:
        async for _ in stream:
            pass
    assert ended.value.message == "the prediction was canceled"


async def test_a_retrieved_response_says_what_the_created_one_did(client: Any) -> None:
    created = await client.responses.create(
        model="test/counted", input="a b c d", max_output_tokens=2
    )
    assert created.status == "incomplete"
    assert created.incomplete_details.reason == "max_output_tokens"
    again = await client.responses.retrieve(created.id)
    assert (again.status, again.output_text) == ("incomplete", created.output_text)


async def test_openai_s_shapes_are_checked_before_anything_runs(client: Any) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    bad = [
        ({"messages": [{"role": "user", "content": [image]}, STORY]}, "messages[0].content"),
        ({"messages": [STORY], "n": True}, "n"),
        ({"messages": [STORY], "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [STORY], "stream": True, "stream_options": True}, "stream_options"),
        ({"messages": [STORY], "stream": "yes"}, "stream"),
        ({"messages": [{"content": "no role"}]}, "messages[0]"),
    ]
    async with httpx.AsyncClient(base_url=client.bridge_url) as http:
        before = len((await http.get("/v1/predictions")).json()["results"])
        for body, param in bad:
            answer = await http.post("/v1/chat/completions", json={"model": "demo/echo", **body})
            assert answer.status_code == 400, body
            assert answer.json()["error"]["param"] == param, body
        assert len((await http.get("/v1/predictions")).json()["results"]) == before


async def lying(prompt: str) -> AsyncIterator[Any]:
    """``test/lying``: two words, and token counts no model could have."""
    yield "two "
    yield "words"
    yield Metrics({"input_token_count": -1e18, "output_token_count": 1e308})


async def test_usage_takes_only_token_counts_that_can_be(start_bridge: StartBridge) -> None:
    """A backend's metrics reach usage only as whole numbers in a sane
    range: a negative or 309-digit count is its own error, not a count."""
    with ModelServer(Model("test/lying", lying)) as server:
        url = await start_bridge(targets={"test/lying": server.target})
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        answer = await client.chat.completions.create(
            model="test/lying", messages=[{"role": "user", "content": "x"}]
        )
        await client.close()
    assert answer.choices[0].message.content == "two words"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (0, 2)


async def test_max_tokens_reaches_the_input_a_model_marks_for_it(client: Any) -> None:
    """demo/story's max_words is marked as its token limit (Field(...,
    openai="max_tokens")): OpenAI's max_tokens reaches it, as almost every
    OpenAI tool sends one; it took 104 words for max_tokens=5 before."""
    answer = await client.chat.completions.create(
        model="demo/story", messages=[STORY], max_tokens=5, extra_body={"delay_ms": 0}
    )
    words = answer.choices[0].message.content.split()
    assert 0 < len(words) <= 5, answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length"
    assert (await prediction(client, answer.id))["input"]["max_words"] == 5
