"""The per-process families reuse each process's rendered lines between scrapes; the text must be exactly
what prometheus_client renders for the whole family at once (issue #18 item 3)."""

import random

from prometheus_client.parser import text_string_to_metric_families

from procguard.runtime import procfs
from procguard.observe.metrics import PROCESS_FAMILIES, PROCESS_LABELS, ProcessCollector, Row, render
from procguard.engine.states import ExitReason, ProcessState


def reference(rows: list[Row], usage: dict[int, procfs.TreeUsage]) -> bytes:
    """Every family built from every row and rendered in one call: no caching."""
    families = []
    for spec in PROCESS_FAMILIES:
        fam = spec.kind(spec.name, spec.doc, labels=[*PROCESS_LABELS, *spec.extra])
        for r in rows:
            for extra, value in spec.samples(spec.key(r, usage.get(r.pid) if r.pid is not None else None)):
                fam.add_metric([r.program, r.process, *extra], value)
        families.append(fam)
    return render(families)


def random_rows(rng: random.Random, n: int) -> tuple[list[Row], dict[int, procfs.TreeUsage]]:
    rows, usage = [], {}
    for i in range(n):
        pid = rng.choice([None, 1000 + i])
        state = ProcessState.RUNNING if pid else rng.choice(list(ProcessState))
        rows.append(Row(program=f"p{i % 3}", process=f'p{i % 3}:w"{i}\\n', state=state, pid=pid,
                        started_at=rng.choice([None, 1.7e9 + i]), healthy=rng.choice([None, 0.0, 1.0]),
                        health_check_s=rng.choice([None, 0.01 * i]), restarts=rng.randint(0, 2),
                        exits=tuple(rng.randint(0, 1) for _ in ExitReason),
                        output=(("stdout", rng.randint(0, 3), 0), ("stderr", 1, rng.randint(0, 1)))))
        if pid and rng.random() < 0.8:
            usage[pid] = procfs.TreeUsage(cpu_s=rng.choice([0.5, 1.25]), rss_bytes=rng.choice([4096, 8192]),
                                          fds=rng.choice([None, 3, 4]), pids=1)
    return rows, usage


def test_reused_lines_give_the_same_text_as_a_full_render_across_changes() -> None:
    rng = random.Random(18)
    collector = ProcessCollector()
    for n in (20, 20, 20, 7, 30, 0, 5):  # values change, processes come and go
        rows, usage = random_rows(rng, n)
        got = b"".join(collector(rows, usage))
        assert got == reference(rows, usage)
        # and the library's own parser reads it back
        names = {f.name for f in text_string_to_metric_families(got.decode())}
        assert "procguard_process_state" in names


def test_a_change_of_one_process_leaves_the_others_lines_as_they_were() -> None:
    rng = random.Random(7)
    rows, usage = random_rows(rng, 50)
    collector = ProcessCollector()
    first = collector(rows, usage)
    assert collector(rows, usage) == first  # nothing changed: every part reused
    rows[10] = rows[10]._replace(state=ProcessState.FATAL, pid=None)
    changed = collector(rows, usage)
    assert b"".join(changed) == reference(rows, usage)
    # The families process 10's change does not touch (restarts, exits, output, ...) are the same text.
    assert [a is b for a, b in zip(first, changed)].count(True) >= 4
    # Only a tree's usage changes; then a row changes in a way no family shows (below the start time's ms).
    pid = next(r.pid for r in rows if r.pid is not None and r.pid in usage)
    usage[pid] = usage[pid]._replace(cpu_s=usage[pid].cpu_s + 1)
    assert b"".join(collector(rows, usage)) == reference(rows, usage)
    i = next(i for i, r in enumerate(rows) if r.pid is not None and r.started_at is not None)
    rows[i] = rows[i]._replace(started_at=rows[i].started_at + 1e-5)
    assert b"".join(collector(rows, usage)) == reference(rows, usage)
