"""A bridged service's response messages as a prediction's events.

By default each response message is one output: the message as proto3
JSON, with the proto's field names. A model's ``[output]`` table says
more, with JMESPath expressions over that JSON: ``text`` (text chunks),
``logs``, ``metrics``, ``error`` (a non-empty value fails the prediction)
and ``done`` (true: the last message). An expression that lands on a
``bytes`` field gives its bytes as UTF-8 text, not base64 (the text
outputs of inference servers are bytes tensors).

An expression that is a plain path of fields (``token.text``) is checked
against the response type at startup and read from the message itself,
with no JSON made: the hot path of a language model's tokens. Any other
expression runs over the message's JSON, made once per message.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from typing import Any

import jmespath
import jmespath.exceptions
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ...config import ConfigError, OutputSettings
from ...errors import BackendProtocolError, ModelError
from ..interface import LogLine, MetricsUpdate, OutputChunks, StreamItem
from ..wire import TEXT_STREAM_SCHEMA
from .schema import message_schema

__all__ = ["MAX_ERROR_CHARS", "Output", "message_json"]

#: A path of fields, each may be flattened (``output.chunks[].text``).
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\])?(\.[A-Za-z_][A-Za-z0-9_]*(\[\])?)*$")
_BYTES_VALUE = "google.protobuf.BytesValue"

#: The most of an ``error`` expression's text a prediction's error keeps.
MAX_ERROR_CHARS = 2000

#: An expression, made ready: the message in, the value out (None: absent).
Reader = Callable[[Message, "_Json"], Any]


class _Json:
    """A message's JSON, made when an expression first needs it."""

    __slots__ = ("_doc", "_message")

    def __init__(self, message: Message) -> None:
        self._message = message
        self._doc: Any = None

    def get(self) -> Any:
        if self._doc is None:
            self._doc = message_json(self._message, text_bytes=True)
        return self._doc


def message_json(message: Message, *, text_bytes: bool = False) -> dict[str, Any]:
    """*message* as proto3 JSON with the proto's field names; with
    *text_bytes*, its ``bytes`` fields as UTF-8 text instead of base64."""
    doc: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if text_bytes:
        _bytes_as_text(message, doc)
    return doc


def _bytes_as_text(message: Message, doc: dict[str, Any]) -> None:
    """Replace, in *doc* (*message*'s JSON), every bytes value by its text."""
    for field, value in message.ListFields():
        if field.name not in doc:
            continue
        if field.type == FieldDescriptor.TYPE_BYTES:
            doc[field.name] = [_text(v) for v in value] if field.is_repeated else _text(value)
        elif field.message_type is not None:
            kind = field.message_type
            if kind.GetOptions().map_entry:
                inner = kind.fields_by_name["value"]
                entries = doc[field.name]
                if inner.type == FieldDescriptor.TYPE_BYTES:
                    for key, item in value.items():
                        entries[_json_key(key)] = _text(item)
                elif inner.message_type is not None and _plain_message(inner.message_type):
                    for key, item in value.items():
                        _bytes_as_text(item, entries[_json_key(key)])
            elif kind.full_name == _BYTES_VALUE:
                doc[field.name] = (
                    [_text(v.value) for v in value] if field.is_repeated else _text(value.value)
                )
            elif _plain_message(kind):
                items = value if field.is_repeated else [value]
                docs = doc[field.name] if field.is_repeated else [doc[field.name]]
                for item, item_doc in zip(items, docs, strict=True):
                    _bytes_as_text(item, item_doc)


def _is_map(field: FieldDescriptor) -> bool:
    kind = field.message_type
    return kind is not None and kind.GetOptions().map_entry


