"""``make test-llm``: a real transformer served by :mod:`bridge.sdk.hf`
through a real bridge: a GPT-2 of two layers with a tokenizer trained on the
bundled fables, trained for a few seconds here (no download), in a
``serve-model`` process of its own."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import replicate
import trio

from bridge.sdk.hf import train_fable_gpt2
from tests.backends import ENV
from tests.conftest import StartBridge, create
from tests.helpers import in_thread, kill_what_is_left, start_run_demo, wait_for
from tests.sse_clients import spec_events

NAME = "demo/fable-gpt2"


class ModelProcess:
    """``python -m bridge serve-model llm.py:Predictor``, its log lines kept."""

    def __init__(self, directory: Path, weights: Path, template: str | None = None) -> None:
        (directory / "llm.py").write_text(
            "from bridge.sdk.hf import TransformersPredictor\n\n\n"
            "class Predictor(TransformersPredictor):\n"
            f"    model_path = {str(weights)!r}\n"
            + (
                "\n    def setup(self):\n"
                "        super().setup()\n"
                f"        self.tokenizer.chat_template = {template!r}\n"
                if template is not None
                else ""
            )
        )
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "bridge", "serve-model", "llm.py:Predictor"),
                *("--name", NAME, "--port", "0", "--stop-on-eof"),
            ],
            cwd=directory,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        self.target = wait_for(self.process.stdout, rb"listening on (\S+)")[1].decode()
        self.lines: list[str] = []
        self.logged = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.logged:
                self.lines.append(line.decode())
                self.logged.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """The first log line matching *pattern* (waits for it)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := re.search(pattern, line))]
            return bool(found)

        with self.logged:
            assert self.logged.wait_for(seen, timeout), "".join(self.lines)
        return found[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XDG_CACHE_HOME holding the fable model, trained once for the tests."""
    cache = tmp_path_factory.mktemp("cache")
    train_fable_gpt2(cache / "grpc-sse-bridge" / "fable-gpt2")
    return cache


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Iterator[ModelProcess]:
    weights = cache / "grpc-sse-bridge" / "fable-gpt2"
    served = ModelProcess(tmp_path_factory.mktemp("llm"), weights)
    yield served
    served.stop()


def text_of(raw: bytes) -> str:
    events = spec_events([raw])
    assert events[-1].event == "done" and events[-1].data == "{}", events[-3:]
    return "".join(e.data for e in events if e.event == "output")


async def test_curl_and_replicate_s_client_stream_the_same_words(
    start_bridge: StartBridge, model: ModelProcess
) -> None:
    url = await start_bridge(targets={NAME: model.target})
    body = json.dumps({"input": {"prompt": "A crow", "max_new_tokens": 40}})
    curl = await trio.run_process(
        [
            *("curl", "-sN", "-X", "POST", f"{url}/v1/models/{NAME}/predictions"),
            *("-H", "Content-Type: application/json", "-H", "Accept: text/event-stream"),
            *("-d", body),
        ],
        capture_stdout=True,
    )
    words = text_of(curl.stdout)
    assert len(words.split()) >= 5 and re.search(r"[a-z]{3,} [a-z]{2,}", words), words
    client = replicate.Client(api_token="r8_test", base_url=url)

    def stream() -> list[str]:
        return [
            str(e) for e in client.stream(NAME, input={"prompt": "A crow", "max_new_tokens": 40})
        ]

    pieces = await in_thread(stream)
    assert len(pieces) > 5 and "".join(pieces) == words  # greedy: the same words


async def test_a_cancel_stops_generate_in_the_model_process(
    start_bridge: StartBridge, model: ModelProcess
) -> None:
    url = await start_bridge(targets={NAME: model.target})
    input = {"prompt": "The lion", "max_new_tokens": 2000}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        whole = await create(client, NAME, input)
        whole = (await client.get(whole["urls"]["get"], headers={"Prefer": "wait"})).json()
        while whole["status"] not in ("succeeded", "failed"):
            whole = (await client.get(whole["urls"]["get"])).json()
        made = whole["metrics"]["output_token_count"]
        prediction = await create(client, NAME, input)
        outputs = 0
        async with client.stream("GET", prediction["urls"]["stream"]) as stream:
            async for line in stream.aiter_lines():
                outputs += line == "event: output"
                if outputs == 5:
                    break
        await client.post(prediction["urls"]["cancel"])
    ended = model.wait_for_line(r"generate ended after (\d+) of 2000 new tokens \(cancelled\)")
    assert int(ended[1]) < made / 2, (ended[0], made)


async def test_the_end_of_text_token_is_not_output(
    start_bridge: StartBridge, model: ModelProcess
) -> None:
    """A generation that ends at the model's end-of-text token: the token
    is not part of the output (it showed in OpenAI's content, Replicate's
    output, ... as ``<|endoftext|>``)."""
    url = await start_bridge(targets={NAME: model.target})
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        made = await client.post(
            f"/v1/models/{NAME}/predictions",
            json={"input": {"prompt": "A crow", "max_new_tokens": 400}},
            headers={"Prefer": "wait=60"},
        )
        final = made.json()
    assert final["status"] == "succeeded", final
    assert final["metrics"]["output_token_count"] < 400  # it ended at its end of text
    text = "".join(final["output"])
    assert "<|endoftext|>" not in text and len(text.split()) >= 5, text


async def test_openai_s_client_sees_the_limit_and_the_model_s_counts(
    start_bridge: StartBridge, model: ModelProcess
) -> None:
    url = await start_bridge(targets={NAME: model.target})
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "A fox"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-2].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 6)
    await client.close()


#: A chat template of the kind an instruct model's tokenizer carries.
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


async def test_a_tokenizer_s_chat_template_shapes_the_conversation(
    start_bridge: StartBridge, tmp_path: Path, cache: Path
) -> None:
    """OpenAI's messages reach a model whose tokenizer has a chat template
    through it (an instruct model got the last user message as raw text):
    the prompt's token count is the rendered conversation's."""
    from transformers import AutoTokenizer

    weights = cache / "grpc-sse-bridge" / "fable-gpt2"
    served = ModelProcess(tmp_path, weights, TEMPLATE)
    try:
        url = await start_bridge(targets={NAME: served.target})
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        messages = [
            {"role": "system", "content": "You tell fables."},
            {"role": "user", "content": "A fox"},
        ]
        answer = await client.chat.completions.create(model=NAME, messages=messages, max_tokens=3)
        await client.close()
        tokenizer = AutoTokenizer.from_pretrained(weights)
        rendered = "<system> You tell fables.\n<user> A fox\n<assistant>"
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == len(tokenizer(rendered)["input_ids"])
        assert answer.usage.prompt_tokens > len(tokenizer("A fox")["input_ids"])
    finally:
        served.stop()


async def test_run_demo_llm_serves_it_beside_the_demo_models(cache: Path) -> None:
    """``make run-llm``: run-demo --llm, its fable model from the cache."""
    run, url, backend_pid = await start_run_demo("--llm", env=ENV | {"XDG_CACHE_HOME": str(cache)})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            listed = (await client.get("/v1/models")).json()["results"]
            names = {f"{m['owner']}/{m['name']}" for m in listed}
            assert names == {"demo/echo", "demo/story", "demo/batch", NAME}
            answer = await client.post(
                f"/v1/models/{NAME}/predictions",
                json={"input": {"prompt": "The mouse", "max_new_tokens": 12}},
                headers={"Prefer": "wait"},
            )
        assert answer.json()["status"] == "succeeded", answer.text
        assert answer.json()["metrics"]["output_token_count"] == 12
    finally:
        run.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            await run.wait()
        kill_what_is_left(run, backend_pid)
