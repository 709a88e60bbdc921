"""`python -m benchmarks --smoke` completes every workload, loses no byte, leaves no child behind (issue #9).

Speed is never asserted (DESIGN.md, "Tests"): the suite prints figures; this test only checks that it
ran every workload on procguard and on both peers and set each peer's ratio, that procguard lost no
captured byte and no child outlived a procguard daemon, and that the suite's exit status says so.
--smoke runs the same workloads as --quick at the smallest sizes (8 MiB of output in one round, status
and start-up at 50 programs instead of 200, one sample or round each), so the suite stays fast (issue #15).
"""

import json
import sys
from pathlib import Path

import pytest

from tests.bench_smoke import run_bench

VENV_BIN = Path(sys.executable).parent
NEEDED = {
    "supervisord": VENV_BIN / "supervisord",
    "circusd": VENV_BIN / "circusd",
    "gunicorn": VENV_BIN / "gunicorn",
}
MISSING = [name for name, path in NEEDED.items() if not path.exists()]
WORKLOADS = ("respawn", "status", "startup", "idle", "shutdown", "output", "restart")

pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"{', '.join(MISSING)} not installed in this venv: .venv/bin/python -m pip install -e '.[bench,test]'",
)


def test_quick_suite_completes_every_workload_without_lost_bytes_or_survivors(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # The suite cleans up after itself (every daemon and child it started), also when run_bench's hang guard
    # stops it.
    r = run_bench("-m", "benchmarks", "--smoke", "--json", str(out))
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["failures"] == [], doc["failures"]
    assert doc["lost_bytes"]["procguard"] == 0, doc["lost_bytes"]
    assert doc["survivors"]["procguard"] == 0, doc["survivors"]
    assert doc["leaked"] == []
    # Every workload measured on all three systems (the peers' counts are reported, never gated).
    assert set(doc["lost_bytes"]) == set(doc["survivors"]) == {"procguard", "supervisord", "circus"}
    for workload in WORKLOADS:
        figures = [f for f in doc["figures"].values() if f["workload"] == workload]
        measured = {s for f in figures for s, v in f["values"].items() if v}
        assert measured == {"procguard", "supervisord", "circus"}, (workload, measured)
        # ... and set against each peer: a ratio of the medians (printed beside the peer's row).
        for peer in ("supervisord", "circus"):
            assert any(f["ratio"][peer] is not None for f in figures), (workload, peer, figures)
    assert "procguard/supervisord" in r.stdout and "procguard/circus" in r.stdout and "summary: medians" in r.stdout
