"""deploy/grafana-procguard.json queries only metrics the daemon exposes (issue #18 item 3)."""

import json
import re
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from procguard.observe.metrics import PROCESS_FAMILIES, DaemonFacts, daemon_families

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-procguard.json"


def exposed() -> set[str]:
    names = {s.name + ("_total" if s.kind is CounterMetricFamily else "") for s in PROCESS_FAMILIES}
    facts = DaemonFacts(cpu_s=0.0, rss_bytes=0, threads=1, loop_lag_s=0.0, started_at=0.0, requests=(),
                        last_scrape_s=None)
    for fam in daemon_families([], facts):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    return names


def test_every_query_of_the_dashboard_names_an_exposed_metric() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(exprs) > 15
    used = {m for e in exprs for m in re.findall(r"procguard_\w+", e)}
    assert used - exposed() == set()
    # Every per-process family shows up somewhere (pid is for scripts and top, not for a graph).
    assert {s.name for s in PROCESS_FAMILIES} - {u.removesuffix("_total") for u in used} == {"procguard_process_pid"}
