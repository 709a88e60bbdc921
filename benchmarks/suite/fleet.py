"""Fleets of `sleep` children: start-up until all have exec'd, idle cost, shutdown and survivors (workloads
startup, idle, shutdown; the other workloads start and stop their daemons with these too)."""

import time

import psutil

from benchmarks.harness.peers import System, make, sleep_programs
from benchmarks.harness.procs import alive_of, kill_all, raise_nofile, sched_ns
from benchmarks.harness.run import SLEEP_ARGV, BenchError
from benchmarks.suite.model import Ctx, cell, rotated

UP_TIMEOUT_S = 300.0
SURVIVOR_GRACE_S = 1.0


def wait_fleet(s: System, n: int) -> float:
    """Seconds from the daemon's Popen until it has n children that exec'd `sleep 100000` (psutil)."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        s.check_alive()
        if s.n_children() >= n:
            t_check = time.monotonic()
            if len(s.exec_children(SLEEP_ARGV)) >= n:
                # All n were exec'd when this scan began (within the scan's length: early, not late).
                return t_check - s.popen_mono
        if time.monotonic() > deadline:
            raise BenchError(f"{s.kind}: {n} sleep children not all up after {UP_TIMEOUT_S:g}s "
                             f"({s.n_children()} children)")
        time.sleep(0.005)


def sleep_fleet(ctx: Ctx, kind: str, name: str, n: int) -> System:
    raise_nofile(3 * n)
    return make(kind, ctx.bench, name, sleep_programs(n))


def survivors_after(kids: list[psutil.Process], t_exit: float) -> tuple[float, list[int]]:
    """Wait up to SURVIVOR_GRACE_S after t_exit for kids to go; (when the last went, survivors' pids, killed)."""
    left = alive_of(kids)
    while left and time.monotonic() < t_exit + SURVIVOR_GRACE_S:
        time.sleep(0.002)
        left = alive_of(left)
    t_gone = time.monotonic()
    return t_gone, kill_all(left)


def shutdown(s: System) -> tuple[float, list[int]]:
    """SIGTERM; (seconds until the daemon exited and all its descendants were gone, survivors' pids, killed)."""
    kids = s.daemon.record_children()  # recursive; psutil.Process remembers create_time: no pid-reuse mistakes
    t0 = time.monotonic()
    code = s.terminate()
    t_gone, left = survivors_after(kids, time.monotonic())
    if code is None:
        raise BenchError(f"{s.kind} did not exit within 120 s of SIGTERM (killed)")
    return t_gone - t0, left


def shutdown_all(ctx: Ctx, up: dict[str, System], workload: str, broken: set[str],
                 figure: str | None = None) -> None:
    """SIGTERM every daemon of `up` at once (nothing timed: these shutdowns are no figure) and count, per
    system, the descendants still alive 1 s after its daemon exited (into `figure` too, if given)."""
    kids = {k: s.daemon.record_children() for k, s in up.items() if s.alive()}
    for k in kids:
        up[k].send_term()
    for k in kids:
        with cell(ctx, workload, up[k].kind, broken, k):
            code = up[k].wait_exit()
            _, left = survivors_after(kids[k], time.monotonic())
            ctx.res.count_survivors(up[k].kind, len(left))
            if figure:
                ctx.res.add(figure, up[k].kind, len(left))
            if code is None:
                raise BenchError(f"{up[k].kind} did not exit within 120 s of SIGTERM (killed)")


# ------------------------------------------------------------------------- start-up, idle, shutdown


def phase_fleet(ctx: Ctx) -> None:
    """Start-up (N = 100), idle (all three up at once, last round), shutdown (N = 100)."""
    p, res = ctx.params, ctx.res
    res.figure("startup.100", "startup", "start-up: Popen -> 100 `sleep` children exec'd", "ms")
    res.figure("idle.cpu", "idle", f"idle: daemon CPU with 100 children ({p.idle_s:g} s window)", "% of a core")
    res.figure("idle.cpu_psutil", "idle", "idle: daemon CPU, psutil ticks (cross-check)", "% of a core",
               headline=False)
    res.figure("idle.rss", "idle", "idle: daemon RSS with 100 children", "MiB")
    res.figure("idle.uss", "idle", "idle: daemon USS with 100 children", "MiB")
    res.figure("idle.threads", "idle", "idle: daemon threads", "")
    res.figure("shutdown.100", "shutdown", "shutdown: SIGTERM -> daemon and 100 children gone", "ms")
    res.figure("shutdown.survivors", "shutdown", "shutdown: children alive 1 s after the daemon exited", "")
    broken: set[str] = set()
    for r in range(p.fleet_rounds):
        up: dict[str, System] = {}
        for kind in rotated([x for x in ctx.systems if x not in broken], r):
            with cell(ctx, "startup", kind, broken):
                s = sleep_fleet(ctx, kind, f"fleet100-{r}", 100)
                s.start()
                up[kind] = s
                res.add("startup.100", kind, wait_fleet(s, 100) * 1e3)
        if r == p.fleet_rounds - 1 and up:
            with cell(ctx, "idle", "all", broken):
                measure_idle(ctx, up)
        for kind in rotated(list(up), r):
            with cell(ctx, "shutdown", kind, broken):
                dt, left = shutdown(up[kind])
                res.add("shutdown.100", kind, dt * 1e3)
                res.add("shutdown.survivors", kind, len(left))
                res.count_survivors(kind, len(left))


def measure_idle(ctx: Ctx, up: dict[str, System]) -> None:
    p, res = ctx.params, ctx.res
    time.sleep(p.settle_s)
    procs = {k: psutil.Process(s.pid) for k, s in up.items()}
    before = {k: (pr.cpu_times(), sched_ns(pr.pid)) for k, pr in procs.items()}
    t0 = time.monotonic()
    time.sleep(p.idle_s)
    dt = time.monotonic() - t0
    for k, pr in procs.items():
        c0, s0 = before[k]
        c1, s1 = pr.cpu_times(), sched_ns(pr.pid)
        mem = pr.memory_full_info()
        res.add("idle.cpu", k, (s1 - s0) / 1e9 / dt * 100)
        res.add("idle.cpu_psutil", k, ((c1.user - c0.user) + (c1.system - c0.system)) / dt * 100)
        res.add("idle.rss", k, mem.rss / 2**20)
        res.add("idle.uss", k, mem.uss / 2**20)
        res.add("idle.threads", k, pr.num_threads())
        up[k].check_alive()
        if len(up[k].exec_children(SLEEP_ARGV)) != 100:
            raise BenchError(f"{k}: not 100 sleep children at the end of the idle window")
