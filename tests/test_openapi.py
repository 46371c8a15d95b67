"""/openapi.json: a valid OpenAPI document, and the live API keeps to it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import trio
from openapi_spec_validator import validate

from bridge.config import DeploymentSettings
from tests.backends import ENV
from tests.conftest import StartBridge

ST = str(Path(sys.executable).parent / "st")
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance"
)


async def test_the_spec_is_valid_and_covers_every_route(start_bridge: StartBridge) -> None:
    async with httpx.AsyncClient(base_url=await start_bridge()) as client:
        spec = (await client.get("/openapi.json")).json()
    validate(spec)  # raises if it is not a valid OpenAPI 3.1 document
    assert set(spec["paths"]) == {
        "/v1/predictions", "/v1/models/{owner}/{name}/predictions",
        "/v1/predictions/{prediction_id}", "/v1/predictions/{prediction_id}/cancel",
        "/v1/predictions/{prediction_id}/stream", "/v1/models", "/v1/models/{owner}/{name}",
        "/v1/models/{owner}/{name}/versions/{version_id}", "/v1/webhooks/default/secret",
        "/v1/deployments", "/v1/deployments/{owner}/{name}",
        "/v1/deployments/{owner}/{name}/predictions", "/health", "/metrics",
    }  # fmt: skip
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
