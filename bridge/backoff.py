"""Exponential backoff: the waits between tries of something that may work
a moment later (a backend not reachable yet, a webhook receiver down)."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["delays"]


def delays(first: float, most: float) -> Iterator[float]:
    """*first* seconds, then twice the wait before, up to *most*, forever."""
    delay = first
    while True:
        yield delay
        delay = min(2 * delay, most)
