"""Cog predictors (``cog`` 0.23 from PyPI, installed by ``make test``) served
by ``python -m bridge serve-model`` and streamed through a real bridge."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import trio

from bridge.sdk import ModelServer
from bridge.sdk.cog import ModelLoadError, load_model
from tests.backends import ENV, read_until
from tests.conftest import StartBridge, create, read_stream
from tests.helpers import assert_problem

#: The seed's model, exactly as the article ends.
SEED = """\
from cog import BasePredictor, Path, ConcatenateIterator

class Predictor(BasePredictor):
    def predict(self) -> ConcatenateIterator[str]:
        tokens = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
        for token in tokens:
            yield token + " "
"""

RICH = """\
from typing import Iterator

from cog import BasePredictor, ConcatenateIterator, Input, Path


class Predictor(BasePredictor):
    setups = 0

    def setup(self) -> None:
        Predictor.setups += 1

    def predict(
        self,
        prompt: str = Input(description="What to say"),
        times: int = Input(default=2, ge=1, le=5, description="How many times"),
        mood: str = Input(default="calm", choices=["calm", "loud"]),
        temperature: float = Input(default=0.5, ge=0.0, le=1.0),
    ) -> ConcatenateIterator[str]:
        yield f"setups={Predictor.setups} "
        for _ in range(times):
            yield (prompt.upper() if mood == "loud" else prompt) + " "


SEEN = []


class Files(BasePredictor):
    def predict(self, image: Path = Input(description="Any file")) -> Iterator[Path]:
        SEEN.append(image)
        data = image.read_bytes()
        out = Path(str(image) + ".reversed.txt")
        out.write_bytes(data[::-1])
        yield out


def shout(text: str = Input(description="Text")) -> str:
    return text.upper() + "!"
"""

PLAIN = """\
def predict(word: str, repeat: int = 2):
    for _ in range(repeat):
        yield word + " "
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


