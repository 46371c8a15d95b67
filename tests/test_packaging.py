"""The package as users install it: the committed gRPC stubs match
``proto/``, and ``pip install .`` into a new venv (no make, no generator)
serves a model and runs the bridge."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import httpx
import pytest
import trio
from google.protobuf import descriptor_pb2

from bridge._proto.v1 import predictor_pb2
from tests.backends import ENV, read_until
from tests.conftest import StartBridge

ROOT = Path(__file__).parent.parent


def test_the_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    """``make proto`` was run after the last change to proto/: the stubs
    describe exactly what protoc reads there now."""
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/struct.proto
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--descriptor_set_out={out}"]
    assert protoc.main([*args, str(ROOT / "proto/bridge/v1/predictor.proto")]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(
        predictor_pb2.DESCRIPTOR.serialized_pb
    )
    # The stubs are built from proto/bridge as bridge/_proto: only the name
    # differs, and the JSON names protoc adds to a descriptor set.
    assert committed.name == "bridge/_proto/v1/predictor.proto"
    committed.name = fresh.name
    messages = list(fresh.message_type)
    for message in messages:
        messages += message.nested_type
        for field in message.field:
            field.ClearField("json_name")
    assert committed == fresh


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files alone, as a fresh clone has them."""
    source = tmp_path_factory.mktemp("src")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    return source


async def new_venv(where: Path, *install: str) -> str:
    """A new venv with ``pip install *install``; its python."""
    with trio.fail_after(240):
        await trio.run_process([sys.executable, "-m", "venv", str(where)])
        python = str(where / "bin/python")
        await trio.run_process([python, "-m", "pip", "install", "--quiet", *install], env=ENV)
    return python


async def installed(python: str) -> dict[str, str]:
    """What the venv of *python* has: each package's version, by name."""
    pip = await trio.run_process(
        [python, "-m", "pip", "list", "--format", "json"], capture_stdout=True
    )
    return {p["name"].lower(): p["version"] for p in json.loads(pip.stdout)}


WORDS = "def predict(prompt: str):\n    for word in prompt.split():\n        yield word + ' '\n"


async def words(url: str, prompt: str) -> list[str]:
    """The output of a me/words prediction of *prompt* on the bridge at *url*."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.post(
            "/v1/models/me/words/predictions",
            json={"input": {"prompt": prompt}},
            headers={"Prefer": "wait"},
        )
    assert answer.json()["status"] == "succeeded", answer.text
    return answer.json()["output"]


async def test_pip_install_serves_a_model_and_runs_the_bridge(tmp_path: Path, source: Path) -> None:
    python = await new_venv(tmp_path / "venv", str(source))
    (tmp_path / "words.py").write_text(WORDS)
    processes = []
    try:
        model = await trio.lowlevel.open_process(
            [
                *(python, "-m", "bridge", "serve-model", "words.py:predict"),
                *("--name", "me/words", "--port", "0"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            env=ENV,
        )
        processes.append(model)
        target = (await read_until(model.stdout, rb"me/words listening on (\S+)\n"))[1]
        (tmp_path / "bridge.toml").write_text(
            f'[models."me/words"]\ntargets = ["{target.decode()}"]\n'
        )
        bridge = await trio.lowlevel.open_process(
            [python, "-m", "bridge", "serve", "--config", "bridge.toml", "--port", "0"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            env=ENV | {"XDG_STATE_HOME": str(tmp_path)},
        )
        processes.append(bridge)
        url = (await read_until(bridge.stderr, rb"Running on (http://\S+)"))[1].decode()
        assert await words(url, "installed with pip") == ["installed ", "with ", "pip "]
    finally:
        for process in processes:
            process.terminate()
            with trio.fail_after(20):
                await process.wait()
    # The stubs installed are the committed ones: nothing generated them at
    # install time (grpcio-tools is installed, as the protoc of bridged
    # services' protos, docs/grpc-services.md, but never for bridge.v1).
    site = await trio.run_process(
        [python, "-c", "import bridge._proto.v1.predictor_pb2 as m; print(m.__file__)"],
        capture_stdout=True,
    )
    stub = trio.Path(site.stdout.decode().strip())
    assert await stub.read_bytes() == (ROOT / "bridge/_proto/v1/predictor_pb2.py").read_bytes()


#: The lowest versions the model side claims (model/pyproject.toml).
LOWEST = [
    "grpcio==1.62.0",
    "grpcio-health-checking==1.62.0",
    "protobuf==4.25.1",
    "jsonschema==4.18.0",
]


async def test_the_model_side_installs_alone_at_its_lowest_versions(
    tmp_path: Path, source: Path, start_bridge: StartBridge
) -> None:
    """``pip install ./model`` into a model's environment: bridge.sdk and
    the stubs, none of the server stack, on the oldest grpcio and protobuf
    it admits; a bridge streams from it."""
    (tmp_path / "lowest.txt").write_text("\n".join(LOWEST) + "\n")
    python = await new_venv(
        tmp_path / "venv", str(source / "model"), "-c", str(tmp_path / "lowest.txt")
    )
    has = await installed(python)
    assert {f"{name}=={has[name]}" for name in ("grpcio", "protobuf", "jsonschema")} <= set(LOWEST)
    server = {"trio", "quart", "quart-trio", "hypercorn", "httpx", "coredis", "msgspec"}
    assert not server & set(has)
    (tmp_path / "words.py").write_text(WORDS)
    model = await trio.lowlevel.open_process(
        [python, "-m", "bridge.sdk", "words.py:predict", "--name", "me/words", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        env=ENV,
    )
    try:
        target = (await read_until(model.stdout, rb"me/words listening on (\S+)\n"))[1].decode()
        url = await start_bridge(targets={"me/words": target})
        assert await words(url, "old grpc here") == ["old ", "grpc ", "here "]
    finally:
        model.terminate()
        with trio.fail_after(20):
            await model.wait()
