"""Prometheus metrics, one registry per bridge (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .core.observer import Observer
from .core.predictions import Prediction
from .core.service import Bridge

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

#: Latency buckets from a millisecond to two minutes.
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics(Observer):
    """The bridge's metrics; gauges are read at scrape time."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.stream_clients = Gauge("bridge_stream_clients_active", "Open SSE streams.", registry=r)
        self.predictions_total = Counter(
            "bridge_predictions",
            "Predictions ended, by model and final status.",
            ["model", "status"],
            registry=r,
        )
        self.tokens_total = Counter(
            "bridge_tokens", "Output chunks streamed, by model.", ["model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "bridge_time_to_first_token_seconds",
            "From start to the first output chunk.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.inter_token = Histogram(
            "bridge_inter_token_seconds",
            "Between output chunks: one observation per batch of chunks that arrived "
            "together, the gap before it divided by its size.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.duration = Histogram(
            "bridge_prediction_duration_seconds",
            "From start to end, by final status.",
            ["model", "status"],
            buckets=_SECONDS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "bridge_queue_wait_seconds",
            "From create to a running slot.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        # labels() takes a lock and a lookup; output() runs once per batch of
        # tokens, so it uses each model's children, found once.
        self._per_model: dict[str, tuple[Counter, Histogram]] = {}

    def admitted(self, prediction: Prediction, waited: float) -> None:
        self.queue_wait.labels(prediction.model).observe(waited)

    def output(self, prediction: Prediction, chunks: int, gap: float | None) -> None:
        children = self._per_model.get(prediction.model)
        if children is None:
            children = self._per_model[prediction.model] = (
                self.tokens_total.labels(prediction.model),
                self.inter_token.labels(prediction.model),
            )
        tokens, inter = children
        tokens.inc(chunks)
        if gap is None:
            started, first_output = prediction.started_clock, prediction.first_output_clock
            if started is not None and first_output is not None:
                first = first_output - started
                self.time_to_first_token.labels(prediction.model).observe(first)
            return
        # One observation per batch (per chunk would cost a histogram update
        # per token): the gap before the batch, shared by its chunks.
        inter.observe(gap / chunks)

    def finished(self, prediction: Prediction) -> None:
        status = str(prediction.status)
        self.predictions_total.labels(prediction.model, status).inc()
        if prediction.started_clock is not None and prediction.completed_clock is not None:
            self.duration.labels(prediction.model, status).observe(
                prediction.completed_clock - prediction.started_clock
            )

    def watch(self, bridge: Bridge) -> None:
        """Gauges read from *bridge* (which this observes) at scrape time."""
        r = self.registry
        Gauge(
            "bridge_predictions_active", "Predictions running or waiting for a slot.", registry=r
        ).set_function(lambda: bridge.active)
        Gauge(
            "bridge_predictions_queued", "Predictions waiting for a slot.", registry=r
        ).set_function(lambda: bridge.admission.queued)
        Gauge(
            "bridge_grpc_calls_active", "gRPC calls open (Predict, Describe, health).", registry=r
        ).set_function(lambda: bridge.backend.active_calls)

    def render(self) -> bytes:
        return generate_latest(self.registry)
