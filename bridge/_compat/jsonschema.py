"""jsonschema's regular expressions, run on jsonschema-rs' engine (a
private detail: jsonschema's ``_keywords`` and ``_utils`` modules match
``pattern``, ``patternProperties`` and the properties that
``additionalProperties`` and ``unevaluatedProperties`` weigh with
``re.search`` through their module global ``re``; pinned by
tests/test_compat.py).

Python's ``re`` backtracks without bound, holding the GIL: a backend's
``Input(regex=r"^(\\w+\\s?)*$")`` took 15 s to reject a 29-character input,
four times longer for every two more, and the server with it.
jsonschema-rs, which decides whether an input is valid before jsonschema
lists what is wrong, runs patterns on Rust's ``regex`` crate (linear
time) or, for backreferences and lookaround, ``fancy-regex`` with a
backtracking limit (past it the pattern does not match). Listing errors
on the same engine bounds every pattern and makes the two agree.
"""

from __future__ import annotations

import functools
import types

import jsonschema._keywords
import jsonschema._utils
import jsonschema_rs

__all__ = ["bound_patterns", "search", "unusable"]


@functools.lru_cache(maxsize=1024)
def _matcher(pattern: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator({"pattern": pattern})


def unusable(pattern: str) -> str | None:
    """Why *pattern* cannot be run here (jsonschema-rs does not compile
    it: Python's ``\\Z``, ``(?P=name)``...), or None if it can."""
    try:
        _matcher(pattern)
    except ValueError as exc:  # jsonschema_rs.ValidationError
        return str(exc).partition("\n")[0]
    return None


def search(pattern: str, text: str) -> bool:
    """Whether *pattern* matches somewhere in *text*, as JSON Schema's
    ``pattern`` has it (ECMA-262, not anchored); bounded in time."""
    return _matcher(pattern).is_valid(text)


_BOUNDED = types.SimpleNamespace(search=search)


def bound_patterns() -> None:
    """Make jsonschema match every pattern with :func:`search`."""
    jsonschema._keywords.re = _BOUNDED
    jsonschema._utils.re = _BOUNDED
