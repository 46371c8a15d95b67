"""Prometheus metrics, one registry per bridge (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .predictions import Prediction
from .service import Bridge

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The bridge's gauges and counters, read at scrape time where possible."""

    def __init__(self, bridge: Bridge) -> None:
        self.registry = CollectorRegistry()
        Gauge(
            "bridge_predictions_active",
            "Predictions running or waiting for a slot.",
            registry=self.registry,
        ).set_function(lambda: bridge.active)
        Gauge(
            "bridge_predictions_queued",
            "Predictions waiting for a slot.",
            registry=self.registry,
        ).set_function(lambda: bridge.admission.queued)
        Gauge(
            "bridge_grpc_calls_active",
            "Predict calls open on the gRPC loop thread.",
            registry=self.registry,
        ).set_function(lambda: bridge.grpc.active_calls)
        self.stream_clients = Gauge(
            "bridge_stream_clients_active", "Open SSE streams.", registry=self.registry
        )
        self.predictions_total = Counter(
            "bridge_predictions",
            "Predictions ended, by model and final status.",
            ["model", "status"],
            registry=self.registry,
        )
        bridge.on_finish = self.finished

    def finished(self, prediction: Prediction) -> None:
        self.predictions_total.labels(prediction.model, str(prediction.status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
