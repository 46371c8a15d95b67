"""The package as users install it: the committed gRPC stubs match
``proto/``, and ``pip install .`` into a new venv (no make, no generator)
serves a model and runs the bridge."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import httpx
import trio
from google.protobuf import descriptor_pb2

from bridge._proto.v1 import predictor_pb2
from tests.backends import ENV, read_until

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


async def test_pip_install_serves_a_model_and_runs_the_bridge(tmp_path: Path) -> None:
    """From the tracked files alone, as a fresh clone has them."""
    source = tmp_path / "src"
    listed = await trio.run_process(["git", "ls-files", "-z"], cwd=ROOT, capture_stdout=True)
    tracked = listed.stdout.split(b"\0")
    for name in filter(None, tracked):
        target = source / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name.decode(), target)
    venv = tmp_path / "venv"
    with trio.fail_after(240):
        await trio.run_process([sys.executable, "-m", "venv", str(venv)])
        await trio.run_process(
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(source)],
            env=ENV,
        )
    (tmp_path / "words.py").write_text(
        "def predict(prompt: str):\n    for word in prompt.split():\n        yield word + ' '\n"
    )
    python = str(venv / "bin/python")
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
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            answer = await client.post(
                "/v1/models/me/words/predictions",
                json={"input": {"prompt": "installed with pip"}},
                headers={"Prefer": "wait"},
            )
        assert answer.json()["output"] == ["installed ", "with ", "pip "], answer.text
    finally:
        for process in processes:
            process.terminate()
            with trio.fail_after(20):
                await process.wait()
    # What the venv has: the stubs, and no generator.
    pip = await trio.run_process(
        [python, "-m", "pip", "list", "--format", "json"], capture_stdout=True
    )
    names = {p["name"].lower() for p in json.loads(pip.stdout)}
    assert "grpcio-tools" not in names and re.search("grpc", " ".join(names))
