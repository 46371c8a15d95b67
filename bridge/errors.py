"""The bridge's errors: one small tree, each class knowing its HTTP status.

::

    BridgeError                    500, base of everything below
    ├── BadRequest                 400, malformed JSON or body
    ├── NotFound                   404, unknown model, version or prediction
    ├── Gone                       410, a prediction whose data was removed
    ├── InvalidInput               422, input fails the model's schema
    ├── Unauthorized               401, no valid bearer token
    ├── PayloadTooLarge            413, request body over the limit
    ├── RetryLater                 answered with Retry-After
    │   ├── Overloaded             429, over capacity
    │   ├── ShuttingDown           503, draining
    │   └── StoreUnavailable       503, the shared store (Redis) cannot be reached
    └── PredictionError            a prediction failed; str(exc) is its `error`
        ├── BackendUnavailable     503, the model backend cannot be reached
        │   └── BackendLoading     503, ... yet: its model is still loading
        ├── BackendTimeout         504, a gRPC deadline expired
        ├── DeadlineExceeded       504, a configured deadline expired
        ├── OutputTooLarge         507, output over max_output_bytes
        ├── BackendProtocolError   502, the backend does not speak bridge.v1
        └── ModelError             502, the model itself raised

Apart from the tree, :class:`ListenError`: a server that cannot listen on
its address, reported by the serving commands in one line.

Foreign errors are translated at exactly one boundary: ``grpc.RpcError``
becomes a ``PredictionError`` in :mod:`bridge.backends.grpc_loop` and
nowhere else. HTTP handlers render any ``BridgeError`` as
``application/problem+json``; a running stream renders it as an SSE
``error`` event.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendLoading",
    "BackendProtocolError",
    "BackendSetupFailed",
    "BackendTimeout",
    "BackendUnavailable",
    "BadRequest",
    "BridgeError",
    "DeadlineExceeded",
    "Gone",
    "InvalidInput",
    "InvalidWebhook",
    "ListenError",
    "ModelError",
    "NotFound",
    "OutputTooLarge",
    "Overloaded",
    "PayloadTooLarge",
    "PredictionError",
    "RetryLater",
    "ShuttingDown",
    "StoreUnavailable",
    "Unauthorized",
]


class BridgeError(Exception):
    """Base of every error the bridge reports to a client."""

    status: int = 500
    title: str = "Internal server error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem details body for this error."""
        return {"title": self.title, "detail": self.detail, "status": self.status}


class BadRequest(BridgeError):
    """The request body is not valid JSON, or not the shape the API takes."""

    status = 400
    title = "Bad request"


class NotFound(BridgeError):
    """No such model, version or prediction."""

    status = 404
    title = "Not found"


class Gone(BridgeError):
    """The prediction is known, but what was asked of it was let go of."""

    status = 410
    title = "Gone"


class InvalidInput(BridgeError):
    """The prediction's input does not match the model's input schema."""

    status = 422
    title = "Input validation failed"

    def __init__(self, detail: str, invalid_fields: list[dict[str, str]]) -> None:
        super().__init__(detail)
        self.invalid_fields = invalid_fields

    def problem(self) -> dict[str, Any]:
        return {**super().problem(), "invalid_fields": self.invalid_fields}


class InvalidWebhook(InvalidInput):
    """A webhook that cannot be taken: not an http(s) URL, an unknown
    event, or a host deliveries may not go to."""

    title = "Webhook refused"


class Unauthorized(BridgeError):
    """The API needs a bearer token and the request has no valid one."""

    status = 401
    title = "Unauthorized"


class PayloadTooLarge(BridgeError):
    """The request body is larger than the configured limit."""

    status = 413
    title = "Request body too large"


class RetryLater(BridgeError):
    """Not now: answered with ``Retry-After`` (``[server]
    retry_after_seconds``, added where the error becomes HTTP)."""


class Overloaded(RetryLater):
    """Too many predictions running and waiting; retry after a while."""

    status = 429
    title = "Too many predictions"


class ShuttingDown(RetryLater):
    """The bridge is draining for shutdown and takes no new predictions."""

    status = 503
    title = "Shutting down"


class StoreUnavailable(RetryLater):
    """The store the predictions are shared through (Redis) cannot be
    reached: nothing was created; retry."""

    status = 503
    title = "Store unavailable"


class PredictionError(BridgeError):
    """A prediction failed; the message is what users see as its ``error``."""

    status = 502
    title = "Prediction failed"


class BackendUnavailable(PredictionError):
    """The model backend could not be reached (gRPC ``UNAVAILABLE``)."""

    status = 503
    title = "Model backend unavailable"


class BackendLoading(BackendUnavailable):
    """The backend is up but its model is still loading (its ``setup()``
    runs): ``UNAVAILABLE`` with :data:`bridge.backends.wire.LOADING`."""


class BackendSetupFailed(BackendUnavailable):
    """The backend's model cannot serve: its setup failed
    (``FAILED_PRECONDITION`` with :data:`bridge.backends.wire.SETUP_FAILED`
    and why). Another target may; if none is up, the prediction fails with
    the backend's words."""


class BackendTimeout(PredictionError):
    """A deadline on the gRPC call expired (gRPC ``DEADLINE_EXCEEDED``)."""

    status = 504
    title = "Model backend timed out"


class DeadlineExceeded(PredictionError):
    """A deadline of the model's config expired; the message names it."""

    status = 504
    title = "Deadline exceeded"


class OutputTooLarge(PredictionError):
    """The prediction's output went over its byte limit."""

    status = 507
    title = "Output too large"


class BackendProtocolError(PredictionError):
    """The backend answered, but not as a ``bridge.v1.Predictor`` should."""

    title = "Model backend protocol error"


class ModelError(PredictionError):
    """The model raised; the message is the model's own."""

    title = "Model error"


class ListenError(OSError):
    """A server (the bridge, or a model's) cannot listen on its address;
    the message says which address and why. Not an HTTP error: the serving
    commands print it in one line and exit 2."""
