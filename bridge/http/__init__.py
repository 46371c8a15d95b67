"""The HTTP side: the Quart-Trio app (:func:`create_app`), its blueprints
(Replicate's predictions, models and deployments; operations), the header
parsers, the stream reader and the OpenAPI document."""

from .app import create_app

__all__ = ["create_app"]
