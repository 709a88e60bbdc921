"""The workloads of `python -m benchmarks`, each run on procguard, supervisord and circus, interleaved.

Every workload starts real daemons (harness/peers.py) on identical programs and records, per system, a list
of samples for each figure; __main__.py prints min / median / max and the procguard / peer ratio of
the medians. Nothing here asserts speed: a workload fails only if it cannot measure (a daemon that
does not start, a child that never appears, a CLI that errs), and the suite's exit status then says so.
Interleaved means: within a round every system takes its turn, and the order rotates from round to
round, so a burst of load from elsewhere on the machine lands on all of them alike.

1. respawn: one program whose child appends time.monotonic_ns() to a file as its first action, then
   sleeps. SIGKILL it; time until the replacement has exec'd (its argv shows in /proc, polled every
   0.5 ms) and until its first instruction (the stamp). Kills are spread evenly over one second of
   phase (0.05 + (i + 0.5) / k s after the previous replacement is up) so a periodic loop (circus's
   1 s check_delay) is sampled at every phase instead of always the same one. k = 12 (--quick: 3).
2. status: N programs of `sleep 100000`, all three daemons up at once; the CLI (`procguardctl -s E
   status`, `supervisorctl -c CONF status`, `circusctl --endpoint E status`) from Popen to exit (a
   pidfd, as bench_control.py), each run must exit 0 and print N lines; then the server side: one
   client in this process (peers.StatusProbe), requests 5 ms apart, each reply checked for N entries.
   At N = 50 and N = 1000 (--quick: 200). 10 CLI runs and 30 requests per system (--quick: 3 and 10).
   Every CLI run is also divided by a `python -c pass` of the same interpreter run just before it (the
   floor of any Python CLI: a ratio that holds on a loaded machine), and at N = 50 each CLI's `--help`
   is timed the same way (issue #17).
3. start-up: daemon Popen until psutil sees N children of the daemon that have exec'd `sleep 100000`.
   N = 100 (5 rounds) and N = 1000 (3 rounds; --quick: one round each, N = 100 and 200). One daemon
   at a time is starting; the others are idle or stopped.
4. idle: the three N = 100 daemons up at once, settled, then one window (30 s; --quick 3 s) over which
   each daemon's CPU is read from /proc/PID/task/*/schedstat (ns) and psutil (ticks); then RSS and USS.
5. shutdown: SIGTERM to a daemon with 100 children until it has exited and every child is gone;
   a child still alive 1 s after the daemon exited is a survivor (counted, then killed). Also timed
   with 1000 children (--full only). Every other daemon the suite stops (no figure) is stopped the
   same way, several at once, and its survivors are counted too.
6. output: bench_output.py's workload (one child, 64 KiB writes of 100-byte lines, FIFO start, the
   capture verified byte for byte) on procguard, supervisord and circus (and, --full, procguard with
   timestamps and the direct-to-file reference). 1 GiB per run, 3 rounds (--quick: 100 MiB, 2 rounds).
7. restart under load: gunicorn (2 sync workers, tests/servers/wsgi_app.py) on a loopback port; 4
   client threads, each one request per 10 ms (at most 400/s), a new connection per request, 5 s
   timeout; after `pre` seconds the CLI's restart, then until the new master answers plus `post`
   seconds (1 s and 1 s; --quick 0.3 s), 5 rounds (--quick 1), the configurations interleaved.
   Failed = refused, reset, timed out or not 200. Configurations: procguard with a held
   socket, procguard with gunicorn binding the port, supervisord (binds), circus with a held socket
   ([socket:web] + use_sockets) and circus with gunicorn binding the port.

Config choices that could favour a side are listed in harness/peers.py and RESULTS.md.
"""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from benchmarks import bench_output
from benchmarks.harness.load import Load, transition
from benchmarks.harness.peers import HELD_FD, PYTHON, VENV_BIN, Program, System, make, sleep_programs
from benchmarks.harness.procs import (
    STAMP_CHILD, alive_of, free_port, kill_and_respawned, kill_all, raise_nofile, sched_ns, stamps_in, wall_ms,
)
from benchmarks.harness.run import CHILD_PYTHON, REPO, SLEEP_ARGV, Bench, BenchError, poll_until

T = TypeVar("T")
GUNICORN = str(VENV_BIN / "gunicorn")
WSGI_DIR = str(REPO / "tests" / "servers")
UP_TIMEOUT_S = 300.0
SURVIVOR_GRACE_S = 1.0


@dataclass(frozen=True, kw_only=True)
class Params:
    respawn_samples: int
    fleet_rounds: int  # start-up / shutdown rounds at N = 100 (idle is measured in the last)
    big_n: int
    big_rounds: int
    time_big_shutdown: bool  # else the big fleets stop together, untimed (supervisord's can take 10 s)
    idle_s: float
    settle_s: float
    cli_runs: int
    server_samples: int
    output_bytes: int
    output_rounds: int
    output_sides: str
    restart_rounds: int
    load_pre_s: float
    load_post_s: float


