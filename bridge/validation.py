"""Checking what a create asks for, before anything starts: the body as
strict JSON (:func:`parse_json`, 400), the input against the model's JSON
schema and the webhook fields (422, :class:`~bridge.errors.InvalidInput`
listing every bad field)."""

from __future__ import annotations

import collections
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import jsonschema_rs
import msgspec
import referencing
import referencing.exceptions

from . import strictjson
from ._compat.jsonschema import bound_patterns, unusable
from .errors import BackendProtocolError, BadRequest, InvalidInput, InvalidWebhook

# jsonschema lists what is wrong with an input on jsonschema-rs' regular
# expressions: no pattern from a backend can hold the server.
bound_patterns()

#: The webhook events a create may filter on, in the order they come.
EVENTS = ("start", "output", "logs", "completed")

__all__ = [
    "EVENTS",
    "MAX_INVALID_FIELDS",
    "MAX_JSON_DEPTH",
    "check_patterns",
    "listed_names",
    "parse_json",
    "stream_asked",
    "validate_input",
    "validate_stream",
    "validate_webhook",
]

#: What no URL may contain (RFC 3986): whitespace and control characters.
_NOT_IN_URLS = re.compile(r"[\x00-\x20\x7f-\x9f]")

#: How deep a request body may nest (the body object is level 1, so a
#: prediction's ``input`` may nest 31 levels). Protobuf, which carries the
#: input to the backend as a ``Struct``, refuses more than 33 levels of
#: objects when it decodes one.
MAX_JSON_DEPTH = 32