def _json_key(key: Any) -> str:
    """A map key as proto3 JSON writes it."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _plain_message(kind: Descriptor) -> bool:
    """Whether a message's JSON is its fields (not a well-known type's own)."""
    return not kind.full_name.startswith("google.protobuf.")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class Output:
    """A model's ``[output]`` table, made ready for its response type."""

    def __init__(self, settings: OutputSettings, response: Descriptor) -> None:
        self.response = response
        #: Whether reading a message makes its JSON (worth a thread when
        #: the message is large): set by the readers that need it.
        self.needs_json = settings.text is None
        self.text = self._reader("text", settings.text)
        self.logs = self._reader("logs", settings.logs)
        self.error = self._reader("error", settings.error)
        self.done = self._reader("done", settings.done)
        self.metrics = {
            name: reader
            for name, expression in settings.metrics.items()
            if (reader := self._reader(f"metrics.{name}", expression)) is not None
        }
        #: Whether a message is more than its JSON as one output.
        self.mapped = any(
            r is not None for r in (self.text, self.logs, self.error, self.done)
        ) or bool(self.metrics)

    def _reader(self, key: str, expression: str | None) -> Reader | None:
        if expression is None:
            return None
        try:
            compiled = jmespath.compile(expression)
        except jmespath.exceptions.JMESPathError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"[output] {key}: not a JMESPath expression ({message})") from None
        if _PLAIN.match(expression):
            names = expression.split(".")
            steps = [(name.removesuffix("[]"), name.endswith("[]")) for name in names]
            reader = self._path(key, steps)
            if reader is not None:
                return reader
        self.needs_json = True

        def search(message: Message, doc: _Json) -> Any:
            try:
                return compiled.search(doc.get())
            except jmespath.exceptions.JMESPathError as exc:  # join() on a null, say
                detail = str(exc).replace("\n", " ")[:200]
                raise BackendProtocolError(
                    f"[output] {key} could not be read from a message: {detail}"
                ) from None

        return search

    def _path(self, key: str, steps: list[tuple[str, bool]]) -> Reader | None:
        """A plain path (field names, each maybe flattened with ``[]``)
        checked against the response type and read from the message; None
        where it ends on a message or flattens what is not a list (read
        over the JSON then)."""
        fields: list[FieldDescriptor] = []
        kind: Descriptor | None = self.response
        for name, flat in steps:
            if kind is None:
                before = fields[-1].name
                if fields[-1].is_repeated:
                    raise ConfigError(
                        f"[output] {key}: {before} is a list; {before}[].{name} reads each item's"
                    )
                raise ConfigError(f"[output] {key}: {before} is not a message")
            field = kind.fields_by_name.get(name)
            if field is None:
                raise ConfigError(
                    f"[output] {key}: {kind.full_name} has no field {name!r} "
                    "(fields go by the proto's names)"
                )
            if _is_map(field) or (field.message_type and not _plain_message(field.message_type)):
                return None  # its JSON is not its fields (a map, Struct, a wrapper...)
            if flat and not field.is_repeated:
                return None
            fields.append(field)
            kind = field.message_type if flat or not field.is_repeated else None
        if fields[-1].message_type is not None:
            return None  # a message or a list of them: its JSON
        return _field_reader(fields, [flat for _, flat in steps])

    def items(self, message: Message) -> tuple[list[StreamItem], bool]:
        """*message*'s events, and whether it is the last; raises
        :class:`ModelError` where the ``error`` expression says so."""
        if not self.mapped:
            return [OutputChunks([message_json(message)])], False
        doc = _Json(message)
        if self.error is not None and (error := self.error(message, doc)):
            text = _as_text(error)
            if len(text) > MAX_ERROR_CHARS:
                text = text[: MAX_ERROR_CHARS - 1] + "…"
            raise ModelError(text)
        items: list[StreamItem] = []
        if self.logs is not None:
            items += [LogLine(line) for line in _texts(self.logs(message, doc))]
        if self.metrics:
            values = {}
            for name, reader in self.metrics.items():
                value = reader(message, doc)
                if value is not None:
                    values[name] = _number(name, value)
            if values:
                items.append(MetricsUpdate(values))
        if self.text is not None:
            texts = _texts(self.text(message, doc))
            if texts:
                items.append(OutputChunks(texts))
        elif not (self.done is not None and self._is_last_empty(message)):
            items.append(OutputChunks([message_json(message)]))
        last = self.done is not None and bool(self.done(message, doc))
        return items, last

    def _is_last_empty(self, message: Message) -> bool:
        """A message with nothing set (a bare end marker) is no output."""
        return not message.ListFields()

    def schema(self, server_streaming: bool) -> dict[str, Any]:
        """The output schema: text chunks that concatenate, else each
        message's JSON (an iterator of them from a streaming method)."""
        if self.text is not None:
            return copy.deepcopy(TEXT_STREAM_SCHEMA)
        one = message_schema(self.response)
        defs = one.pop("$defs")
        if not server_streaming:
            return {**one, "title": "Output", "$defs": defs}
        return {
            "type": "array",
            "title": "Output",
            "items": one,
            "x-cog-array-type": "iterator",
            "$defs": defs,
        }


