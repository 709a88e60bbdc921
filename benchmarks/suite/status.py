"""Workload status: the status CLI (against a bare interpreter start) and the server side, at 50 and big_n
programs; the start-up and shutdown samples of big_n fleets."""

import time

from benchmarks.harness.peers import PYTHON, System
from benchmarks.harness.procs import cli_ms
from benchmarks.harness.run import BenchError
from benchmarks.suite.fleet import shutdown, shutdown_all, sleep_fleet, wait_fleet
from benchmarks.suite.model import Ctx, cell, rotated


# ----------------------------------------------------------------------------------------- status


def phase_status(ctx: Ctx) -> None:
    """Status (CLI and server side) at 50 and big_n programs; start-up and shutdown at big_n."""
    p, res = ctx.params, ctx.res
    big = p.big_n
    declare_status_figures(ctx)
    broken: set[str] = set()
    for n in dict.fromkeys((50, big)):  # once where big_n is 50 (--smoke)
        up: dict[str, System] = {}
        for kind in [x for x in ctx.systems if x not in broken]:
            with cell(ctx, "status", kind, broken):
                s = sleep_fleet(ctx, kind, f"status{n}", n)
                s.start()
                up[kind] = s
                if n == big:  # a start-up sample: one daemon starting at a time
                    res.add(f"startup.{big}", kind, wait_fleet(s, n) * 1e3)
        for kind, s in up.items():
            with cell(ctx, "status", kind, broken):
                wait_fleet(s, n)
                s.wait_control()
        for r in range(p.cli_runs):
            for kind in rotated([x for x in up if x not in broken], r):
                with cell(ctx, "status", kind, broken):
                    time_status_cli(ctx, up[kind], n)
        time_status_server(ctx, up, n, broken)
        if n != big or not p.time_big_shutdown:
            shutdown_all(ctx, up, "status", broken)
            continue
        for kind, s in up.items():
            with cell(ctx, "shutdown", kind, broken):
                dt, left = shutdown(s)
                res.add(f"shutdown.{big}", kind, dt * 1e3)
                res.count_survivors(kind, len(left))
    for r in range(1, p.big_rounds):
        for kind in rotated([x for x in ctx.systems if x not in broken], r):
            with cell(ctx, "startup", kind, broken):
                s = sleep_fleet(ctx, kind, f"start{big}-{r}", big)
                s.start()
                res.add(f"startup.{big}", kind, wait_fleet(s, big) * 1e3)
                dt, left = shutdown(s)
                res.add(f"shutdown.{big}", kind, dt * 1e3)
                res.count_survivors(kind, len(left))


def declare_status_figures(ctx: Ctx) -> None:
    res, big = ctx.res, ctx.params.big_n
    res.figure("cli.pass", "status", "bare interpreter start: `python -c pass` wall time (the CLIs' floor)", "ms",
               headline=False)
    res.figures["cli.pass"].na.update({k: "the same interpreter for every CLI: see procguard's column"
                                       for k in ctx.systems if k != "procguard"})
    res.figure("cli.help", "status", "`--help` CLI wall time", "ms", headline=False)
    res.figure("cli.help_x_pass", "status", "`--help` CLI wall / `python -c pass`", "x")
    for n in dict.fromkeys((50, big)):  # once where big_n is 50 (--smoke)
        res.figure(f"status.cli.{n}", "status", f"status CLI wall time, {n} programs", "ms")
        res.figure(f"status.cli_x_pass.{n}", "status", f"status CLI wall / `python -c pass`, {n} programs", "x")
        res.figure(f"status.server.{n}", "status", f"status server side, {n} processes", "ms", headline=(n == big))
    res.figure(f"startup.{big}", "startup", f"start-up: Popen -> {big} `sleep` children exec'd", "ms")
    res.figure(f"shutdown.{big}", "shutdown", f"shutdown: SIGTERM -> daemon and {big} children gone", "ms",
               headline=False)


def time_status_cli(ctx: Ctx, s: System, n: int) -> None:
    """One `status` CLI sample (and at n = 50 one `--help`), each set against a bare start of the same
    interpreter taken just before it, so the ratio holds on a loaded machine where absolute times drift."""
    res, out = ctx.res, ctx.bench.root / "status.out"
    bare_python = [PYTHON, "-c", "pass"]  # the venv's interpreter, the one every CLI here runs on
    floor_ms = cli_ms(bare_python, out)
    if n == 50:
        res.add("cli.pass", "procguard", floor_ms)
        ms = cli_ms(s.ctl("--help"), out)
        res.add("cli.help", s.kind, ms)
        res.add("cli.help_x_pass", s.kind, ms / floor_ms)
        floor_ms = cli_ms(bare_python, out)
    ms = cli_ms(s.ctl("status"), out, expect_lines=n)
    res.add(f"status.cli.{n}", s.kind, ms)
    res.add(f"status.cli_x_pass.{n}", s.kind, ms / floor_ms)


def time_status_server(ctx: Ctx, up: dict[str, System], n: int, broken: set[str]) -> None:
    """server_samples status round trips per system, 5 ms apart, interleaved, one client each (StatusProbe)."""
    probes = {}
    try:
        for kind in [x for x in up if x not in broken]:
            with cell(ctx, "status", kind, broken):
                probes[kind] = up[kind].status_probe()
                probes[kind].status()  # warm-up: connect (and, for procguard, the ZAP handshake)
        for j in range(ctx.params.server_samples):
            for kind in rotated([x for x in probes if x not in broken], j):
                with cell(ctx, "status", kind, broken):
                    time.sleep(0.005)
                    reply = probes[kind].status()
                    if reply.count != n:
                        raise BenchError(f"status reply listed {reply.count} processes, expected {n}")
                    ctx.res.add(f"status.server.{n}", kind, reply.ms)
    finally:
        for pr in probes.values():
            pr.close()
