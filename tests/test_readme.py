"""The README's "Serve your own model" steps, run as written: its
``my_model.py`` and ``bridge.toml`` blocks, copied from the README into a
directory, and its two commands (the bridge on a free port, not 8000); its
OpenAI client blocks; and every TOML example in the README and docs/,
parsed and checked."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from bridge.sdk import Model, ModelServer
from tests.backends import ENV, read_until
from tests.conftest import StartBridge, create, read_stream

README = Path(__file__).parent.parent / "README.md"
DOCS = sorted((Path(__file__).parent.parent / "docs").glob("*.md"))


def block(first_line: str) -> str:
    """The README's fenced code block whose first line starts with *first_line*."""
    for body in re.findall(r"```\w*\n(.*?)```", README.read_text(), re.DOTALL):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"no block starting {first_line!r} in the README")


def commands() -> list[list[str]]:
    """The shell block right after the ``bridge.toml`` one, as argv lists
    (``.venv/bin/python`` is this interpreter, a trailing ``&`` dropped)."""
    text = README.read_text()
    after = text[text.index("# bridge.toml\n") :]
    shell = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert shell is not None
    argvs = []
    for line in shell[1].splitlines():
        argv = shlex.split(line.removesuffix("&"))
        assert argv[0] == ".venv/bin/python", line  # the venv make made
        argvs.append([sys.executable, *argv[1:]])
    return argvs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_serve_your_own_model_as_the_readme_says(tmp_path: Path) -> None:
    # The README's model port, rewritten (something may hold 50061 here).
    model_file, config = block("# my_model.py"), block("# bridge.toml")
    assert model_file.count("port=50061") == 1 and config.count("127.0.0.1:50061") == 1
    port = str(_free_port())
    (tmp_path / "my_model.py").write_text(model_file.replace("50061", port))
    (tmp_path / "bridge.toml").write_text(config.replace("50061", port))
    model_command, bridge_command = commands()
    assert model_command[1:] == ["my_model.py"]
    assert bridge_command[-2:] == ["--port", "8000"]
    bridge_command[-1] = "0"
    env = ENV | {"XDG_STATE_HOME": str(tmp_path)}
    model = await trio.lowlevel.open_process(
        model_command, cwd=tmp_path, stdout=subprocess.PIPE, env=env
    )
    bridge = None
    try:
        await read_until(model.stdout, rb"me/shout listening on")
        bridge = await trio.lowlevel.open_process(
            bridge_command, cwd=tmp_path, stderr=subprocess.PIPE, env=env
        )
        # The line the README says to wait for, under the bridge's own logger.
        found = await read_until(bridge.stderr, rb"INFO bridge\.server: Running on (http://\S+)")
        async with httpx.AsyncClient(base_url=found[1].decode(), timeout=30) as client:
            prediction = await create(client, "me/shout", {"prompt": "hello world", "times": 2})
            events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert "".join(e.data for e in events if e.event == "output") == (
            "HELLO! WORLD! HELLO! WORLD! "
        )
    finally:
        for process in (bridge, model):
            if process is not None and process.returncode is None:
                process.terminate()
                with trio.fail_after(20):
                    await process.wait()


def test_every_toml_block_is_toml_with_keys_the_bridge_knows() -> None:
    """The config examples of the README and docs/ parse, and name only
    settings that exist (each checked as its section would be, files
    aside), beside the demo models as run-demo serves them."""
    import tomllib

    from bridge.config import ConfigError, Settings

    text = "".join(path.read_text() for path in [README, *DOCS])
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 5
    for body in blocks:
        data = tomllib.loads(body)
        try:
            demo = {"demo/echo": ("127.0.0.1:1",), "demo/story": ("127.0.0.1:1",)}
            Settings.from_dict(data, extra_models=demo)
        except ConfigError as exc:
            assert "cannot read" in str(exc), (body, exc)  # a file the example names


async def test_the_openai_client_blocks_run_as_written(start_bridge: StartBridge) -> None:
    """The README's openai-python, openai-node and curl blocks, pointed at a
    bridge on a free port (at once): each tells the fable it asked for."""
    url = await start_bridge()

    def pointed(first_line: str) -> str:
        code = block(first_line)
        assert "http://127.0.0.1:8000" in code
        return code.replace("http://127.0.0.1:8000", url)

    script = Path(__file__).parent / "js" / f"readme-{os.getpid()}.mjs"  # beside its client
    script.write_text(pointed('import OpenAI from "openai";'))
    commands = {
        "python": [sys.executable, "-c", pointed("from openai import OpenAI")],
        "node": ["node", str(script)],
        "curl": ["bash", "-c", pointed("curl -sN http://127.0.0.1:8000/v1/chat/completions")],
    }
    printed: dict[str, str] = {}

    async def run(name: str) -> None:
        done = await trio.run_process(commands[name], capture_stdout=True, env=ENV)
        printed[name] = done.stdout.decode()

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for name in commands:
                    nursery.start_soon(run, name)
    finally:
        script.unlink()
    assert "lion" in printed["python"].lower() and "lion" in printed["node"].lower()
    lines = printed["curl"].split("\n\n")
    assert lines[-2:] == ["data: [DONE]", ""]
    text = "".join(
        json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
        for line in lines[:-2]
    )
    assert "fox" in text.lower() and len(text.split()) <= 40  # sour grapes, its max_words


