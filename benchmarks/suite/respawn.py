"""Workload respawn: SIGKILL a child, time until its replacement has exec'd and run its first instruction."""

import time
from pathlib import Path

from benchmarks.harness.peers import Program, System, make
from benchmarks.harness.procs import STAMP_CHILD, kill_and_respawned, stamps_in
from benchmarks.harness.run import CHILD_PYTHON, BenchError, poll_until
from benchmarks.suite.fleet import shutdown_all
from benchmarks.suite.model import Ctx, cell, rotated


# ---------------------------------------------------------------------------------------- respawn


def phase_respawn(ctx: Ctx) -> None:
    res, k = ctx.res, ctx.params.respawn_samples
    res.figure("respawn.exec", "respawn", "respawn: SIGKILL -> replacement exec'd", "ms")
    res.figure("respawn.first", "respawn", "respawn: SIGKILL -> replacement's first instruction", "ms")
    script = ctx.bench.root / "stamp.py"
    script.write_text(STAMP_CHILD)
    broken: set[str] = set()
    live: dict[str, tuple[System, Path, list[str]]] = {}
    pids: dict[str, int] = {}
    for kind in ctx.systems:
        with cell(ctx, "respawn", kind, broken):
            stamps = ctx.bench.root / f"respawn-{kind}.stamps"
            argv = [CHILD_PYTHON, "-S", str(script), str(stamps)]
            # backoff_reset = 0: see harness/peers.py (procguard otherwise backs off a child that ran < 10 s).
            s = make(kind, ctx.bench, "respawn", [Program(name="respawn", argv=tuple(argv), stopwaitsecs=2.0,
                                                          procguard_keys={"backoff_reset": "0"})])
            s.start()
            live[kind] = (s, stamps, argv)
    for kind, (s, stamps, argv) in live.items():
        with cell(ctx, "respawn", kind, broken):
            pids[kind] = poll_until(lambda: [c.pid for c in s.exec_children(argv)], 60, f"{kind}: respawn child")[0]
            poll_until(lambda: stamps_in(stamps), 10, f"{kind}: first stamp")
    for i in range(k):
        delay = 0.05 + (i + 0.5) / k
        for kind in rotated([x for x in live if x not in broken], i):
            s, stamps, argv = live[kind]
            with cell(ctx, "respawn", kind, broken):
                time.sleep(delay)
                n = len(stamps_in(stamps))
                old = pids[kind]
                try:
                    t0, new, _, t_exec = kill_and_respawned(s.pid, old, argv)
                except BenchError:
                    s.check_alive()  # a daemon that died says so
                    raise
                ctx.bench.child_pids_seen.add(new)
                first = poll_until(lambda: stamps_in(stamps)[n:], 10, "the replacement's stamp")[0]
                res.add("respawn.exec", kind, (t_exec - t0) / 1e6)
                res.add("respawn.first", kind, (first - t0) / 1e6)
                pids[kind] = new
    shutdown_all(ctx, {kind: s for kind, (s, _, _) in live.items()}, "respawn", broken)
