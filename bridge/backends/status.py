"""Where gRPC status codes become the bridge's errors: the one place.

A ``Predict`` call's status (:func:`map_rpc_error`) and a ``Stream``
prediction's ``End`` (:func:`map_status`) map the same way.
"""

from __future__ import annotations

import grpc

from bridge.errors import (
    BackendLoading,
    BackendProtocolError,
    BackendSetupFailed,
    BackendTimeout,
    BackendUnavailable,
    ModelError,
    PredictionError,
)

from . import wire
from .rich_status import details_text

__all__ = ["UNDECODABLE", "map_rpc_error", "map_status", "status_code"]


#: A prediction's error when a backend's message does not decode (not
#: protobuf, a string that is not UTF-8, cut short).
UNDECODABLE = "model backend sent a message that cannot be decoded"


def map_rpc_error(exc: grpc.RpcError, method: str = "bridge.v1") -> PredictionError:
    """The bridge's error for a failed gRPC call: the one place codes map.
    *method* is what the backend was asked to implement."""
    # Both grpc.Call errors and grpc.aio.AioRpcError (not a grpc.Call) have these.
    code = getattr(exc, "code", lambda: grpc.StatusCode.UNKNOWN)()
    details = getattr(exc, "details", lambda: "")() or ""
    # A google.rpc.Status trailer's readable details, after the message.
    rich = details_text(getattr(exc, "trailing_metadata", lambda: None)())
    if rich and details != wire.LOADING:
        details = f"{details} ({rich})" if details else rich
    return map_status(code, details, method)


#: gRPC's status codes by their number (as a Stream's End carries them).
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The status code numbered *number* (one gRPC does not know: UNKNOWN)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def map_status(code: grpc.StatusCode, details: str, method: str = "bridge.v1") -> PredictionError:
    """The bridge's error for a call (or a prediction on a Stream) that
    ended with *code* and *details*."""
    if code is grpc.StatusCode.UNAVAILABLE and details == wire.LOADING:
        return BackendLoading(f"model backend unavailable: {details}")
    if code is grpc.StatusCode.FAILED_PRECONDITION and details.startswith(wire.SETUP_FAILED):
        return BackendSetupFailed(details)  # as the backend said it
    if code is grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(f"model backend unavailable: {details or 'no connection'}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout("model backend timed out: deadline exceeded")
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return BackendProtocolError(f"model backend does not implement {method}: {details}")
    if code is grpc.StatusCode.CANCELLED:
        return BackendUnavailable(f"model backend cancelled the call: {details or 'cancelled'}")
    if code is grpc.StatusCode.UNKNOWN:
        # What the model raised: its message, as is.
        return ModelError(details or "model failed")
    return ModelError(f"model backend error {code.name}: {details}")
