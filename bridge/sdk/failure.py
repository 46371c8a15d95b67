"""What a model's exception becomes: the whole traceback in the model's
process log, the model's part of it in the prediction's logs (bounded),
and a short error for its user.

The error is the last line Python prints for the exception
(``KeyError: 'temperature'``), except for a ``RuntimeError`` or a plain
``Exception`` with a message: that message is a sentence the model's
author wrote for users, and stays as written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import traceback
from pathlib import Path

from ..backends import wire
from .outbox import Outbox

__all__ = ["MAX_TRACEBACK_LINES", "error_message", "fail", "traceback_lines"]

log = logging.getLogger("bridge.sdk")

#: The most lines of a traceback a prediction's logs get (its last ones),
#: and the longest line.
MAX_TRACEBACK_LINES = 60
MAX_LINE = 500

#: Frames of these files and directories are the SDK's and the event
#: loop's, not the model's: the prediction's logs leave them out.
_NOT_THE_MODEL = (
    *(str(Path(__file__).with_name(name)) for name in ("servicer.py", "outbox.py", "batch.py")),
    str(Path(asyncio.__file__).parent),
    str(Path(concurrent.futures.__file__).parent),
)


def error_message(error: BaseException) -> str:
    """The short error of a prediction that failed with *error*."""
    if type(error) in (RuntimeError, Exception) and str(error):
        return str(error)
    return "".join(traceback.format_exception_only(error)).strip()


def traceback_lines(error: BaseException) -> list[str]:
    """*error*'s traceback through the model's own frames, at most
    :data:`MAX_TRACEBACK_LINES` lines of at most :data:`MAX_LINE` characters."""
    frames = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(_NOT_THE_MODEL)
    ]
    text = "".join(traceback.format_list(frames) + traceback.format_exception_only(error))
    lines = ["Traceback (most recent call last):", *text.rstrip("\n").split("\n")]
    if len(lines) > MAX_TRACEBACK_LINES:
        lines = [lines[0], "  ...", *lines[-(MAX_TRACEBACK_LINES - 2) :]]
    return [line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..." for line in lines]


def fail(prediction_id: str, error: BaseException, outbox: Outbox, *, logged: bool = False) -> None:
    """Prediction *prediction_id* failed with the model's *error* (on the
    loop): logged here whole (unless *logged* already), its traceback in
    the prediction's logs, then its end."""
    if not logged:
        log.error("prediction %s failed", prediction_id, exc_info=error)
    if not outbox.ended:
        for line in traceback_lines(error):
            outbox.put_nowait(wire.LogLine(line))
    outbox.end(error)
