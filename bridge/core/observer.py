"""What the core tells whoever watches it (the metrics) about predictions."""

from __future__ import annotations

from .predictions import Prediction

__all__ = ["Observer"]


class Observer:
    """What the bridge tells its metrics about predictions (no-ops here)."""

    def admitted(self, prediction: Prediction, waited: float) -> None:
        """*prediction* got a slot after *waited* seconds in the queue."""

    def output(self, prediction: Prediction, chunks: int, gap: float | None) -> None:
        """*chunks* arrived, *gap* seconds after the previous ones (None: first)."""

    def finished(self, prediction: Prediction) -> None:
        """*prediction*'s task has ended; its status is final."""