def _field_reader(fields: list[FieldDescriptor], flats: list[bool]) -> Reader:
    """Read a scalar (or a list of them) at the end of *fields*, each step
    flattened (``[]``) where *flats* says: what JMESPath gives over the
    message's JSON, which leaves out what is unset or proto3's default
    (null: None), and whose projections skip nulls."""
    *through, last = fields
    steps = [(f.name, flat) for f, flat in zip(through, flats, strict=False)]
    flat_end = flats[-1]
    value = _value_reader(last)

    if not any(flats):

        def read(message: Message, doc: _Json) -> Any:
            for step, _ in steps:
                if not message.HasField(step):
                    return None
                message = getattr(message, step)
            return value(message)

        return read if steps else (lambda message, doc: value(message))

    def project(message: Message, doc: _Json) -> Any:
        level = [message]
        projecting = False
        for step, flat in steps:
            if not projecting:  # one message so far
                (one,) = level
                if flat:
                    level = list(getattr(one, step))
                    if not level:
                        return None  # an empty list is not in the JSON
                    projecting = True
                elif one.HasField(step):
                    level = [getattr(one, step)]
                else:
                    return None
            elif flat:
                level = [item for m in level for item in getattr(m, step)]
            else:
                level = [getattr(m, step) for m in level if m.HasField(step)]
        if not projecting:  # only the last step flattens: its list as it is
            return value(level[0])
        if flat_end:
            return [v for m in level for v in value(m) or ()]
        return [v for m in level if (v := value(m)) is not None]

    return project


def _value_reader(field: FieldDescriptor) -> Callable[[Message], Any]:
    """*field*'s value in a message as its JSON has it (bytes as text, an
    enum by name), None where the JSON leaves it out."""
    name = field.name
    is_bytes = field.type == FieldDescriptor.TYPE_BYTES
    enum = field.enum_type

    def convert(value: Any) -> Any:
        if is_bytes:
            return _text(value)
        if enum is not None:
            found = enum.values_by_number.get(value)
            return found.name if found is not None else value
        return value

    if field.is_repeated:
        return lambda m: [convert(v) for v in values] if (values := getattr(m, name)) else None
    if field.has_presence:
        return lambda m: convert(getattr(m, name)) if m.HasField(name) else None
    if not is_bytes and enum is None:  # the plainest: a proto3 scalar
        return lambda m: getattr(m, name) or None
    return lambda m: convert(value) if (value := getattr(m, name)) else None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _texts(value: Any) -> list[str]:
    """What an expression gave, as text pieces: a string, or each item of a
    list; nothing for null or empty."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [t for item in value if item is not None and (t := _as_text(item))]
    return [_as_text(value)]


def _number(name: str, value: Any) -> float:
    """A metric's value: a number, or a decimal string (64-bit integers
    are strings in proto3 JSON)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise BackendProtocolError(
            f"model backend sent metric {name} that is not a finite number ({_as_text(value)[:80]})"
        )
    return number
