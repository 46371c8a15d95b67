"""What a failed call's ``google.rpc.Status`` details say, in a line.

Services built on Google's API conventions (and grpc-go's ``status``
package, grpc-java's ``StatusProto``) put a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer, with typed details beside the status
message: a ``BadRequest``'s field violations, a ``LocalizedMessage``, an
``ErrorInfo``'s reason. :func:`details_text` renders the readable ones,
bounded, for the prediction's error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2 as details
from google.rpc import status_pb2

__all__ = ["MAX_DETAILS_CHARS", "details_text"]

#: The most of a status's details an error carries.
MAX_DETAILS_CHARS = 1000

_TRAILER = "grpc-status-details-bin"
#: Characters a line of text should not carry: controls (a NUL, an escape
#: sequence, a line break to forge a log line) and bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _bad_request(d: details.BadRequest) -> list[str]:
    return [f"{v.field}: {v.description}" for v in d.field_violations]


def _violations(d: details.QuotaFailure | details.PreconditionFailure) -> list[str]:
    return [f"{v.subject}: {v.description}" if v.subject else v.description for v in d.violations]


def _error_info(d: details.ErrorInfo) -> list[str]:
    return [f"{d.reason} ({d.domain})" if d.domain else d.reason]


#: Each readable detail type, and how it reads.
_READERS: list[tuple[type[Message], Callable[[Any], list[str]]]] = [
    (details.LocalizedMessage, lambda d: [d.message]),
    (details.BadRequest, _bad_request),
    (details.ErrorInfo, _error_info),
    (details.QuotaFailure, _violations),
    (details.PreconditionFailure, _violations),
    (details.ResourceInfo, lambda d: [f"{d.resource_type} {d.resource_name}: {d.description}"]),
    (details.Help, lambda d: [f"{link.description} {link.url}".strip() for link in d.links]),
]
# DebugInfo is left out: Google's guidance keeps it from the API's users,
# and a prediction's error is theirs.


def details_text(trailing_metadata: Any) -> str | None:
    """The readable details of the call's ``google.rpc.Status`` trailer
    (*trailing_metadata*: a call's, as grpc gives it), joined with ``; ``;
    None without any."""
    raw = next((v for k, v in trailing_metadata or () if k == _TRAILER), None)
    if not isinstance(raw, bytes):
        return None
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return None
    lines: list[str] = []
    for packed in status.details:
        for kind, read in _READERS:
            if packed.Is(kind.DESCRIPTOR):
                detail = kind()
                try:
                    if packed.Unpack(detail):
                        lines += [line for line in read(detail) if line]
                except DecodeError:  # a detail that is not what it says: skipped
                    pass
                break
    text = _CONTROL.sub(" ", "; ".join(lines))
    if len(text) > MAX_DETAILS_CHARS:
        text = text[: MAX_DETAILS_CHARS - 1] + "…"
    return text or None
