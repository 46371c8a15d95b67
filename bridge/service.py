"""The bridge's core: models, and predictions running as Trio tasks.

:class:`Bridge` owns every prediction. Each runs as a task in the nursery
the bridge is given (app lifetime, see :func:`bridge.server.serve`), so a
prediction outlives the HTTP request that created it, as on Replicate. A
task records its own failure on its prediction and never lets an exception
escape into the shared nursery, where it would cancel every other
prediction.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

import jsonschema
import trio

from .backends import protocol
from .backends.grpc_loop import GrpcLoop
from .config import ModelSettings, Settings
from .errors import BridgeError, InvalidInput, NotFound, PredictionError
from .predictions import Prediction

__all__ = ["Bridge", "ModelEntry", "validate_input"]

log = logging.getLogger(__name__)

SHUTDOWN_ERROR = "the bridge shut down before the prediction finished; retry it"


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


def _streams(info: protocol.ModelInfo | None) -> bool:
    if info is None:
        return True  # bridge.v1 is a streaming protocol; assume so until told
    return info.output_schema.get("x-cog-array-type") == "iterator"


class ModelEntry:
    """A configured model: where its backends are and what Describe said."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.info: protocol.ModelInfo | None = None
        self._targets: Iterator[str] = itertools.cycle(settings.targets)

    def next_target(self) -> str:
        return next(self._targets)

    @property
    def owner_and_name(self) -> tuple[str, str]:
        owner, _, name = self.name.partition("/")
        return owner, name


class Bridge:
    """Creates, runs and finds predictions."""

    def __init__(self, settings: Settings, grpc_loop: GrpcLoop, nursery: trio.Nursery) -> None:
        self.settings = settings
        self.grpc = grpc_loop
        self._nursery = nursery
        self.models = {name: ModelEntry(m) for name, m in settings.models.items()}
        self.predictions: dict[str, Prediction] = {}
        self.closing = False

    # -- models ----------------------------------------------------------

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"model {name} is not served here") from None

    async def describe(self, entry: ModelEntry) -> protocol.ModelInfo:
        """Ask the model's backend what it is (and remember the answer).

        Raises :class:`PredictionError` if the backend cannot say.
        """
        info = await self.grpc.describe(entry.next_target())
        if info.name and info.name != entry.name:
            log.warning("backend of %s says it serves %s", entry.name, info.name)
        entry.info = info
        return info

    async def try_describe(self, entry: ModelEntry) -> protocol.ModelInfo | None:
        """Describe within the configured timeout; None if the backend is away."""
        if entry.info is not None:
            return entry.info
        with trio.move_on_after(self.settings.describe_timeout_seconds):
            try:
                return await self.describe(entry)
            except PredictionError as exc:
                log.info("cannot describe %s yet: %s", entry.name, exc)
        return None

    async def resolve_version(self, ref: str) -> tuple[ModelEntry, str | None]:
        """The model and version id for a ``version`` field: a version id,
        ``owner/name:id`` or ``owner/name``."""
        name, colon, version = ref.partition(":")
        if "/" in name:
            entry = self.model(name)
            if colon:
                info = await self.try_describe(entry)
                if info is not None and info.version != version:
                    raise NotFound(f"version {version} of {entry.name} is not served here")
            return entry, version or None
        for entry in self.models.values():
            info = await self.try_describe(entry)
            if info is not None and info.version == ref:
                return entry, ref
        raise NotFound(f"version {ref} is not served here")

    # -- predictions -----------------------------------------------------

    async def create(
        self, entry: ModelEntry, input: Any, *, version: str | None = None
    ) -> Prediction:
        """Validate *input* and start a prediction of *entry*.

        If the backend cannot describe the model right now, the prediction is
        still created; it validates and fails (or runs) once the backend
        answers, so a backend that is briefly away costs no request.
        """
        info = await self.try_describe(entry)
        if info is not None:
            validate_input(info.input_schema, input)
        elif not isinstance(input, dict):
            validate_input({}, input)
        prediction = Prediction(
            model=entry.name,
            version=version or (info.version if info else ""),
            input=input,
            streams=_streams(info),
        )
        self.predictions[prediction.id] = prediction
        self._nursery.start_soon(self._run, prediction, entry, info is not None)
        return prediction

    def get(self, prediction_id: str) -> Prediction:
        try:
            return self.predictions[prediction_id]
        except KeyError:
            raise NotFound(f"prediction {prediction_id} not found") from None

    async def _run(self, prediction: Prediction, entry: ModelEntry, validated: bool) -> None:
        try:
            with prediction.cancel_scope:
                await self._predict(prediction, entry, validated)
        except BridgeError as exc:
            prediction.fail(exc.detail)
        except Exception:
            log.exception("prediction %s: bridge error", prediction.id)
            prediction.fail("internal error in the bridge")
        finally:
            if not prediction.done:  # cancelled
                if self.closing:
                    prediction.fail(SHUTDOWN_ERROR)
                else:
                    prediction.cancel()

    async def _predict(self, prediction: Prediction, entry: ModelEntry, validated: bool) -> None:
        if not validated:
            info = entry.info or await self.describe(entry)
            validate_input(info.input_schema, prediction.input)
            prediction.version = prediction.version or info.version
        async with self.grpc.predict(entry.next_target(), prediction.id, prediction.input) as s:
            async for batch in s:
                for item in batch:
                    if isinstance(item, protocol.OutputChunks):
                        prediction.add_output(item.chunks)
                    elif isinstance(item, protocol.LogLine):
                        prediction.add_log(item.line)
                    elif isinstance(item, protocol.MetricsUpdate):
                        prediction.add_metrics(item.values)
                    elif isinstance(item, protocol.Started) and not prediction.started_at:
                        prediction.start()
        prediction.succeed()

    def close(self) -> None:
        """Cancel every running prediction (they record why)."""
        self.closing = True
        for prediction in self.predictions.values():
            prediction.cancel_scope.cancel()
