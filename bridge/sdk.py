"""The model SDK's public names: serve a model over bridge.v1 in a few lines.

See :mod:`bridge.backends.sdk` for how it works.
"""

from .backends.sdk import Log, Metrics, Model, ModelServer, Predictor, serve, serve_async

__all__ = ["Log", "Metrics", "Model", "ModelServer", "Predictor", "serve", "serve_async"]
