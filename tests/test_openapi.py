"""/openapi.json: a valid OpenAPI document, and the live API keeps to it."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import httpx
import trio
from openapi_spec_validator import validate

from bridge.config import DeploymentSettings, Settings
from bridge.core.service import Bridge
from bridge.http import create_app
from bridge.metrics import Metrics
from tests.backends import ENV
from tests.conftest import StartBridge
from tests.fakes import open_fake_backend

ST = str(Path(sys.executable).parent / "st")
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


#: Routes the document leaves out: the page, its files, and the document.
UNDOCUMENTED = {("/", "get"), ("/static/{filename}", "get"), ("/openapi.json", "get")}


def _routes(app: Any) -> set[tuple[str, str]]:
    """Every (path, method) the app answers, in OpenAPI's path syntax."""
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


async def test_the_spec_is_valid_and_documents_exactly_the_app_s_routes(
    start_bridge: StartBridge,
) -> None:
    async with httpx.AsyncClient(base_url=await start_bridge()) as client:
        spec = (await client.get("/openapi.json")).json()
    validate(spec)  # raises if it is not a valid OpenAPI 3.1 document
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    async with open_fake_backend({}) as backend, trio.open_nursery() as nursery:
        bridge = Bridge(Settings(port=0), backend, nursery)
        app = create_app(bridge, Metrics())
    assert documented == _routes(app) - UNDOCUMENTED
    create = spec["paths"]["/v1/predictions"]["post"]["responses"]
    assert {"201", "400", "401", "404", "413", "422", "429", "503"} <= set(create)


async def test_schemathesis_finds_no_error_and_no_mismatch(start_bridge: StartBridge) -> None:
    """A bounded, seeded fuzzing pass: no 5xx, and every answer (status,
    content type, headers, body) as the spec says."""
    url = await start_bridge(
        max_wait_seconds=1,
        drain_seconds=0,
        max_output_bytes=65536,
        # The spec's example owner/name (demo/echo) is a deployment too.
        deployments={"demo/echo": DeploymentSettings("demo/echo", "demo/echo")},
    )
    with trio.fail_after(240):
        result = await trio.run_process(
            [
                ST,
                "run",
                f"{url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--phases",
                "examples,fuzzing",
                "--seed",
                "1",
                "--request-timeout",
                "20",
                "--no-color",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert re.search(r"\d+ generated, \d+ passed", output), output
