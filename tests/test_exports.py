"""The public names, pinned: changing them is an API change."""

import bridge
import bridge.sdk


def test_bridge_exports() -> None:
    assert sorted(bridge.__all__) == [
        "BackendProtocolError", "BackendTimeout", "BackendUnavailable", "BadRequest",
        "BridgeError", "ConfigError", "InvalidInput", "ModelError", "ModelSettings",
        "NotFound", "PredictionError", "Settings", "serve",
    ]  # fmt: skip
    assert all(hasattr(bridge, name) for name in bridge.__all__)


def test_sdk_exports() -> None:
    assert sorted(bridge.sdk.__all__) == [
        "BatchPredictor", "Emit", "Field", "Log", "Metrics", "Model", "ModelServer", "Predictor",
        "ServerTLS", "SetupFailed", "serve", "serve_async",
    ]  # fmt: skip
    assert all(hasattr(bridge.sdk, name) for name in bridge.sdk.__all__)
