"""``make bench`` still runs: a seconds-long smoke run of it, end to end.

No timing is asserted (speed is measured by ``make bench``, never by a
test); what is checked is that every phase ran against real processes and
every stream came through whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backends import ENV

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.mark.timeout(250)  # about 55 s; more on a busy machine
def test_bench_smoke_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) >= {"one_stream", "streams_100", "first_token", "cancel_ms", "memory"}
    assert set(results["one_stream"]["chunks_per_s"]) == {"direct", "bridge", "bridge_get", "peer"}
    for server in ("bridge", "bridge_get", "peer"):
        assert results["streams_100"][server]["not_whole"] == 0, results["streams_100"]
    assert all(results["capacity"][server]["tried"] for server in ("bridge", "peer"))
    assert results["cancel_ms"]["p99"] is not None
    assert results["memory"]["rss_per_retained_chunk_bytes"] > 0
    shared = results["shared"]
    for row in ("memory", "redis_same", "redis_other", "workers_2"):
        assert shared[row]["not_whole"] == 0, shared
    assert shared["redis_vs_memory"] >= 0
    assert len(results["batch"]["stream"]["cpu_us_samples"]) == 1  # one turn in a smoke run
    scaling = results["scaling"]
    if "skipped" not in scaling:  # as root with cgroup v1's cpu controller, as here
        for row in ("memory_1", "redis_1", "redis_2", "redis_3"):
            assert scaling[row]["tried"], scaling
    table = (tmp_path / "results.md").read_text()
    assert "| one stream, 2,000 chunks" in table and "| target |" in table
    assert "capacity under 30% of a core per bridge process" in table or "not measured" in table
    assert "created on one bridge, read on another" in table
    assert "the Redis path, unloaded: CPU per paced chunk ≤ 1.15x in memory" in table
    assert table in done.stdout
