"""A model that steps every running prediction at once, as a batching
engine does (vLLM, TGI, SGLang: continuous batching).

Such an engine makes one token for every running sequence per step. Its
model is a :class:`BatchPredictor`: predictions join with :meth:`add` and
leave with :meth:`abort`, and one loop, :meth:`run`, hands each step's
outputs for all of them to the SDK in one call::

    class Engine(BatchPredictor):
        def add(self, id: str, prompt: str, max_tokens: int = 64) -> None:
            self.engine.add_request(id, prompt, max_tokens)

        def abort(self, id: str) -> None:
            self.engine.abort(id)

        async def run(self, emit: Emit) -> None:
            while True:
                step = await self.engine.step()        # {id: token} for all
                await emit(step, finished=self.engine.finished())

The input schema comes from :meth:`add`'s signature after ``id``, as a
``predict``'s does. The SDK writes a step's outputs to the bridge as one
message when the bridge reads predictions over ``Stream`` (every bridge
that knows it), one message per prediction over ``Predict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from .failure import fail
from .outbox import Outbox

__all__ = ["BatchPredictor", "Emit"]

log = logging.getLogger(__name__)

#: How long a failed run() waits before it is started again.
RESTART_SECONDS = 1.0


class Emit(Protocol):
    async def __call__(
        self,
        outputs: Mapping[str, Any],
        *,
        finished: Iterable[str] = (),
        failed: Mapping[str, BaseException | str] | None = None,
    ) -> None:
        """One step: *outputs* maps prediction ids to what each produced (a
        text token, a ``Log``, ``Metrics``, or any JSON value); the ids in
        *finished* succeeded, those in *failed* failed with that error,
        after this step's outputs. Waits while the bridge is behind (so
        the engine is, too)."""
        ...


class BatchPredictor:
    """Subclass it and write :meth:`add`, :meth:`abort` and :meth:`run`."""

    def setup(self) -> None:
        """Load weights and other slow state; called once before serving."""

    #: A prediction joins: called with its id and its input as keyword
    #: arguments (the signature after ``id`` is the input schema), on the
    #: server's event loop; raising fails it.
    add: Callable[..., None]

    def abort(self, id: str) -> None:
        """A running prediction was cancelled: drop it (emit nothing more for it)."""
        raise NotImplementedError

    async def run(self, emit: Emit) -> None:
        """The step loop: runs for the server's life, on its event loop."""
        raise NotImplementedError


class Batcher:
    """The SDK's side of a :class:`BatchPredictor`: which prediction each id
    is, and the step loop's task."""

    def __init__(self, model: BatchPredictor) -> None:
        self.model = model
        self._running: dict[str, Outbox] = {}
        self._joined = 0

    async def run_forever(self) -> None:
        """Run the model's step loop, again after it fails (its running
        predictions fail with its error)."""
        while True:
            try:
                await self.model.run(self.emit)
                error: BaseException = RuntimeError("the model's run() returned")
            except Exception as exc:
                log.exception("the model's run() failed")
                error = exc
            running, self._running = self._running, {}
            for id, outbox in running.items():
                fail(id, error, outbox, logged=True)
                with contextlib.suppress(Exception):  # the engine drops what it held
                    self.model.abort(id)
            await asyncio.sleep(RESTART_SECONDS)

    async def emit(
        self,
        outputs: Mapping[str, Any],
        *,
        finished: Iterable[str] = (),
        failed: Mapping[str, BaseException | str] | None = None,
    ) -> None:
        running = self._running
        for id, item in outputs.items():
            outbox = running.get(id)
            if outbox is not None:
                outbox.put_nowait(item)
        for id in finished:
            if (outbox := running.pop(id, None)) is not None:
                outbox.end()
        for id, error in (failed or {}).items():
            if (outbox := running.pop(id, None)) is not None:
                outbox.end(error if isinstance(error, BaseException) else RuntimeError(error))
        # Past its limit, an outbox's call is not being read: the engine
        # waits for it, as an engine whose output queue is full does (until
        # it is taken, or its prediction ends: a call gone cancels it).
        for outbox in [outbox for outbox in running.values() if outbox.full]:
            await outbox.wait_room()
        await asyncio.sleep(0)

    async def predict(self, prediction_id: str, input: dict[str, Any], outbox: Outbox) -> None:
        """Run one prediction in the engine until it ends (or is cancelled:
        then the model hears abort)."""
        id = prediction_id
        while id in self._running:  # the same prediction again (a retry): its own id
            self._joined += 1
            id = f"{prediction_id}-{self._joined}"
        try:
            self.model.add(id, **input)
        except Exception as exc:
            fail(prediction_id, exc, outbox)
            return
        self._running[id] = outbox
        ended = asyncio.Event()
        outbox.on_end = ended.set
        try:
            await ended.wait()
        finally:
            outbox.cancel()  # an emit waiting for its room waits no more
            if self._running.pop(id, None) is not None:
                self.model.abort(id)
