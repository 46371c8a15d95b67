"""TLS between the bridge and its backends: verified, mutual, and refused
in one clear line when the two sides disagree. Certificates come from a
throwaway CA made here (trustme)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from bridge.config import ConfigError, Settings
from bridge.sdk import Model, ModelServer, ServerTLS
from tests.backends import read_until
from tests.conftest import StartBridge, create, read_stream

BRIDGE = [sys.executable, "-m", "bridge"]
ENV = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONUNBUFFERED": "1"}


def words(prompt: str) -> Iterator[str]:
    for word in prompt.split():
        yield word + " "


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files: the backends' CA and certificate, and a client CA with a
    certificate it issued to the bridge."""
    where = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    backend = server_ca.issue_cert("127.0.0.1", "localhost")
    bridge = client_ca.issue_cert("bridge.test")
    files = {
        "ca": server_ca.cert_pem,
        "cert": backend.cert_chain_pems[0],
        "key": backend.private_key_pem,
        "client_ca": client_ca.cert_pem,
        "client_cert": bridge.cert_chain_pems[0],
        "client_key": bridge.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        path = where / f"{name}.pem"
        blob.write_to_path(str(path))
        paths[name] = str(path)
    return paths


async def run(client: httpx.AsyncClient, model: str) -> tuple[str, dict[str, Any]]:
    prediction = await create(client, model, {"prompt": "over the wire"})
    with trio.fail_after(20):
        events, _ = await read_stream(client, prediction["urls"]["stream"])
    output = "".join(e.data for e in events if e.event == "output")
    final = (await client.get(prediction["urls"]["get"])).json()
    return output, final


async def test_a_tls_backend_streams_through_the_bridge(
    start_bridge: StartBridge, pki: dict[str, str]
) -> None:
    tls = ServerTLS(pki["cert"], pki["key"])
    with ModelServer(Model("test/tls", words), tls=tls) as server:
        url = await start_bridge(
            {"test/tls": server.target},
            model_options={"test/tls": {"tls": True, "ca_file": pki["ca"]}},
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            output, final = await run(client, "test/tls")
    assert output == "over the wire "
    assert final["status"] == "succeeded"


@pytest.mark.parametrize("shows_its_certificate", [True, False])
async def test_a_mutual_tls_backend_takes_only_the_bridge_it_knows(
    start_bridge: StartBridge, pki: dict[str, str], shows_its_certificate: bool
) -> None:
    tls = ServerTLS(pki["cert"], pki["key"], client_ca=pki["client_ca"])
    options: dict[str, Any] = {"tls": True, "ca_file": pki["ca"], "start_timeout_seconds": 1}
    if shows_its_certificate:
        options |= {"client_cert": pki["client_cert"], "client_key": pki["client_key"]}
    with ModelServer(Model("test/mtls", words), tls=tls) as server:
        url = await start_bridge({"test/mtls": server.target}, model_options={"test/mtls": options})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            output, final = await run(client, "test/mtls")
    if shows_its_certificate:
        assert (output, final["status"]) == ("over the wire ", "succeeded")
    else:
        assert final["status"] == "failed"
        assert final["error"].startswith("model backend unavailable: "), final["error"]
        assert final["error"].endswith("set client_cert and client_key)"), final["error"]


@pytest.mark.parametrize("bridge_tls", [False, True], ids=["plaintext-to-tls", "tls-to-plaintext"])
async def test_sides_that_disagree_on_tls_fail_the_prediction_saying_so(
    start_bridge: StartBridge, pki: dict[str, str], bridge_tls: bool
) -> None:
    server_tls = None if bridge_tls else ServerTLS(pki["cert"], pki["key"])
    options: dict[str, Any] = {"start_timeout_seconds": 1}
    if bridge_tls:
        options |= {"tls": True, "ca_file": pki["ca"]}
    with ModelServer(Model("test/mixed", words), tls=server_tls) as server:
        url = await start_bridge(
            {"test/mixed": server.target}, model_options={"test/mixed": options}
        )
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            _, final = await run(client, "test/mixed")
    assert final["status"] == "failed"
    assert final["error"].startswith("model backend unavailable: "), final["error"]
    if bridge_tls:  # grpc says it
        assert "handshake failed" in final["error"].lower(), final["error"]
    else:  # the backend hung up: the bridge says what to check
        assert final["error"].endswith("set tls = true for this model)"), final["error"]


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ({"ca_file": "ca.pem"}, "ca_file, client_cert and client_key need tls = true"),
        ({"tls": True, "client_cert": "c.pem"}, "client_cert and client_key go together"),
        ({"tls": True, "ca_file": "/nonexistent/ca.pem"}, "ca_file: cannot read"),
        ({"tls": "yes"}, "tls: expected `bool`, got `str`"),
    ],
)
def test_tls_settings_are_checked_when_the_config_loads(spec: dict, said: str) -> None:
    model = {"targets": ["127.0.0.1:1"], **spec}
    with pytest.raises(ConfigError, match=said.replace("(", r"\(")):
        Settings.from_dict({"models": {"test/tls": model}})


def test_a_tls_model_s_files_are_taken(pki: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        '[models."test/tls"]\ntargets = ["127.0.0.1:1"]\ntls = true\n'
        f"ca_file = {json.dumps(pki['ca'])}\n"
        f"client_cert = {json.dumps(pki['client_cert'])}\n"
        f"client_key = {json.dumps(pki['client_key'])}\n"
    )
    model = Settings.from_toml(config).models["test/tls"]
    assert (model.tls, model.ca_file, model.client_key) == (True, pki["ca"], pki["client_key"])


async def test_serve_model_serves_tls_with_its_flags(
    start_bridge: StartBridge, pki: dict[str, str], tmp_path: Path
) -> None:
    model = tmp_path / "fox.py"
    model.write_text("def predict(prompt: str):\n    for word in prompt.split():\n"
                     "        yield word + ' '\n")  # fmt: skip
    command = [*BRIDGE, "serve-model", f"{model}:predict", "--name", "test/fox", "--port", "0"]
    command += ["--stop-on-eof", "--certfile", pki["cert"], "--keyfile", pki["key"]]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV
    )
    try:
        assert process.stdout is not None
        seen: list[bytes] = []
        target = (await read_until(process.stdout, rb"listening on (\S+)\n", seen))[1].decode()
        options = {"tls": True, "ca_file": pki["ca"]}
        url = await start_bridge({"test/fox": target}, model_options={"test/fox": options})
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            output, final = await run(client, "test/fox")
    finally:
        process.terminate()
        with trio.fail_after(10):
            await process.wait()
    assert (output, final["status"]) == ("over the wire ", "succeeded")


async def test_serve_model_wants_its_certificate_and_key_together(pki: dict[str, str]) -> None:
    result = await trio.run_process(
        [*BRIDGE, "serve-model", "x.py:predict", "--certfile", pki["cert"]],
        capture_stderr=True,
        check=False,
        env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: --certfile and --keyfile go together")
