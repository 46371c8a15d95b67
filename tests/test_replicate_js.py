"""Replicate's official JS client (replicate 1.4.0 from npm, installed by
``make test`` into tests/js), unmodified, against a real bridge."""

from __future__ import annotations

import uuid

from bridge.config import DeploymentSettings
from tests.conftest import StartBridge, wait_closed
from tests.helpers import node


async def test_js_stream_prints_the_exact_chunks(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    tokens = ["Hello", ", ", "wörld", "!\n", "two\r\nlines", ""]
    lines = await node(
        url, "stream", {"model": "demo/echo", "input": {"prompt": "-", "tokens": tokens}}
    )
    assert lines[0] == {"done": {}}
    # The JS client reads the stream as browsers do: line breaks become \n.
    assert lines[1] == {"chunks": ["Hello", ", ", "wörld", "!\n", "two\nlines", ""]}


async def test_js_cancel_ends_the_stream_and_the_backend(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    key = uuid.uuid4().hex
    (result,) = await node(url, "cancel", {"model": "test/endless", "input": {"key": key}})
    assert result["canceledStatus"] == "canceled"
    assert result["status"] == "canceled"
    assert result["lastEvent"].startswith("event: done\n")
    assert result["lastEvent"].endswith('data: {"reason":"canceled"}')
    await wait_closed(key)  # the backend's generator was closed


async def test_js_run_waits_for_the_output(start_bridge: StartBridge) -> None:
    url = await start_bridge()
    (result,) = await node(
        url, "run", {"ref": "demo/echo", "input": {"prompt": "run me", "delay_ms": 50}}
    )
    assert result == {"output": ["run ", "me"]}


async def test_js_deployments(start_bridge: StartBridge) -> None:
    url = await start_bridge(
        deployments={"acme/teller": DeploymentSettings("acme/teller", "demo/echo")}
    )
    (result,) = await node(
        url, "deployment", {"deployment": "acme/teller", "input": {"prompt": "deployed words"}}
    )
    release = result["deployment"]["current_release"]
    assert (result["deployment"]["owner"], result["deployment"]["name"]) == ("acme", "teller")
    assert release["model"] == "demo/echo" and len(release["version"]) == 64
    assert result["status"] == "succeeded"
    assert (result["output"], result["model"]) == (["deployed ", "words"], "demo/echo")