QUICK = Params(respawn_samples=3, fleet_rounds=1, big_n=200, big_rounds=1, time_big_shutdown=False, idle_s=3.0,
               settle_s=1.0, cli_runs=3, server_samples=10, output_bytes=100 << 20, output_rounds=2,
               output_sides="ace", restart_rounds=1, load_pre_s=0.3, load_post_s=0.3)
FULL = Params(respawn_samples=12, fleet_rounds=5, big_n=1000, big_rounds=3, time_big_shutdown=True, idle_s=30.0,
              settle_s=2.0, cli_runs=10, server_samples=30, output_bytes=1 << 30, output_rounds=3,
              output_sides="abcde", restart_rounds=5, load_pre_s=1.0, load_post_s=1.0)
# The test suite's smoke run: every workload on every system, at sizes too small for the figures to mean much.
SMOKE = Params(respawn_samples=1, fleet_rounds=1, big_n=50, big_rounds=1, time_big_shutdown=False, idle_s=1.0,
               settle_s=0.5, cli_runs=1, server_samples=3, output_bytes=8 << 20, output_rounds=1,
               output_sides="ace", restart_rounds=1, load_pre_s=0.1, load_post_s=0.1)
MODES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


# ------------------------------------------------------------------------------------------ results


@dataclass
class Figure:
    key: str
    workload: str
    label: str
    unit: str
    higher_is_better: bool = False
    headline: bool = True  # in the summary table (others are printed with their workload only)
    values: dict[str, list[float]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    seq: int = 0  # declaration order, within its workload


@dataclass
class Results:
    systems: list[str]  # those that can run here
    missing: dict[str, str]  # system -> why it cannot
    figures: dict[str, Figure] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    lost_bytes: dict[str, int] = field(default_factory=dict)
    survivors: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def figure(self, key: str, workload: str, label: str, unit: str, **kw: Any) -> Figure:
        if key not in self.figures:
            f = self.figures[key] = Figure(key, workload, label, unit, seq=len(self.figures), **kw)
            f.na.update(self.missing)
        return self.figures[key]

    def ordered(self) -> list[Figure]:
        """Figures in workload order (WORKLOAD_PHASES), then in the order they were declared."""
        order = list(WORKLOAD_PHASES)
        return sorted(self.figures.values(), key=lambda f: (order.index(f.workload), f.seq))

    def add(self, key: str, system: str, value: float) -> None:
        self.figures[key].values.setdefault(system, []).append(float(value))

    def count_survivors(self, system: str, n: int) -> None:
        self.survivors[system] = self.survivors.get(system, 0) + n

    def count_lost(self, system: str, n: int) -> None:
        self.lost_bytes[system] = self.lost_bytes.get(system, 0) + n

    def fail(self, workload: str, system: str, error: str) -> None:
        self.failures.append({"workload": workload, "system": system, "error": error})
        print(f"  !! {workload} on {system} failed: {error}", flush=True)
        for f in self.figures.values():
            if f.workload == workload and system not in f.values:
                f.na.setdefault(system, "failed: " + error.splitlines()[0][:200])


@dataclass
class Ctx:
    bench: Bench
    params: Params
    res: Results
    mode: str = "full"  # a key of MODES

    @property
    def systems(self) -> list[str]:
        return self.res.systems


@contextmanager
def cell(ctx: Ctx, workload: str, system: str, broken: set[str], tag: str | None = None) -> Iterator[None]:
    """Run one system's share of a workload; a failure is recorded and `tag` (default: the system) is
    added to `broken`, which the workload skips from then on."""
    try:
        yield
    except BenchError as exc:
        broken.add(tag or system)
        ctx.res.fail(workload, system, str(exc))
    except Exception as exc:  # the harness's boundary: record, skip this system, go on with the others
        broken.add(tag or system)
        ctx.res.fail(workload, system, f"{type(exc).__name__}: {exc}")


def rotated(items: list[T], i: int) -> list[T]:
    if not items:
        return items
    i %= len(items)
    return items[i:] + items[:i]


# ---------------------------------------------------------------------------------------- helpers


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


def bare_python_ms(out: Path) -> float:
    """Wall time of `python -c pass` with the venv's interpreter, the one every CLI here runs on."""
    ms, code = wall_ms([PYTHON, "-c", "pass"], out)
    if code != 0:
        raise BenchError(f"`python -c pass` exited {code}")
    return ms


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
    floor_ms = bare_python_ms(out)
    if n == 50:
        res.add("cli.pass", "procguard", floor_ms)
        ms, code = wall_ms(s.ctl("--help"), out)
        if code != 0:
            raise BenchError(f"`{' '.join(s.ctl('--help'))}` exited {code}")
        res.add("cli.help", s.kind, ms)
        res.add("cli.help_x_pass", s.kind, ms / floor_ms)
        floor_ms = bare_python_ms(out)
    ms, code = wall_ms(s.ctl("status"), out)
    text = out.read_text(errors="replace")
    if code != 0 or len(text.splitlines()) != n:
        raise BenchError(f"`{' '.join(s.ctl('status'))}` exited {code} with "
                         f"{len(text.splitlines())} lines (expected 0 and {n}):\n{text[-1500:]}")
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


# ----------------------------------------------------------------------------------------- output


OUTPUT_SIDES = {"a": "procguard", "c": "supervisord", "e": "circus"}


def phase_output(ctx: Ctx) -> None:
    p, res = ctx.params, ctx.res
    res.figure("output.mibs", "output", "log throughput: one child's stdout to a file", "MiB/s", higher_is_better=True)
    res.figure("output.cpu", "output", "log capture: daemon CPU per GiB", "s/GiB")
    res.figure("output.lost", "output", "log capture: bytes lost (all runs)", "bytes")
    if "b" in p.output_sides:
        res.figure("output.mibs_ts", "output", "log throughput, procguard with timestamps", "MiB/s",
                   higher_is_better=True, headline=False)
    if "d" in p.output_sides:
        res.figure("output.mibs_direct", "output", "log throughput, child writing the file itself (no daemon)",
                   "MiB/s", higher_is_better=True, headline=False)
    keys = "".join(k for k in p.output_sides if OUTPUT_SIDES.get(k, "procguard") in ctx.systems)
    try:
        out = bench_output.run_sides(ctx.bench, p.output_bytes, p.output_rounds, keys,
                                     mode=ctx.mode)
    except BenchError as exc:
        ctx.res.fail("output", "all", str(exc))
        return
    res.raw["output"] = out
    for key, runs in out["runs"].items():
        system = OUTPUT_SIDES.get(key)
        for run in runs:
            if run["mib_per_s"] is not None:
                fig = {"b": "output.mibs_ts", "d": "output.mibs_direct"}.get(key, "output.mibs")
                res.add(fig, system or "procguard", run["mib_per_s"])
            if system and run["daemon_cpu_s_per_gib"] is not None:
                res.add("output.cpu", system, run["daemon_cpu_s_per_gib"])
        lost = sum(int(r["bytes_lost"]) for r in runs) + sum(0 if r["content_ok"] else 1 for r in runs
                                                             if r["bytes_lost"] == 0)
        if system:
            res.add("output.lost", system, lost)
            res.count_lost(system, lost)
        elif key == "b":
            res.count_lost("procguard", lost)
        incomplete = [r["round"] for r in runs if not r["complete"]]
        if incomplete and system:
            res.notes.append(f"output: {system}'s capture never reached full size in rounds {incomplete}")


# ------------------------------------------------------------------------------------------ restart


@dataclass
class Web:
    label: str
    kind: str
    held: bool
    port: int
    system: System | None = None


def gunicorn_master(s: System) -> int | None:
    for c in s.children():
        try:
            if GUNICORN in c.cmdline():
                return c.pid
        except psutil.Error:
            pass
    return None


def phase_restart(ctx: Ctx) -> None:
    p, res = ctx.params, ctx.res
    declare_restart_figures(res)
    webs = [Web(f"{kind} ({'held socket' if held else 'gunicorn binds'})", kind, held, free_port())
            for kind, held in (("procguard", True), ("procguard", False), ("supervisord", False), ("circus", True),
                               ("circus", False))
            if kind in ctx.systems]
    broken: set[str] = set()
    raw: dict[str, list[dict[str, Any]]] = {w.label: [] for w in webs}
    ctx.res.raw["restart"] = raw
    for w in webs:
        with cell(ctx, "restart", w.kind, broken, w.label):
            bind = f"fd://{HELD_FD}" if w.held else f"127.0.0.1:{w.port}"
            work = ctx.bench.root / f"web-{w.kind}-{'held' if w.held else 'bind'}"
            work.mkdir()
            argv = (GUNICORN, "--bind", bind, "--workers", "2", "--graceful-timeout", "5", "--chdir", WSGI_DIR,
                    "--no-control-socket", "--worker-tmp-dir", str(work), "wsgi_app:application")
            prog = Program(name="web", argv=argv, held_socket="web" if w.held else None, server="gunicorn",
                           stopwaitsecs=10.0)
            w.system = make(w.kind, ctx.bench, f"web-{'held' if w.held else 'bind'}", [prog],
                            {"web": w.port} if w.held else None)
            w.system.start()
    for w in webs:
        if w.label in broken or w.system is None:
            continue
        with cell(ctx, "restart", w.kind, broken, w.label):
            s = w.system
            poll_until(lambda: s.serving(w.port), 120, f"{w.label}: gunicorn answering", interval_s=0.05)
            s.wait_control()
            s.record_cmdlines()
    suffix = {True: "held", False: "bind"}
    for r in range(p.restart_rounds):
        for w in rotated(webs, r):
            if w.label in broken or w.system is None:
                continue
            with cell(ctx, "restart", w.kind, broken, w.label):
                one = restart_once(ctx, w)
                raw[w.label].append(one)
                res.add(f"restart.failed_{suffix[w.held]}", w.kind, one["failed"])
                res.add(f"restart.cli_{suffix[w.held]}", w.kind, one["cli_ms"])
                res.add(f"restart.maxlat_{suffix[w.held]}", w.kind, one["slowest_request_ms"])
                print(f"  restart {r + 1} {w.label:<30} failed {one['failed']:>4} of {one['requests']:>5} "
                      f"({', '.join(f'{k} {v}' for k, v in one['errors'].items()) or 'no errors'}); "
                      f"command {one['cli_ms']:.0f} ms; slowest request {one['slowest_request_ms']:.0f} ms", flush=True)
    shutdown_all(ctx, {w.label: w.system for w in webs if w.system is not None}, "restart", broken,
                 figure="restart.survivors")


def declare_restart_figures(res: Results) -> None:
    res.figure("restart.failed_held", "restart", "restart under load: failed requests, held socket", "requests")
    res.figure("restart.failed_bind", "restart", "restart under load: failed requests, gunicorn binds the port",
               "requests")
    res.figure("restart.cli_held", "restart", "restart command wall time, held socket", "ms", headline=False)
    res.figure("restart.cli_bind", "restart", "restart command wall time, gunicorn binds", "ms", headline=False)
    res.figure("restart.maxlat_held", "restart", "slowest request across a restart, held socket", "ms",
               headline=False)
    res.figure("restart.maxlat_bind", "restart", "slowest request across a restart, gunicorn binds", "ms",
               headline=False)
    res.figure("restart.survivors", "restart", "gunicorn processes alive 1 s after the daemon exited", "",
               headline=False)
    no_held = "supervisord has no held socket for a [program] ([fcgi-program] closes it when its last process stops)"
    res.figures["restart.failed_held"].na.setdefault("supervisord", no_held)
    res.figures["restart.cli_held"].na.setdefault("supervisord", no_held)
    res.figures["restart.maxlat_held"].na.setdefault("supervisord", no_held)


def restart_once(ctx: Ctx, w: Web) -> dict[str, Any]:
    p = ctx.params
    s = w.system
    assert s is not None
    old = gunicorn_master(s)
    with Load(w.port, body_prefix=b"worker ") as load:
        poll_until(lambda: load.ok_done_after(load.started) >= 5 and time.monotonic() - load.started >= p.load_pre_s,
                   30, f"{w.label}: requests before the restart", interval_s=0.01)
        t0 = time.monotonic()
        s.run_ctl("restart", "web")
        t_cli = time.monotonic()
        new = poll_until(lambda: (lambda m: m if m is not None and m != old else None)(gunicorn_master(s)), 60,
                         f"{w.label}: a new gunicorn master", interval_s=0.01)
        s.record_cmdlines()
        poll_until(lambda: load.ok_done_after(t_cli) >= 5 and time.monotonic() - t_cli >= p.load_post_s, 60,
                   f"{w.label}: requests after the restart", interval_s=0.01)
    fails = [h.sent for h in load.hits if not h.ok]
    return transition(load.hits, t0, t_cli, t_cli) | {
        "old_master": old, "new_master": new, "failing_window_ms": (max(fails) - min(fails)) * 1e3 if fails else 0.0}


PHASES: dict[str, Callable[[Ctx], None]] = {
    "respawn": phase_respawn,
    "fleet": phase_fleet,
    "status": phase_status,
    "output": phase_output,
    "restart": phase_restart,
}
# --only takes a workload's name; some workloads share a phase (their daemons).
WORKLOAD_PHASES = {
    "respawn": ("respawn",),
    "status": ("status",),
    "startup": ("fleet", "status"),
    "idle": ("fleet",),
    "shutdown": ("fleet", "status"),  # 1000 children: the status phase's big fleets (--full)
    "output": ("output",),
    "restart": ("restart",),
}

__all__ = ["FULL", "MODES", "PHASES", "QUICK", "SMOKE", "WORKLOAD_PHASES", "Ctx", "Figure", "Params", "Results"]