def snippets() -> list[tuple[str, str, str]]:
    """Every Python, shell and JavaScript block of the README and docs/:
    (file, language, body)."""
    found = []
    for path in [README, *DOCS]:
        for lang, body in re.findall(r"```(\w+)\n(.*?)```", path.read_text(), re.DOTALL):
            if lang in ("python", "sh", "js"):
                found.append((path.name, lang, body))
    return found


#: Where each block (by file and the start of its first line) is run: a
#: test here, another test file, or, for the few that need what these
#: machines lack (a GPU engine, a model download), only compiled.
RUN_HERE = "run here"
WHERE = {
    ("README.md", "make run"): "tests/test_cli.py runs run-demo; CI runs make test",
    ("README.md", "STREAM_URL=$(curl"): RUN_HERE,
    ("README.md", "curl -s -X POST http://127.0.0.1:8000/v1/predictions"): RUN_HERE,
    ("README.md", ".venv/bin/python -m bridge predict"): RUN_HERE,
    ("README.md", "# my_model.py"): RUN_HERE,
    ("README.md", ".venv/bin/python my_model.py &"): RUN_HERE,
    ("README.md", "import replicate"): RUN_HERE,
    ("README.md", 'import Replicate from "replicate";'): RUN_HERE,
    ("README.md", "from openai import OpenAI"): RUN_HERE,
    ("README.md", 'import OpenAI from "openai";'): RUN_HERE,
    ("README.md", "curl -sN http://127.0.0.1:8000/v1/chat/completions"): RUN_HERE,
    ("api.md", "deployment = client.deployments.get"): RUN_HERE,
    ("api.md", "await replicate.deployments.get"): RUN_HERE,
    ("deploy.md", "python -m bridge serve --config bridge.toml --workers 2"): (
        "tests/test_workers.py runs serve --workers 2"
    ),
    ("deploy.md", "mkdir /sys/fs/cgroup/cpu/bridge-0"): (
        "bench/quota.py does the same (make bench; tests/test_bench.py's smoke run)"
    ),
    ("models.md", "from cog import BasePredictor"): "tests/test_cog.py (its SEED: checked equal)",
    ("models.md", ".venv/bin/python -m bridge serve-model predict.py:Predictor"): (
        "tests/test_cog.py runs serve-model predict.py:Predictor"
    ),
    ("models.md", "# llm.py"): "compiled: it downloads a model; tests/llm runs the adapter",
    ("models.md", "python -m bridge serve-model llm.py:Predictor"): (
        "tests/llm runs serve-model llm.py:Predictor on the fable model"
    ),
    ("models.md", "import asyncio"): RUN_HERE,
    ("models.md", "import uuid"): "compiled: vLLM is not installed here",
    (
        "models.md",
        "from llama_cpp import Llama",
    ): "compiled: llama-cpp-python is not installed here",
}


