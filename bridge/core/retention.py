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

Time and count bound both, in two steps, as on Replicate: an ended
prediction's data is let go of after ``retention_seconds`` or past
``retention_count`` ended predictions with data (it stays gettable and
listable with ``data_removed: true``); its metadata is forgotten after
``metadata_retention_seconds`` or past ``metadata_retention_count`` ended
predictions (then it is 404). Both windows count from completion.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

from ..errors import OutputTooLarge, Overloaded
from .events import EVENT_COST
from .predictions import Prediction, clock

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
        metadata_seconds: float,
        metadata_count: int,
    ) -> None:
        self._predictions = predictions
        self._max_bytes = max_bytes
        self._seconds = seconds
        self._count = count
        self._metadata_seconds = metadata_seconds
        self._metadata_count = metadata_count
        #: Bytes kept for every prediction's data together.
        self.bytes = 0
        # Ended predictions, in the order they ended, with when they ended:
        # all of them, and those whose data is still kept.
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._with_data: collections.OrderedDict[str, float] = collections.OrderedDict()

    def admit(self, prediction: Prediction) -> None:
        """Count a new prediction's input; raises :class:`Overloaded` if it
        does not fit even once every ended prediction's data is gone."""
        if not self._make_room(prediction.kept_bytes):
            raise Overloaded(
                "the bridge holds as much prediction data as it may "
                "(max_retained_bytes); retry later"
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

    def forget(self, prediction: Prediction) -> None:
        """Stop counting *prediction*, which this process no longer keeps
        (a shared store keeps it now)."""
        self.bytes -= prediction.kept_bytes

    def ended(self, prediction: Prediction) -> None:
        """*prediction* has ended: its data may go first when room is needed."""
        ended_at = prediction.completed_clock or clock()
        self._ended[prediction.id] = ended_at
        self._with_data[prediction.id] = ended_at
        self.prune()

    def prune(self) -> None:
        """Let go of the data of ended predictions past the data window or
        count, and forget those past the metadata window or count."""
        now = clock()
        for prediction_id in _expired(self._with_data, self._count, now - self._seconds):
            self._remove_data(prediction_id)
        for prediction_id in _expired(
            self._ended, self._metadata_count, now - self._metadata_seconds
        ):
            if self._with_data.pop(prediction_id, None) is not None:
                self._remove_data(prediction_id)
            del self._predictions[prediction_id]

    def _remove_data(self, prediction_id: str) -> None:
        prediction = self._predictions[prediction_id]
        self.bytes -= prediction.kept_bytes
        prediction.remove_data()

    def _make_room(self, cost: int) -> bool:
        """Remove the data of the earliest ended predictions until *cost*
        more bytes fit; False if they cannot."""
        while self.bytes + cost > self._max_bytes and self._with_data:
            self._remove_data(self._with_data.popitem(last=False)[0])
        return self.bytes + cost <= self._max_bytes


def _expired(
    ended: collections.OrderedDict[str, float], count: int, horizon: float
) -> Iterator[str]:
    """Take the ids out of *ended* (oldest first) while there are more than
    *count* or the oldest ended before *horizon*."""
    while ended and (len(ended) > count or next(iter(ended.values())) < horizon):
        yield ended.popitem(last=False)[0]
