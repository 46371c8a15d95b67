"""Checking what a create asks for, before anything starts: the input
against the model's JSON schema, and the webhook fields. Failures raise
:class:`~bridge.errors.InvalidInput` (422) listing every bad field."""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from .errors import InvalidInput
from .webhooks import EVENTS

__all__ = ["validate_input", "validate_webhook"]


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def validate_input(schema: dict[str, Any], input: Any) -> None:
    """Raise :class:`InvalidInput` listing every field that fails *schema*."""
    if not isinstance(input, dict):
        raise InvalidInput(
            "input: must be a JSON object",
            [{"type": "type", "field": "input", "description": "input must be an object"}],
        )
    validator = _validator(json.dumps(schema, sort_keys=True))
    fields = []
    for error in sorted(validator.iter_errors(input), key=lambda e: list(e.path)):
        if error.validator == "required":
            missing = [p for p in error.validator_value if p not in error.instance]
            for name in missing:
                fields.append(
                    {"type": "required", "field": name, "description": f"{name} is required"}
                )
        else:
            name = ".".join(str(p) for p in error.path) or "input"
            fields.append(
                {"type": str(error.validator), "field": name, "description": error.message}
            )
    if fields:
        # De-duplicate (one missing field can be reported by several rules).
        unique = list({(f["field"], f["description"]): f for f in fields}.values())
        detail = "; ".join(f"input.{f['field']}: {f['description']}" for f in unique)
        raise InvalidInput(detail, unique)


def validate_webhook(url: Any, events: Any) -> frozenset[str]:
    """The webhook events asked for; raises :class:`InvalidInput` for a URL
    that is not absolute http(s) or an unknown event name."""
    fields = []
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            fields.append(
                {
                    "type": "format",
                    "field": "webhook",
                    "description": "webhook must be an absolute http(s) URL",
                }
            )
    if events is None:
        chosen = frozenset(EVENTS)
    elif isinstance(events, list) and all(e in EVENTS for e in events):
        chosen = frozenset(events)
    else:
        chosen = frozenset()
        fields.append(
            {
                "type": "enum",
                "field": "webhook_events_filter",
                "description": f"webhook_events_filter must list some of {list(EVENTS)}",
            }
        )
    if fields:
        raise InvalidInput("; ".join(f["description"] for f in fields), fields)
    return chosen
