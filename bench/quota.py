"""CPU quotas for the bench's worker rows: each bridge process in a cgroup
of its own with a fixed share of a core, so that scaling over workers can be
measured on a machine with fewer cores than workers (these have 2).

cgroup v1's ``cpu`` controller does it, as root: a group is a directory
under ``/sys/fs/cgroup/cpu``; ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``
is the share of one core its processes may use (3000 of 10000: 30%);
writing a PID to ``cgroup.procs`` moves that process, every thread of it,
into the group. By hand::

    mkdir /sys/fs/cgroup/cpu/bridge-0
    echo 10000 > /sys/fs/cgroup/cpu/bridge-0/cpu.cfs_period_us
    echo 3000 > /sys/fs/cgroup/cpu/bridge-0/cpu.cfs_quota_us
    echo $PID > /sys/fs/cgroup/cpu/bridge-0/cgroup.procs

On cgroup v2 the same is ``cpu.max`` (``3000 10000``) in a group under
``/sys/fs/cgroup``; systemd's ``systemd-run --scope -p CPUQuota=30%`` makes
one. The backend and the readers stay outside any group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/cpu")
#: The quota's period: 10 ms, not the default 100, so that a process over
#: its share waits at most 7 ms at 30%, not 70 (a wait the paced streams'
#: gap p99 would count as the bridge's).
PERIOD_US = 10_000


def unavailable() -> str | None:
    """Why quotas cannot be set here, or None."""
    if not (ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {ROOT}"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable (run as root)"
    return None


class Quotas:
    """Groups of one share each, made on demand, removed on close."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._groups: list[Path] = []
        self._names = itertools.count()

    def hold(self, pid: int) -> None:
        """Move *pid* (all its threads) into a new group of its own."""
        group = ROOT / f"bench-{os.getpid()}-{next(self._names)}"
        group.mkdir()
        self._groups.append(group)
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(PERIOD_US * self.share)))
        (group / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the groups' processes were held back, all together."""
        total = 0
        for group in self._groups:
            for line in (group / "cpu.stat").read_text().splitlines():
                name, value = line.split()
                total += int(value) if name == "throttled_time" else 0
        return total / 1e9

    def close(self) -> None:
        """Move any process left back to the root group, then remove the groups."""
        for group in reversed(self._groups):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # it exited meanwhile
                    (ROOT / "cgroup.procs").write_text(pid)
            group.rmdir()
        self._groups.clear()


@contextlib.contextmanager
def quotas(share: float) -> Iterator[Quotas]:
    held = Quotas(share)
    try:
        yield held
    finally:
        held.close()
