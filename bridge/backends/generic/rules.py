"""A field's validation annotations as JSON Schema: what a proto says of a
field beyond its type, made bounds the bridge checks before anything runs.

* ``google.api.field_behavior = REQUIRED`` (Google's API conventions):
  the field is required.
* protovalidate's ``buf.validate.field`` rules: ``required``; numbers'
  ``const``, ``lt``, ``lte``, ``gt``, ``gte``, ``in`` and ``finite``;
  strings' ``const``, ``len``, ``min_len``, ``max_len``, ``pattern`` and
  the ``email``, ``uri`` and ``uuid`` formats; repeated fields'
  ``min_items``, ``max_items``, ``unique`` and their ``items`` rules; maps'
  ``min_pairs`` and ``max_pairs``. Rules written in CEL, and the rest,
  stay the service's to check.

Both are read from the field's options as protobuf encodes them (the
extensions' numbers, 1052 and 1159), so neither annotation package needs
to be known to the bridge, and descriptor sets, compiled protos and
reflection answers read alike.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from ..._compat.jsonschema import unusable

__all__ = ["field_rules"]

#: The extensions' numbers on google.protobuf.FieldOptions.
_FIELD_BEHAVIOR = 1052
_BUF_VALIDATE = 1159
_REQUIRED_BEHAVIOR = 2  # google.api.FieldBehavior.REQUIRED

# buf.validate.FieldRules' fields.
_RULES_REQUIRED = 25
_REPEATED, _MAP = 18, 19
_STRING = 14
#: FieldRules' number rules: field number -> how their values are encoded.
_NUMBERS = {
    1: "float", 2: "double", 3: "int32", 4: "int64", 5: "uint32", 6: "uint64",
    7: "sint32", 8: "sint64", 9: "fixed32", 10: "fixed64", 11: "sfixed32", 12: "sfixed64",
}  # fmt: skip
#: A number rule's fields (the same numbers in every *Rules message).
_BOUNDS = {1: "const", 2: "exclusiveMaximum", 3: "maximum", 4: "exclusiveMinimum", 5: "minimum"}
_IN, _FINITE = 6, 8
#: StringRules' fields: lengths, pattern, const, and formats.
_STRING_LENGTHS = {2: "minLength", 3: "maxLength"}
_STRING_LEN, _STRING_PATTERN, _STRING_CONST = 19, 6, 1
_FORMATS = {12: "email", 17: "uri", 22: "uuid"}


def field_rules(field: FieldDescriptor) -> tuple[bool, dict[str, Any]]:
    """Whether *field* is required, and the bounds its annotations put on
    one of its values (for a repeated or map field, on the whole of it,
    with its ``items`` rules under ``items``)."""
    options = field.GetOptions().SerializeToString()
    required = False
    bounds: dict[str, Any] = {}
    for number, value in _fields(options):
        if number == _FIELD_BEHAVIOR:
            required |= _REQUIRED_BEHAVIOR in _varints(value)
        elif number == _BUF_VALIDATE and isinstance(value, bytes):
            is_required, found = _rules(value)
            required |= is_required
            bounds |= found
    return required, bounds


def _rules(data: bytes) -> tuple[bool, dict[str, Any]]:
    """A buf.validate.FieldRules message as (required, bounds)."""
    required = False
    bounds: dict[str, Any] = {}
    for number, value in _fields(data):
        if number == _RULES_REQUIRED:
            required = bool(value)
        elif number in _NUMBERS and isinstance(value, bytes):
            bounds |= _number_rules(_NUMBERS[number], value)
        elif number == _STRING and isinstance(value, bytes):
            bounds |= _string_rules(value)
        elif number == _REPEATED and isinstance(value, bytes):
            bounds |= _repeated_rules(value)
        elif number == _MAP and isinstance(value, bytes):
            names = {1: "minProperties", 2: "maxProperties"}
            bounds |= {names[n]: v for n, v in _fields(value) if n in names}
    return required, bounds


def _number_rules(kind: str, data: bytes) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    allowed: list[Any] = []
    for number, raw in _fields(data):
        value = _decode(kind, raw)
        if number in _BOUNDS:
            bounds[_BOUNDS[number]] = value
        elif number == _IN:
            allowed.append(value)
        elif number == _FINITE and value:
            bounds["x-finite"] = True
    if allowed:
        bounds["enum"] = allowed
    return bounds


def _string_rules(data: bytes) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for number, value in _fields(data):
        if number in _STRING_LENGTHS:
            bounds[_STRING_LENGTHS[number]] = value
        elif number == _STRING_LEN:
            bounds["minLength"] = bounds["maxLength"] = value
        elif number == _STRING_CONST and isinstance(value, bytes):
            bounds["const"] = value.decode("utf-8", "replace")
        elif number == _STRING_PATTERN and isinstance(value, bytes):
            pattern = value.decode("utf-8", "replace")
            if _portable(pattern):
                bounds["pattern"] = pattern
        elif number in _FORMATS and value:
            bounds["format"] = _FORMATS[number]
    return bounds


def _repeated_rules(data: bytes) -> dict[str, Any]:
    names = {1: "minItems", 2: "maxItems", 3: "uniqueItems"}
    bounds: dict[str, Any] = {}
    for number, value in _fields(data):
        if number in names:
            bounds[names[number]] = bool(value) if number == 3 else value
        elif number == 4 and isinstance(value, bytes):  # items: FieldRules
            _, items = _rules(value)
            if items:
                bounds["items"] = items
    return bounds


def _portable(pattern: str) -> bool:
    """Whether an RE2 pattern reads the same as a JSON Schema one here:
    the bridge's engine compiles it, and it uses none of RE2's own syntax
    (named groups ``(?P``, flags groups, ``\\z``, POSIX classes
    ``[[:alpha:]]``, which ECMA-262 reads as a set of characters)."""
    if re.search(r"\(\?[a-zA-Z]|\(\?P|\\[zAQE]|\[\[:", pattern):
        return False
    return unusable(pattern) is None


def _decode(kind: str, raw: Any) -> Any:
    """A rule's value as protobuf encoded it for *kind*."""
    if kind == "double":
        return struct.unpack("<d", raw)[0] if isinstance(raw, bytes) else raw
    if kind == "float":
        return struct.unpack("<f", raw)[0] if isinstance(raw, bytes) else raw
    if isinstance(raw, bytes):  # fixed32/64, sfixed32/64: little-endian
        signed = kind.startswith("sfixed")
        return int.from_bytes(raw, "little", signed=signed)
    if kind in ("sint32", "sint64"):
        return (raw >> 1) ^ -(raw & 1)
    if kind in ("int32", "int64") and raw >= 1 << 63:
        return raw - (1 << 64)
    return raw


def _fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """Each (field number, value) of a protobuf message's encoding: a
    varint as an int, a 32- or 64-bit value and a length-delimited one as
    bytes. Stops at anything malformed (the descriptors were parsed before
    they reached here)."""
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        if i < 0:
            return
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            if i < 0:
                return
            yield number, value
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if i + size > end:
                return
            yield number, data[i : i + size]
            i += size
        elif wire == 2:
            size, i = _varint(data, i)
            if i < 0 or i + size > end:
                return
            yield number, data[i : i + size]
            i += size
        else:  # groups: not in these messages
            return


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at *i*, and where the next value starts (-1: cut short)."""
    value = shift = 0
    while i < len(data) and shift < 70:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
    return 0, -1


def _varints(value: Any) -> list[int]:
    """A repeated enum's values: one varint, or a packed run of them."""
    if isinstance(value, int):
        return [value]
    found, i = [], 0
    while i < len(value):
        item, i = _varint(value, i)
        if i < 0:
            break
        found.append(item)
    return found