async def test_the_seeds_cog_predictor_streams_through_the_bridge(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """``python -m bridge serve-model predict.py:Predictor --name me/fox``,
    as a process, in the directory of the seed's unchanged ``predict.py``."""
    write(tmp_path, "predict.py", SEED)
    command = [sys.executable, "-m", "bridge", "serve-model", "predict.py:Predictor"]
    command += ["--name", "me/fox", "--host", "127.0.0.1", "--port", "0", "--stop-on-eof"]
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd=tmp_path
        )
        try:
            line = await read_until(process.stdout, rb"^(.*)\n")
            assert line[1].startswith(b"me/fox listening on 127.0.0.1:")
            target = line[1].decode().rpartition(" ")[2]
            url = await start_bridge(targets={"me/fox": target})
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                prediction = await create(client, "me/fox", {})
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                outputs = [e.data for e in events if e.event == "output"]
                assert "".join(outputs) == "The quick brown fox jumps over the lazy dog "
                assert outputs[0] == "The " and len(outputs) == 9  # token by token
                assert events[-1].event == "done" and events[-1].data == "{}"
                model = (await client.get("/v1/models/me/fox")).json()
                output_schema = model["latest_version"]["openapi_schema"]["components"]
                assert output_schema["schemas"]["Output"]["x-cog-array-display"] == "concatenate"
        finally:
            process.terminate()
            with trio.fail_after(10):
                assert await process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_cog_inputs_become_the_schema_and_are_checked(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    model = load_model(str(write(tmp_path, "rich_model.py", RICH)) + ":Predictor", "me/rich")
    schema = model.info.input_schema
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert list(props) == ["prompt", "times", "mood", "temperature"]
    assert props["prompt"] == {
        "title": "Prompt", "x-order": 0, "type": "string", "description": "What to say",
    }  # fmt: skip
    assert props["times"] | {} == {
        "title": "Times", "x-order": 1, "type": "integer", "description": "How many times",
        "minimum": 1, "maximum": 5, "default": 2,
    }  # fmt: skip
    assert props["mood"]["enum"] == ["calm", "loud"] and props["mood"]["default"] == "calm"
    assert (props["temperature"]["minimum"], props["temperature"]["maximum"]) == (0.0, 1.0)
    assert model.info.output_schema["x-cog-array-type"] == "iterator"
    with ModelServer(model) as server:
        url = await start_bridge(targets={"me/rich": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            for bad in ({"prompt": "x", "times": 9}, {"prompt": "x", "mood": "sad"}, {}):
                response = await client.post("/v1/models/me/rich/predictions", json={"input": bad})
                assert_problem(response, 422)
            outputs = []
            for _ in range(2):
                prediction = await create(client, "me/rich", {"prompt": "hi", "mood": "loud"})
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                outputs.append("".join(e.data for e in events if e.event == "output"))
    assert outputs == ["setups=1 HI HI "] * 2  # defaults applied; setup() ran once


async def test_a_pattern_from_the_model_cannot_stall_the_server(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """``Input(regex=r"^(\\w+\\s?)*$")`` and 29 characters: Python's ``re``
    took 15 s to say they do not match (4 times longer for every two more),
    holding the server. Patterns run on jsonschema-rs' engine: at once."""
    text = """\
        from cog import BasePredictor, Input

        class Predictor(BasePredictor):
            def predict(self, words: str = Input(regex=r"^(\\w+\\s?)*$")) -> str:
                return words
        """
    model = load_model(str(write(tmp_path, "regex_model.py", text)) + ":Predictor", "me/regex")
    assert model.info.input_schema["properties"]["words"]["pattern"] == r"^(\w+\s?)*$"
    with ModelServer(model) as server:
        url = await start_bridge(targets={"me/regex": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await create(client, "me/regex", {"words": "all word characters"})
            before = trio.current_time()
            refused = await client.post(
                "/v1/models/me/regex/predictions", json={"input": {"words": "a" * 28 + "!"}}
            )
            took = trio.current_time() - before
            problem = assert_problem(refused, 422)
            assert problem["invalid_fields"][0]["field"] == "words"
            assert took < 2, took  # (a stall's guard, not a speed test: it took 15 s)


async def test_cog_paths_are_data_uris(start_bridge: StartBridge, tmp_path: Path) -> None:
    model = load_model(str(write(tmp_path, "files_model.py", RICH)) + ":Files", "me/files")
    image = model.info.input_schema["properties"]["image"]
    assert image["format"] == "uri" and image["pattern"] == "^data:"
    with ModelServer(model) as server:
        url = await start_bridge(targets={"me/files": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            sent = "data:text/plain;base64," + base64.b64encode(b"abc\x00def").decode()
            prediction = await create(client, "me/files", {"image": sent})
            events, _ = await read_stream(client, prediction["urls"]["stream"])
            (output,) = [e.data for e in events if e.event == "output"]
            assert output.startswith("data:text/plain;base64,")
            assert base64.b64decode(output.partition(",")[2]) == b"fed\x00cba"
            # A URL or a path on the model's machine is refused before anything runs.
            for refused in ("https://example.com/a.png", "/etc/passwd"):
                response = await client.post(
                    "/v1/models/me/files/predictions", json={"input": {"image": refused}}
                )
                assert_problem(response, 422)
    (given,) = sys.modules["files_model"].SEEN
    assert isinstance(given, Path) and not given.exists()  # the input's file was removed


async def test_a_cog_function_and_a_plain_function(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    shout = load_model(str(write(tmp_path, "shout_model.py", RICH)) + ":shout", "me/shout")
    plain = load_model(str(write(tmp_path, "plain_model.py", PLAIN)) + ":predict", "me/plain")
    assert "x-cog-array-type" not in shout.info.output_schema  # one value
    with ModelServer(shout) as one, ModelServer(plain) as words:
        url = await start_bridge(targets={"me/shout": one.target, "me/plain": words.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.post(
                "/v1/models/me/shout/predictions",
                json={"input": {"text": "hey"}},
                headers={"Prefer": "wait"},
            )
            assert response.json()["output"] == "HEY!"
            prediction = await create(client, "me/plain", {"word": "hi"})
            events, _ = await read_stream(client, prediction["urls"]["stream"])
            assert [e.data for e in events if e.event == "output"] == ["hi ", "hi "]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("predict.py", "'predict.py': give FILE.py:NAME, e.g. predict.py:Predictor"),
        ("missing.py:Predictor", "missing.py: no such file"),
        ("predict.py:Nothing", "predict.py has no Nothing"),
        ("broken.py:predict", "broken.py:2: invalid syntax"),
    ],
)
def test_serve_model_says_what_is_wrong(tmp_path: Path, ref: str, message: str) -> None:
    write(tmp_path, "predict.py", SEED)
    write(tmp_path, "broken.py", "def predict(prompt: str):\n    yield prompt +\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve-model", ref, "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: {message}\n"  # one line, no traceback


def test_load_model_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    path = write(tmp_path, "constant_model.py", "VALUE = 3\n")
    with pytest.raises(ModelLoadError, match="not a class or a function"):
        load_model(f"{path}:VALUE", "me/constant")


def test_load_model_refuses_a_file_named_as_a_module_already_loaded(tmp_path: Path) -> None:
    """Cog's inspector finds a predictor by its module's name, so the file
    goes into sys.modules under it: a file named bridge.py would shadow the
    bridge itself."""
    path = write(tmp_path, "bridge.py", "def predict(text: str) -> str:\n    return text\n")
    with pytest.raises(ModelLoadError, match="'bridge' is already loaded here; rename the file"):
        load_model(f"{path}:predict", "me/shadow")
    import bridge

    assert sys.modules["bridge"] is bridge


@pytest.mark.parametrize(
    ("cog_yaml", "concurrency"),
    [(None, 1), ("build:\n  python_version: '3.11'\n", 1), ("concurrency:\n  max: 3\n", 3)],
)
def test_a_cog_predictor_runs_as_many_at_once_as_cog_yaml_says(
    tmp_path: Path, cog_yaml: str | None, concurrency: int
) -> None:
    """One at a time unless cog.yaml beside it says concurrency.max, as
    under Cog; the model advertises it in Describe."""
    name = f"conc_model_{concurrency}_{cog_yaml is None}"
    path = write(tmp_path, f"{name}.py", RICH)
    if cog_yaml is not None:
        write(tmp_path, "cog.yaml", cog_yaml)
    assert load_model(f"{path}:Predictor", "me/conc").info.concurrency == concurrency


def test_a_cog_yaml_concurrency_that_is_not_a_count_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "conc_bad_model.py", RICH)
    write(tmp_path, "cog.yaml", "concurrency:\n  max: many\n")
    with pytest.raises(ModelLoadError, match=r"concurrency\.max must be a whole number"):
        load_model(f"{path}:Predictor", "me/conc")
