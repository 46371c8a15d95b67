"""A protobuf message type as the JSON Schema (2020-12) of its proto3 JSON
mapping: what a model whose input is that message accepts, checked before
anything runs and then converted by protobuf's own JSON parser.

Fields go by the names the proto gives them (``infer_response``); the
lowerCamel name protobuf's parser also accepts is a property too, marked
``"x-alias-of": "infer_response"`` (the page's form shows the field once). Scalars
keep their ranges (64-bit integers as JSON numbers or decimal strings, as
the mapping allows), enums go by name, bytes as base64, and repeated
fields, maps, nested and recursive messages (each message type a
``$defs`` entry, recursion a ``$ref``), ``oneof`` (at most one of its
fields), proto3 ``optional`` and the well-known types map as protobuf's
parser reads them. Comments become descriptions where the descriptors
carry source info (:func:`comments`).
"""

from __future__ import annotations

import itertools
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .rules import field_rules

__all__ = ["ALIAS", "comments", "message_schema", "without"]

#: Marks a field's lowerCamel property: the name of the field it spells.
ALIAS = "x-alias-of"

#: Where a message type's schema is, in the document's ``$defs``.
_REF = "#/$defs/{}"


def _up_to(limit: int) -> str:
    """A regular expression of the decimal numbers from 0 to *limit*
    (leading zeros allowed, as protobuf's parser takes them)."""
    digits = str(limit)
    shorter = f"0*[0-9]{{1,{len(digits) - 1}}}" if len(digits) > 1 else ""
    same = [digits]
    for i, top in enumerate(digits):
        if top != "0":
            lower = "0" if top == "1" else f"[0-{int(top) - 1}]"
            rest = len(digits) - i - 1
            same.append(digits[:i] + lower + (f"[0-9]{{{rest}}}" if rest else ""))
    return "|".join(filter(None, [shorter, *(f"0*{n}" for n in same)]))


def _integers(low: int, high: int) -> str:
    """A pattern of the decimal strings from *low* to *high* (0 or below)."""
    negative = f"|-(?:{_up_to(-low)})" if low < 0 else ""
    return f"^(?:{_up_to(high)}{negative})$"


_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {
    "anyOf": [
        {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        {"type": "string", "pattern": _integers(-(2**63), 2**63 - 1)},
    ]
}
_UINT64 = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
        {"type": "string", "pattern": _integers(0, 2**64 - 1)},
    ]
}
#: A map key's pattern, by its type (proto3 JSON writes every key as a string).
_KEYS = {
    FieldDescriptor.TYPE_INT32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: _integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: _integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: _integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: _integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: _integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: _integers(0, 2**64 - 1),
}
_DOUBLE = {"anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}
#: The largest finite 32-bit float: beyond it protobuf's parser refuses.
_FLOAT_MAX = 3.4028234663852886e38
_FLOAT = {
    "anyOf": [
        {"type": "number", "minimum": -_FLOAT_MAX, "maximum": _FLOAT_MAX},
        {"enum": ["NaN", "Infinity", "-Infinity"]},
    ]
}
_BYTES = {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$"}

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _DOUBLE,
    FieldDescriptor.TYPE_FLOAT: _FLOAT,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: _BYTES,
}

#: The well-known types whose JSON is not their fields' (the wrappers are
#: their one field's: see _wrapped).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]{1,12}(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "maxProperties": 0},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
}
_WRAPPERS = {
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
}

#: Keys of (message full name, field name or "") to a comment.
Comments = dict[tuple[str, str], str]


def message_schema(message: Descriptor, notes: Comments | None = None) -> dict[str, Any]:
    """The JSON Schema of *message*'s proto3 JSON: its own properties at the
    top, every message type it reaches (itself too, for recursion) in
    ``$defs``; *notes* (:func:`comments`) become descriptions."""
    defs: dict[str, Any] = {}
    _define(message, defs, notes or {})
    return {**defs[message.full_name], "$defs": defs}


