"""JSON as RFC 8259 has it, both ways: what the bridge reads from clients
and backends, and everything it writes.

Python's ``json`` reads and writes ``NaN`` and ``Infinity`` (and reads
``1e400`` as infinity); ``JSON.parse`` and most other parsers reject them,
so one such value in a stored prediction would break every list page a JS
client reads. Here both directions refuse them, with a ValueError that says
what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "loads"]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range for a double")
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads``, refusing ``NaN``, ``Infinity`` and numbers that are
    not finite doubles."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite)


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that raises ValueError rather than write ``NaN``."""
    return json.dumps(value, allow_nan=False, **options)
