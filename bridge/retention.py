"""What the bridge keeps, and the bound on all of it together.

Every prediction's data (input, output and logs) is counted in bytes as it
grows (:meth:`Retention.charge`), against two bounds:

* ``max_output_bytes``, one prediction's output and logs: past it, that
  prediction fails;
* ``max_retained_bytes``, every prediction's data together, running or
  ended. To make room, the data of the predictions that ended first is let
  go of (their metadata stays, with ``data_removed: true``); if the running
  ones alone fill it, the prediction that asks for more fails, and a create
  is refused with 429 until room is back.

Ended predictions are forgotten entirely after ``retention_seconds`` or past
``retention_count`` (then they are 404).
"""

from __future__ import annotations

import collections
import time

from .errors import OutputTooLarge, Overloaded
from .events import EVENT_COST
from .predictions import Prediction

__all__ = ["Retention"]


class Retention:
    """The bridge's ledger of kept bytes, and of ended predictions in the
    order they ended."""

    def __init__(
        self,
        predictions: dict[str, Prediction],
        *,
        max_bytes: int,
        seconds: float,
        count: int,
        retry_after: int,
    ) -> None:
        self._predictions = predictions
        self._max_bytes = max_bytes
        self._seconds = seconds
        self._count = count
        self._retry_after = retry_after
        #: Bytes kept for every prediction's data together.
        self.bytes = 0
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._with_data: collections.OrderedDict[str, None] = collections.OrderedDict()

    def admit(self, prediction: Prediction) -> None:
        """Count a new prediction's input; raises :class:`Overloaded` if it
        does not fit even once every ended prediction's data is gone."""
        if not self._make_room(prediction.kept_bytes):
            raise Overloaded(
                "the bridge holds as much prediction data as it may "
                "(max_retained_bytes); retry later",
                self._retry_after,
            )
        self.bytes += prediction.kept_bytes

    def charge(self, prediction: Prediction, cost: int, cap: int) -> None:
        """Count *cost* more bytes of *prediction*'s output or logs, before
        they are appended; raises :class:`OutputTooLarge` if they are over
        its *cap* or do not fit in what the bridge may keep."""
        if prediction.output_bytes + cost > cap:
            raise OutputTooLarge(
                f"output exceeded max_output_bytes ({cap} bytes, counting "
                f"{EVENT_COST} bytes per chunk besides its text)"
            )
        if not self._make_room(cost):
            raise OutputTooLarge(
                "output did not fit in what the bridge may keep for all "
                "predictions (max_retained_bytes)"
            )
        self.bytes += cost

    def ended(self, prediction: Prediction) -> None:
        """*prediction* has ended: its data may go first when room is needed."""
        self._ended[prediction.id] = prediction.completed_at or time.time()
        self._with_data[prediction.id] = None
        self.prune()

    def prune(self) -> None:
        """Forget ended predictions past the retention window or count."""
        horizon = time.time() - self._seconds
        while self._ended and (
            len(self._ended) > self._count or next(iter(self._ended.values())) < horizon
        ):
            prediction_id, _ = self._ended.popitem(last=False)
            prediction = self._predictions.pop(prediction_id)
            if prediction_id in self._with_data:
                del self._with_data[prediction_id]
                self.bytes -= prediction.kept_bytes

    def _make_room(self, cost: int) -> bool:
        """Remove the data of the earliest ended predictions until *cost*
        more bytes fit; False if they cannot."""
        while self.bytes + cost > self._max_bytes and self._with_data:
            prediction_id, _ = self._with_data.popitem(last=False)
            prediction = self._predictions[prediction_id]
            self.bytes -= prediction.kept_bytes
            prediction.remove_data()
        return self.bytes + cost <= self._max_bytes
