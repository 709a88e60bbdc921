"""`benchmarks/bench_servers.py --smoke --only gunicorn` measures every figure and leaves no server behind.

Speed and failed requests are never asserted (DESIGN.md, "Tests"): the script prints them; this test
only checks that it ran, that every measurement has its figures as numbers (counts as integers >= 0),
and that no server process outlived a daemon it started. --smoke measures every figure of --quick once
with 10 requests around each action (--quick: 40, and 400 before a deploy or restart) and SIGKILLs
without waiting for backoff_reset, so the suite stays fast (issue #15).
"""

import json
from pathlib import Path

import pytest

from tests.bench_smoke import run_bench
from procguard.testing.demo import why_missing

pytestmark = pytest.mark.skipif(why_missing("gunicorn") is not None, reason=str(why_missing("gunicorn")))

LOAD_FIGURES = ("cli_ms", "gap_ms", "steady_gap_ms", "transition_ms", "slowest_request_ms", "steady_p50_ms", "steady_p99_ms",
                "across_p50_ms", "across_p99_ms")
SIGKILL_FIGURES = ("first_200_ms", "running_ms", "max_gap_ms", "recovered_ms")


def is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_quick_gunicorn_run_has_every_figure_and_no_survivors(tmp_path: Path) -> None:
    out = tmp_path / "servers.json"
    # The deploy, broken-release, SIGKILL-under-load and peer rounds of issue #16 are most of the run.
    r = run_bench("benchmarks/bench_servers.py", "--smoke", "--only", "gunicorn", "--json", str(out))
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["harness_errors"] == {}
    assert list(doc["servers"]) == ["gunicorn"]
    g = doc["servers"]["gunicorn"]
    peers = [g["peers"][kind] for kind in ("supervisord", "circus")]
    for key, s in (*((k, g[k]) for k in ("restart_held", "restart_own_bind", "reload_app", "deploy", "deploy_broken",
                                          "sigkill_load")), ("supervisord", peers[0]), ("circus", peers[1])):
        rounds = s["rounds"]
        assert len(rounds) == doc["rounds"] == 1, (key, rounds)
        for row in rounds:
            assert is_count(row["failed"]) and is_count(row["requests"]), (key, row)
            assert all(is_number(row[f]) for f in LOAD_FIGURES), (key, row)
        assert is_count(s["failed"]["median"]) and is_count(s["failed"]["max"]), (key, s["failed"])
    # A deploy replaced the master; a broken release's did not; a SIGKILLed master was replaced.
    assert all(r["new_pid"] != r["old_pid"] for k in ("deploy", "sigkill_load") for r in g[k]["rounds"]), g
    assert all(r["new_pid"] == r["old_pid"] for r in g["deploy_broken"]["rounds"]), g["deploy_broken"]
    memory = g["memory"]
    assert all(is_number(memory[k]) and memory[k] > 0 for k in ("rss_mib", "pss_mib", "peak_rss_mib")), memory
    for row in g["sigkill"]["rounds"]:
        assert is_count(row["failed"]) and is_count(row["probes"]), row
        assert all(is_number(row[f]) for f in SIGKILL_FIGURES), row
        assert row["new_pid"] != row["old_pid"], row  # the master really was replaced
    assert len(g["sigkill"]["rounds"]) == 1
    assert g["survivors"] == {"held": [], "own_bind": []}
    assert doc["survivors_total"] == 0
    assert doc["cleanup_killed"] == []
    assert "summary" in r.stdout and "not measured here" in r.stdout
    assert "gunicorn under supervisord: restart" in r.stdout and "gunicorn: deploy of a broken release" in r.stdout
