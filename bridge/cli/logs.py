"""Logging: one line per event, as text or as JSON (``--log-format json``).

Events about a prediction carry its id (``prediction_id``) and, where known,
``model``, ``status`` and ``error`` as fields, so logs can be joined to
predictions and metrics.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from .. import strictjson

__all__ = ["FIELDS", "JsonFormatter", "setup_logging"]

#: ``extra`` fields that go into JSON lines when present.
FIELDS = ("prediction_id", "model", "status", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {f: getattr(record, f) for f in FIELDS if getattr(record, f, None) is not None}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return strictjson.dumps(line)


def setup_logging(log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # coredis says each reconnection attempt at INFO; the store says what
    # matters (Redis unreachable, writes retried) itself.
    logging.getLogger("coredis").setLevel(logging.WARNING)
