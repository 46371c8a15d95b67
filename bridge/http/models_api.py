"""Replicate's models and deployments: what is served here."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

from ..errors import BackendUnavailable, NotFound
from .common import base_url, context, json_response
from .replicate_json import deployment_json, model_json, version_json

__all__ = ["blueprint"]

blueprint = Blueprint("models", __name__)


@blueprint.get("/v1/models")
async def list_models() -> Response:
    bridge, base = context().bridge, base_url()
    await bridge.catalog.know_all()
    entries = bridge.catalog.models.values()
    results = [model_json(entry, base) for entry in entries]
    # OpenAI's shape beside Replicate's: the same models, for openai's
    # clients.models.list() (created: when this bridge started).
    data = [
        {"id": e.name, "object": "model", "created": int(bridge.started_at), "owned_by": e.owner}
        for e in entries
    ]
    body = {"previous": None, "next": None, "results": results, "object": "list", "data": data}
    return json_response(body)


@blueprint.get("/v1/models/<owner>/<name>")
async def get_model(owner: str, name: str) -> Response:
    bridge = context().bridge
    entry = bridge.catalog.model(f"{owner}/{name}")
    await bridge.catalog.info(entry)
    return json_response(model_json(entry, base_url()))


@blueprint.get("/v1/models/<owner>/<name>/versions/<version_id>")
async def get_version(owner: str, name: str, version_id: str) -> Response:
    bridge = context().bridge
    entry = bridge.catalog.model(f"{owner}/{name}")
    if await bridge.catalog.info(entry) is None:
        raise BackendUnavailable(f"the backend of {entry.name} cannot say what it serves")
    version = version_json(entry)
    if version is None or version["id"] != version_id:
        raise NotFound(f"version {version_id} of {entry.name} is not served here")
    return json_response(version)


async def _deployment(name: str) -> dict[str, Any]:
    bridge = context().bridge
    entry = bridge.catalog.deployment(name)
    if await bridge.catalog.info(entry) is None:
        raise BackendUnavailable(f"the backend of {entry.name} cannot say what it serves")
    return deployment_json(name, entry, bridge.started_at)


@blueprint.get("/v1/deployments/<owner>/<name>")
async def get_deployment(owner: str, name: str) -> Response:
    return json_response(await _deployment(f"{owner}/{name}"))


@blueprint.get("/v1/deployments")
async def list_deployments() -> Response:
    bridge = context().bridge
    await bridge.catalog.know_all()
    results = []
    for name, deployment in bridge.settings.deployments.items():
        if bridge.catalog.models[deployment.model].info is not None:
            results.append(await _deployment(name))
    return json_response({"previous": None, "next": None, "results": results})
