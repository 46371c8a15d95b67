"""Logging: one line per event, as text or as JSON (``--log-format json``).

Events about a prediction carry its id (``prediction_id``) and, where known,
``model``, ``status`` and ``error`` as fields, so logs can be joined to
predictions and metrics.

A line's text often carries what a backend or a client said (a model's
name, an error's message, a URL). In text, every control character and
line break in it is escaped (``\\n``, ``\\x1b``, ``\\u2028``), so none can
start a line of its own or drive a terminal; a traceback keeps its lines,
indented (an exception's message may hold line feeds), and its other
control characters are escaped. JSON escapes them itself.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from .. import strictjson

__all__ = ["FIELDS", "JsonFormatter", "TextFormatter", "setup_logging"]

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


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph
#: separators: what could end a line or move a terminal's cursor.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LINE_FEED = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match[0].encode("unicode_escape").decode()


class TextFormatter(logging.Formatter):
    """``<time> <level> <logger>: <message>``, one line whatever the
    message holds; a traceback follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROLS.sub(_escaped, super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        # Indented: no line of it (an exception's message may hold line
        # feeds) can pass for a line of the log's own.
        text = _CONTROLS_BUT_LINE_FEED.sub(_escaped, super().formatException(ei))
        return "\n".join(f"  {line}" for line in text.split("\n"))


def setup_logging(log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # coredis says each reconnection attempt at INFO; the store says what
    # matters (Redis unreachable, writes retried) itself.
    logging.getLogger("coredis").setLevel(logging.WARNING)