async def test_the_readme_s_model_file_under_serve_model_serves_on_the_command_s_port(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """The README's my_model.py as written (its serve() on port 50061,
    which is held here) given to ``serve-model --port P``: its serve()
    does nothing, said in one line, and the model is served on P."""
    (tmp_path / "my_model.py").write_text(block("# my_model.py"))
    holder = socket.socket()
    with contextlib.suppress(OSError):  # else something else holds it: as good
        holder.bind(("127.0.0.1", 50061))
        holder.listen()
    port = _free_port()
    command = [sys.executable, "-m", "bridge", "serve-model", "my_model.py:Shout"]
    command += ["--name", "me/shout", "--port", str(port)]
    model = await trio.lowlevel.open_process(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV
    )
    try:
        seen: list[bytes] = []
        await read_until(model.stdout, rb"me/shout listening on 127\.0\.0\.1:(\d+)", seen)
        said = b"".join(seen).decode()
        assert f"listening on 127.0.0.1:{port}" in said
        assert (
            "serve(me/shout, port=50061) in the model file does nothing here: the command "
            f"serves what the file defines, on 127.0.0.1:{port}"
        ) in said
        url = await start_bridge(targets={"me/shout": f"127.0.0.1:{port}"})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            prediction = await create(client, "me/shout", {"prompt": "it works"})
            events, _ = await read_stream(client, prediction["urls"]["stream"])
        assert "".join(e.data for e in events if e.event == "output") == "IT! WORKS! "
    finally:
        holder.close()
        if model.returncode is None:
            model.terminate()
            with trio.fail_after(20):
                await model.wait()


async def test_the_batching_engine_block_serves_predictions_in_steps(
    start_bridge: StartBridge,
) -> None:
    """docs/models.md's BatchPredictor, as written (its serve() line
    aside), behind a bridge: three predictions, each its own words."""
    (body,) = [b for name, _, b in snippets() if name == "models.md" and "BatchPredictor" in b]
    code, serve_line = body.rsplit("\n\n\n", 1)
    assert serve_line.startswith('serve(Model("me/engine", Engine)')
    namespace: dict[str, Any] = {}
    exec(compile(code, "models.md: the batching engine", "exec"), namespace)
    with ModelServer(Model("me/engine", namespace["Engine"])) as server:
        url = await start_bridge(targets={"me/engine": server.target})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            made = [
                await create(client, "me/engine", {"prompt": f"say {n}", "max_tokens": 4})
                for n in range(3)
            ]
            for n, prediction in enumerate(made):
                events, _ = await read_stream(client, prediction["urls"]["stream"])
                assert [e.data for e in events if e.event == "output"] == [
                    "say ",
                    f"{n} ",
                    "say ",
                    f"{n} ",
                ]


def test_every_snippet_is_run_somewhere() -> None:
    """No block is added to the README or docs/ without a test that runs it
    (or a reason it cannot be run here); every Python block compiles."""
    from tests.test_cog import SEED

    seen = set()
    for name, lang, body in snippets():
        keys = [key for key in WHERE if key[0] == name and body.startswith(key[1])]
        assert len(keys) == 1, (name, body.splitlines()[0])
        seen.add(keys[0])
        if lang == "python":
            compile(body, f"{name}: {body.splitlines()[0]}", "exec")
        if keys[0][1] == "from cog import BasePredictor":
            assert body == SEED
    assert seen == set(WHERE)


async def test_the_readme_and_api_blocks_run_against_a_bridge(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    """The curl, terminal client, Replicate client (Python and JS) blocks
    of the README and docs/api.md, pointed at a bridge on a free port, all
    at once."""
    from bridge.config import DeploymentSettings

    url = await start_bridge(
        deployments={"acme/storyteller": DeploymentSettings("acme/storyteller", "demo/story")}
    )
    texts = {(name, body.splitlines()[0]): body for name, _, body in snippets()}

    def pointed(name: str, first: str) -> str:
        (body,) = [b for (n, line), b in texts.items() if n == name and line.startswith(first)]
        return body.replace("http://127.0.0.1:8000", url)

    client = f"import replicate\nclient = replicate.Client(api_token='unused', base_url={url!r})\n"
    replicate_js = "import Replicate from 'replicate';\n"
    replicate_js += f"const replicate = new Replicate({{ auth: 'unused', baseUrl: '{url}/v1' }});\n"
    scripts = {
        "stream": ["bash", "-c", pointed("README.md", "STREAM_URL=$(curl")],
        "echo": ["bash", "-c", pointed("README.md", "curl -s -X POST").replace("<id>", "x")],
        "terminal": [
            "bash",
            "-c",
            pointed("README.md", ".venv/bin/python -m bridge predict").replace(
                ".venv/bin/python", sys.executable
            ),
        ],
        "replicate": [sys.executable, "-c", pointed("README.md", "import replicate")],
        "deployment": [sys.executable, "-c", client + pointed("api.md", "deployment = client")],
    }
    js = {
        "replicate-js": pointed("README.md", 'import Replicate from "replicate";'),
        "deployment-js": replicate_js + pointed("api.md", "await replicate.deployments"),
    }
    printed: dict[str, str] = {}
    env = ENV | {"BRIDGE_URL": url}

    async def run(name: str, command: list[str]) -> None:
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, env=env)
        printed[name] = done.stdout.decode()

    for name, code in js.items():
        script = Path(__file__).parent / "js" / f"{name}-{os.getpid()}.mjs"
        script.write_text(code)
        scripts[name] = ["node", str(script)]
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                for name, command in scripts.items():
                    nursery.start_soon(run, name, command)
    finally:
        for name in js:
            (Path(__file__).parent / "js" / f"{name}-{os.getpid()}.mjs").unlink()
    assert "event: output" in printed["stream"] and printed["stream"].rstrip().endswith("data: {}")
    assert '"status":"starting"' in printed["echo"].replace(" ", "") and '"ok"' in printed["echo"]
    assert len(printed["terminal"].split()) > 10
    assert "['hello ', 'there']" in printed["replicate"]  # run's list of chunks
    assert len(printed["replicate-js"].split()) > 10
