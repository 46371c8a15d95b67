"""Replicate's JSON: every byte of its predictions, models, versions and
deployments, and every URL in them. The core hands out its records
(:class:`~bridge.core.predictions.Prediction`,
:class:`~bridge.core.models.ModelEntry`); they are rendered here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec

from ..core.events import Snapshot
from ..core.models import ModelEntry
from ..core.predictions import Prediction
from ..offload import Offload

__all__ = [
    "deployment_json",
    "encode_prediction",
    "iso_time",
    "model_json",
    "prediction_json",
    "prediction_later",
    "prediction_url",
    "version_json",
]

#: What versions report as ``cog_version``: not a Cog version (the Python
#: client then applies no pre-0.3.9 compatibility rules to the schema).
COG_VERSION = "grpc-sse-bridge/bridge.v1"


def iso_time(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as Replicate writes times."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def prediction_url(base_url: str, prediction_id: str) -> str:
    """Where a prediction is: *base_url* has no trailing slash."""
    return f"{base_url}/v1/predictions/{prediction_id}"


def prediction_json(prediction: Prediction, base_url: str) -> dict[str, Any]:
    """The prediction object of Replicate's API; *base_url* has no
    trailing slash and makes every URL absolute."""
    return prediction_later(prediction, base_url)()


def prediction_later(prediction: Prediction, base_url: str) -> Callable[[], dict[str, Any]]:
    """:func:`prediction_json` as the prediction is now, built when called,
    in any thread: what changes is read now (a few fields), what grows with
    its size (input, output, logs) is decoded when called."""
    p = prediction
    url = prediction_url(base_url, p.id)
    # web: the bridge's page, opened on this prediction (it replays it).
    urls = {"get": url, "cancel": f"{url}/cancel", "web": f"{base_url}/?prediction={p.id}"}
    if p.streams:
        urls["stream"] = f"{url}/stream"
    fields = {
        "id": p.id,
        "model": p.model,
        "version": p.version,
        "status": str(p.status),
        "input": None,  # these three are filled in when called
        "output": None,
        "logs": "",
        "error": p.error,
        "data_removed": p.data_removed,
        "metrics": dict(p.metrics),
        "created_at": iso_time(p.created_at),
        "started_at": iso_time(p.started_at),
        "completed_at": iso_time(p.completed_at),
        "urls": urls,
    }
    if p.data_removed or (not p.output_count and not (p.done and p.streams)):
        output = None  # none yet (a stream that ended with none is [])
    else:
        output = "list" if p.streams else "last"  # a model that returns one value
    return partial(_prediction_json, fields, p.input_json, p.events.snapshot(), output)


def _prediction_json(
    fields: dict[str, Any], input: bytes, events: Snapshot, output: str | None
) -> dict[str, Any]:
    """The prediction object from what :func:`prediction_later` took."""
    outputs = None if output is None else events.outputs()
    return fields | {
        "input": msgspec.json.decode(input),
        "output": (outputs[-1] if outputs else None) if output == "last" else outputs,
        "logs": "".join(f"{line}\n" for line in events.logs()),
    }


async def encode_prediction(
    prediction: Prediction, base_url: str, offload: Offload, **replace: Any
) -> bytes:
    """*prediction* as Replicate's JSON (with *replace*'s fields replaced),
    encoded; a large one in a worker thread."""
    build = prediction_later(prediction, base_url)
    return await offload(prediction.kept_bytes, _encode, build, replace)


def _encode(build: Callable[[], dict[str, Any]], replace: dict[str, Any]) -> bytes:
    # msgspec: 5x json.dumps on large outputs. It would write NaN as null,
    # but nothing kept can be NaN: input, output and metrics are checked
    # as strict JSON where they come in.
    return msgspec.json.encode(build() | replace)


def version_json(entry: ModelEntry) -> dict[str, Any] | None:
    """Replicate's version object, or None before the backend described it."""
    info = entry.info
    if info is None:
        return None
    return {
        "id": info.version,
        "created_at": iso_time(entry.described_at),
        "cog_version": COG_VERSION,
        "openapi_schema": {
            "openapi": "3.0.2",
            "info": {"title": entry.name, "version": info.version},
            "paths": {},
            "components": {
                "schemas": {
                    "Input": info.input_schema,
                    "Output": info.output_schema,
                }
            },
        },
    }


def model_json(entry: ModelEntry, base_url: str) -> dict[str, Any]:
    """Replicate's model object."""
    return {
        "url": f"{base_url}/v1/models/{entry.name}",
        "owner": entry.owner,
        "name": entry.short_name,
        # Why it serves nothing, if its setup failed (the page shows it).
        "description": (
            f"setup failed: {entry.info.setup_error}"
            if entry.info is not None and entry.info.setup_error
            else None
        ),
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "cover_image_url": None,
        "run_count": entry.run_count,
        "default_example": None,
        "latest_version": version_json(entry),
    }


def deployment_json(name: str, entry: ModelEntry, created_at: float) -> dict[str, Any]:
    """Replicate's deployment object for deployment *name* serving *entry*,
    whose backend has described itself. One release, made when this bridge
    started; its instances are the model's configured targets."""
    assert entry.info is not None, "a deployment shows its model's version"
    owner, _, short_name = name.partition("/")
    targets = len(entry.settings.targets)
    return {
        "owner": owner,
        "name": short_name,
        "current_release": {
            "number": 1,
            "model": entry.name,
            "version": entry.info.version,
            "created_at": iso_time(created_at),
            "created_by": {
                "type": "organization",
                "username": owner,
                "name": owner,
                "github_url": None,
            },
            "configuration": {
                "hardware": "bridge.v1",
                "min_instances": targets,
                "max_instances": targets,
            },
        },
    }
