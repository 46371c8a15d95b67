"""Every key the store writes, under ``[store] key_prefix``::

seq              INCR: the creation order of every prediction
p:<id>           its record (JSON): status, times, metrics, who runs it
in:<id>          its input (JSON)
log:<id>         its events: a Stream, one entry per span written
all              sorted set: every id by creation order (listing)
own:<owner>      the same, per owner (with auth on: a token's SHA-256)
owners           hash: the owner of each ended prediction (for trimming)
ended, kept      sorted sets by completion time: the ended ones, and
                 those with their data (the count bounds)
cmd:<process>    a process's commands: cancel, and wake-ups of its reader
processes        every process, and lease:<process> (expires unless
                 refreshed) and running:<process> (its running ids):
                 the predictions of a process whose lease lapsed are
                 failed by a survivor (``[store] lease_seconds``);
                 reaping:<process> names the survivor doing it
"""

from __future__ import annotations

import os
import secrets
import socket

__all__ = ["Keys", "process_name"]


def process_name() -> str:
    """A bridge process as Redis knows it: host, pid, and a random part
    (a new one after it lost its lease)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class Keys:
    """The names of a store's keys, under its *prefix*."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seq = prefix + "seq"
        self.all = prefix + "all"
        self.owners = prefix + "owners"
        self.ended = prefix + "ended"
        self.kept = prefix + "kept"
        self.processes = prefix + "processes"

    def record(self, prediction_id: str) -> str:
        return f"{self.prefix}p:{prediction_id}"

    def input(self, prediction_id: str) -> str:
        return f"{self.prefix}in:{prediction_id}"

    def log(self, prediction_id: str) -> str:
        return f"{self.prefix}log:{prediction_id}"

    def owned(self, owner: str) -> str:
        return f"{self.prefix}own:{owner}"

    def commands(self, process: str) -> str:
        return f"{self.prefix}cmd:{process}"

    def lease(self, process: str) -> str:
        return f"{self.prefix}lease:{process}"

    def running(self, process: str) -> str:
        return f"{self.prefix}running:{process}"

    def reaping(self, process: str) -> str:
        return f"{self.prefix}reaping:{process}"

    def data(self, prediction_id: str) -> list[str]:
        """What expires with a prediction's data: its input and events."""
        return [self.input(prediction_id), self.log(prediction_id)]

    def written(self, prediction_id: str) -> tuple[str, str, str]:
        """A running prediction's keys its writes touch, in the order the
        WRITE script takes them (:func:`.scripts.write_keys`): log, record,
        input."""
        return self.log(prediction_id), self.record(prediction_id), self.input(prediction_id)

    def end(self, prediction_id: str, process: str) -> list[str]:
        """The keys a prediction's end touches, in the order the scripts'
        ``ended`` takes them (:mod:`.scripts`)."""
        return [
            self.record(prediction_id), self.input(prediction_id), self.log(prediction_id),
            self.ended, self.kept, self.running(process), self.owners,
        ]  # fmt: skip