def without(schema: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """*schema* (:func:`message_schema`'s) whose top level neither takes
    nor requires *names* (its ``$defs``, where a recursive type may still
    have them, untouched)."""
    out = {**schema, "properties": {
        k: v for k, v in schema["properties"].items() if k not in names
    }}  # fmt: skip
    if "required" in out:
        out["required"] = [n for n in out["required"] if n not in names]
    if "allOf" in out:  # "the proto name unless the lowerCamel one"
        out["allOf"] = [r for r in out["allOf"] if r["then"]["required"][0] not in names]
    for key in ("required", "allOf"):
        if key in out and not out[key]:
            del out[key]
    return out


def _define(message: Descriptor, defs: dict[str, Any], notes: Comments) -> None:
    if message.full_name in defs:
        return
    defs[message.full_name] = {}  # placeholder: a recursive field refers to it
    properties: dict[str, Any] = {}
    required: list[FieldDescriptor] = []
    for field in message.fields:
        one = _field(field, defs, notes)
        must, bounds = field_rules(field)
        must = must or field.is_required  # proto2's `required`
        if must:
            required.append(field)
        if bounds:
            one = _bounded(one, bounds, field)
        note = notes.get((message.full_name, field.name))
        if note:
            one = {**one, "description": note}
        properties[field.name] = one
        if field.json_name != field.name:
            # protobuf's parser takes both; a form shows the proto's name.
            properties[field.json_name] = {**one, ALIAS: field.name}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if notes.get((message.full_name, "")):
        schema["description"] = notes[(message.full_name, "")]
    exclusive = [
        [_names(f) for f in oneof.fields]
        for oneof in message.oneofs
        if not _synthetic(oneof.name, list(oneof.fields))
    ]
    pairs = [
        [a, b]
        for fields in exclusive
        for one, other in itertools.combinations(fields, 2)
        for a in one
        for b in other
    ]
    # And a field by one spelling only (protobuf's parser would take the last).
    pairs += [list(_names(f)) for f in message.fields if f.json_name != f.name]
    if pairs:  # at most one field of each oneof, by either name
        schema["not"] = {"anyOf": [{"required": pair} for pair in pairs]}
    if required:  # by either of its names
        schema["required"] = [f.name for f in required if f.json_name == f.name]
        either = [f for f in required if f.json_name != f.name]
        if either:
            # Its proto name is required unless its lowerCamel one is there
            # (an anyOf would say only "not valid under any").
            schema["allOf"] = [
                {"if": {"not": {"required": [f.json_name]}}, "then": {"required": [f.name]}}
                for f in either
            ]
    defs[message.full_name] = schema


def _names(field: FieldDescriptor) -> tuple[str, ...]:
    """The names a field goes by in JSON: the proto's, and its lowerCamel."""
    return (field.name,) if field.json_name == field.name else (field.name, field.json_name)


def _bounded(
    schema: dict[str, Any], bounds: dict[str, Any], field: FieldDescriptor
) -> dict[str, Any]:
    """*schema* (a field's) with its annotations' *bounds*: on the array
    and its items for a repeated field, on the number (not its string
    form) for a 64-bit integer or a float."""
    bounds = dict(bounds)
    if schema.get("type") == "array":
        items = bounds.pop("items", None)
        if items:
            schema = {**schema, "items": _bounded(schema["items"], items, field)}
        return {**schema, **bounds}
    finite = bounds.pop("x-finite", False)
    branches = schema.get("anyOf")
    if branches and branches[0].get("type") in ("integer", "number"):
        number = {**branches[0], **bounds}
        if finite or "enum" in bounds or "const" in bounds:
            return number  # no NaN, and no string form to bypass them
        return {**schema, "anyOf": [number, *branches[1:]]}
    return {**schema, **bounds}


def _synthetic(name: str, fields: list[FieldDescriptor]) -> bool:
    """Whether a oneof is the one protoc makes for a proto3 ``optional``."""
    return len(fields) == 1 and name == "_" + fields[0].name


def _field(field: FieldDescriptor, defs: dict[str, Any], notes: Comments) -> dict[str, Any]:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        keys: dict[str, Any] = {}
        if key.type == FieldDescriptor.TYPE_BOOL:
            keys = {"propertyNames": {"enum": ["true", "false"]}}
        elif key.type != FieldDescriptor.TYPE_STRING:
            keys = {"propertyNames": {"pattern": _KEYS[key.type]}}
        return {"type": "object", "additionalProperties": _single(value, defs, notes), **keys}
    single = _single(field, defs, notes)
    return {"type": "array", "items": single} if field.is_repeated else single


def _single(field: FieldDescriptor, defs: dict[str, Any], notes: Comments) -> dict[str, Any]:
    """One value of *field* (an item of a repeated one)."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    message = field.message_type
    if message is None:
        return dict(_SCALARS[field.type])
    if message.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[message.full_name])
    if message.full_name in _WRAPPERS:
        return _single(message.fields_by_name["value"], defs, notes)
    _define(message, defs, notes)
    return {"type": "object", "$ref": _REF.format(message.full_name)}


def comments(file: descriptor_pb2.FileDescriptorProto) -> Comments:
    """The leading (else trailing) comments of *file*'s messages and their
    fields, from its source info (a descriptor set made with
    ``--include_source_info``; none without)."""
    located = {
        tuple(location.path): (location.leading_comments or location.trailing_comments).strip()
        for location in file.source_code_info.location
    }
    found: Comments = {}
    prefix = f"{file.package}." if file.package else ""

    def walk(messages: Any, path: tuple[int, ...], scope: str) -> None:
        for i, message in enumerate(messages):
            name = scope + message.name
            here = (*path, i)
            if located.get(here):
                found[(name, "")] = located[here]
            for j, field in enumerate(message.field):
                note = located.get((*here, 2, j))
                if note:
                    found[(name, field.name)] = note
            walk(message.nested_type, (*here, 3), name + ".")

    walk(file.message_type, (4,), prefix)
    return found