def parse_json(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """*raw* as strict JSON: no ``NaN``/``Infinity`` (nor numbers too large
    to be finite), no lone surrogates in strings or keys, and nesting no
    deeper than *max_depth*. Raises :class:`BadRequest` (400) saying what is
    wrong, so nothing that JSON.parse or UTF-8 would choke on is stored.

    msgspec's decoder (C, UTF-8 only) refuses all of that but the depth,
    so the fast path walks only the containers; whatever it refuses is
    read again by the standard library's, which says what is wrong."""
    try:
        value = msgspec.json.decode(raw)
    except (ValueError, RecursionError):  # DecodeError, or UnicodeDecodeError
        return _parse_slowly(raw, max_depth)
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(f"request body nests deeper than {max_depth} levels")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def _parse_slowly(raw: bytes, max_depth: int) -> Any:
    try:
        value = strictjson.loads(raw)
    except RecursionError:
        raise BadRequest(f"request body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    # One walk over the containers and strings, without recursion.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise BadRequest(f"request body nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                item = item.values()
            stack.extend((child, depth + 1) for child in item)
    return value


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise BadRequest(
                f"request body has a lone surrogate in a string ({text[:40]!r}): "
                "it is not Unicode text"
            ) from None


_Validators = tuple[jsonschema_rs.Draft202012Validator | None, jsonschema.protocols.Validator]

#: The compiled validators of the schemas seen last, by the schema object
#: (kept, so its id is not reused): a model's schema is one object for as
#: long as its Describe answer is kept, so a create costs a lookup, not a
#: compile (nor an encoding of the schema to find it).
_COMPILED: collections.OrderedDict[int, tuple[dict[str, Any], _Validators]] = (
    collections.OrderedDict()
)
_COMPILED_MAX = 256
#: Creates validate in the event loop's thread or, large, in a worker's.
_COMPILED_LOCK = threading.Lock()


def _validators(schema: dict[str, Any]) -> _Validators:
    """The two validators of *schema*, compiled once while it is among the
    last :data:`_COMPILED_MAX` seen."""
    with _COMPILED_LOCK:
        found = _COMPILED.get(id(schema))
        if found is not None and found[0] is schema:
            _COMPILED.move_to_end(id(schema))
            return found[1]
    validators = _compile(schema)
    with _COMPILED_LOCK:
        _COMPILED[id(schema)] = (schema, validators)
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return validators


def _compile(schema: dict[str, Any]) -> _Validators:
    """The two validators of a schema: jsonschema-rs (Rust) says whether an
    input is valid, about 500 times faster than jsonschema (200,000 items:
    1 ms, not 0.6 s); jsonschema lists what is wrong with one that is not,
    lazily, so it stops at :data:`MAX_INVALID_FIELDS`, and decides alone
    where jsonschema-rs cannot compile the schema."""
    try:
        # Never fetching a $ref from the network (jsonschema-rs would, while
        # compiling: on the event loop, wherever a backend's schema says).
        fast = jsonschema_rs.Draft202012Validator(schema, retriever=_no_remote_refs)
    except ValueError:  # a schema it cannot compile (a $ref it cannot follow)
        fast = None
    return fast, jsonschema.Draft202012Validator(schema, registry=_LOCAL_ONLY)


#: The most ``invalid_fields`` one 422 lists; validation stops there, so
#: neither the time it takes nor the answer grows with a huge bad input.
MAX_INVALID_FIELDS = 20
#: The longest ``description`` of one invalid field, in characters.
MAX_DESCRIPTION = 200


def _no_remote_refs(uri: str) -> Any:
    raise ValueError(f"a $ref to {uri}: schemas are not fetched")


def _not_fetched(uri: str) -> referencing.Resource[Any]:
    # attrs fields; mypy's attrs plugin misses their keyword names.
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


#: Where jsonschema looks up a ``$ref`` outside the schema: nowhere (it
#: would fetch it, with a DeprecationWarning, wherever it points).
_LOCAL_ONLY: referencing.Registry[Any] = referencing.Registry(
    retrieve=_not_fetched  # type: ignore[call-arg]
)


def check_patterns(schema: dict[str, Any], which: str) -> None:
    """Raise :class:`BackendProtocolError` if a regular expression of a
    backend's *schema* cannot run on the bounded engine (see
    bridge/_compat/jsonschema.py): Python's ``re`` has no bound, so no
    other engine runs it."""
    stack: list[Any] = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            keyed = value.get("patternProperties")
            patterns = list(keyed) if isinstance(keyed, dict) else []
            if isinstance(value.get("pattern"), str):
                patterns.append(value["pattern"])
            for pattern in patterns:
                if isinstance(pattern, str) and (why := unusable(pattern)) is not None:
                    raise BackendProtocolError(
                        f"model backend sent an {which} schema with a pattern the bridge "
                        f"cannot run ({why}): patterns run on jsonschema-rs' bounded engine "
                        "(ECMA-262, as JSON Schema has them)"
                    )
            stack.extend(value.values())


def validate_input(schema: dict[str, Any], input: Any) -> None:
    """Raise :class:`InvalidInput` listing the fields that fail *schema*:
    every one, up to :data:`MAX_INVALID_FIELDS` (then the detail says there
    are more, and validation stops)."""
    if not isinstance(input, dict):
        raise InvalidInput(
            "input: must be a JSON object",
            [{"type": "type", "field": "input", "description": "input must be an object"}],
        )
    fast, thorough = _validators(schema)
    if fast is not None and fast.is_valid(input):
        return
    found: dict[tuple[str, str], dict[str, str]] = {}  # de-duplicated, in order
    try:
        for field in _invalid_fields(thorough.iter_errors(input)):
            description = field["description"]
            if len(description) > MAX_DESCRIPTION:
                field["description"] = description[: MAX_DESCRIPTION - 3] + "..."
            found.setdefault((field["field"], field["description"]), field)
            if len(found) > MAX_INVALID_FIELDS:
                break
    except referencing.exceptions.Unresolvable as exc:
        raise BackendProtocolError(
            f"model backend sent an input schema with a $ref that is not in it ({exc})"
        ) from None
    except jsonschema_rs.ValidationError as exc:  # a pattern jsonschema-rs cannot compile
        reason = str(exc).partition("\n")[0]
        raise BackendProtocolError(
            f"model backend sent an input schema with a pattern that cannot be used ({reason})"
        ) from None
    if not found:
        return
    fields = sorted(found.values(), key=lambda f: f["field"])[:MAX_INVALID_FIELDS]
    detail = "; ".join(f"input.{f['field']}: {f['description']}" for f in fields)
    if len(found) > MAX_INVALID_FIELDS:
        detail += f"; and more (only the first {MAX_INVALID_FIELDS} are listed)"
    raise InvalidInput(detail, fields)


def listed_names(names: list[str], most: int = 20) -> str:
    """*names*, the first *most* of them, each cut short if long."""
    listed = ", ".join(name[:40] for name in names[:most])
    return listed + (f" and {len(names) - most} more" if len(names) > most else "")


def _invalid_fields(errors: Iterator[jsonschema.ValidationError]) -> Iterator[dict[str, str]]:
    """Each error of *errors* as one or more ``invalid_fields`` entries,
    lazily (a caller that has enough stops the validation)."""
    for error in errors:
        if error.validator == "required":
            where = "".join(f"{p}." for p in error.path)  # a nested object's
            for name in (p for p in error.validator_value if p not in error.instance):
                field = f"{where}{name}"[:MAX_DESCRIPTION]
                yield {"type": "required", "field": field, "description": f"{name} is required"}
        elif error.validator == "additionalProperties" and not error.path:
            known = error.schema.get("properties", {})
            inputs = listed_names(sorted(known)) if known else "none"
            for name in (p for p in error.instance if p not in known):
                yield {
                    "type": "additionalProperties",
                    "field": name[:MAX_DESCRIPTION],
                    "description": f"{name[:MAX_DESCRIPTION]} is not an input of this model "
                    f"(its inputs: {inputs})",
                }
        elif together := _given_together(error):
            where = "".join(f"{p}." for p in error.path)
            for a, b in together:
                yield {
                    "type": "not",
                    "field": f"{where}{b}"[:MAX_DESCRIPTION],
                    "description": f"{a} and {b} cannot both be given"[:MAX_DESCRIPTION],
                }
        else:
            name = ".".join(str(p) for p in error.path) or "input"
            yield {
                "type": str(error.validator),
                "field": name[:MAX_DESCRIPTION],
                "description": error.message,
            }


def _given_together(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """For a ``not: {anyOf: [{required: [a, b]}, ...]}`` refusal (fields
    that exclude each other: a protobuf oneof's, or one field's two
    spellings), the pairs the instance has both of."""
    if error.validator != "not" or not isinstance(error.instance, dict):
        return []
    value = error.validator_value
    branches = value.get("anyOf") if isinstance(value, dict) else None
    pairs = [b.get("required") for b in branches or () if isinstance(b, dict)]
    return [
        (pair[0], pair[1])
        for pair in pairs
        if isinstance(pair, list) and len(pair) == 2 and all(n in error.instance for n in pair)
    ]


def validate_webhook(url: Any, events: Any) -> frozenset[str]:
    """The webhook events asked for; raises :class:`InvalidWebhook` for a URL
    that is not absolute http(s) or an unknown event name."""
    fields = []
    if url is not None and not _is_http_url(url):
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
        raise InvalidWebhook("; ".join(f["description"] for f in fields), fields)
    return chosen


def stream_asked(stream: Any) -> bool:
    """``stream`` of a create body: optional and a boolean (422 if not);
    whether a stream is asked for."""
    if stream is None or isinstance(stream, bool):
        return bool(stream)
    description = "stream must be a boolean"
    raise InvalidInput(
        description, [{"type": "stream", "field": "stream", "description": description}]
    )


def validate_stream(asked: bool, streams: bool) -> None:
    """A stream asked for (``"stream": true``), which a model whose output
    is one value cannot give (422, as on Replicate). Streaming models always
    have one, asked or not."""
    if not asked or streams:
        return
    description = (
        "stream: this model does not stream its output (its output schema is not an "
        "iterator); create it without stream and poll, or use Prefer: wait"
    )
    raise InvalidInput(
        description, [{"type": "stream", "field": "stream", "description": description}]
    )


def _is_http_url(url: Any) -> bool:
    """Whether *url* is an absolute http(s) URL that can be delivered to:
    no whitespace or control characters anywhere (httpx refuses them only
    when connecting), a host, a port in range."""
    if not isinstance(url, str) or _NOT_IN_URLS.search(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad one
    except ValueError:  # e.g. "http://[::1" or "http://host:99999"
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
