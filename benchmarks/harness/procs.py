"""Processes as the kernel shows them: /proc reads, CPU counters, child commands timed to their exit."""

import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.run import POLL_S, REPO, BenchError
from procguard.testing import free_port as free_port  # re-exported: the benchmarks' one free port

HAVE_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
CLI_TIMEOUT_S = 120.0


def child_pids(pid: int) -> set[int]:
    """Direct children of pid. /proc/PID/task/TID/children is per thread, and the daemon forks in threads."""
    if not HAVE_CHILDREN_FILE:
        try:
            return {c.pid for c in psutil.Process(pid).children()}
        except psutil.NoSuchProcess:
            return set()
    out: set[int] = set()
    for tid in tids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


def kill_and_respawned(parent: int, old: int, argv: list[str], timeout_s: float = 10.0) -> tuple[int, int, int, int]:
    """SIGKILL `old`, a child of `parent`; poll /proc every POLL_S until a new child has exec'd argv.

    Returns (the kill, the new pid, when a new child was first seen, when its argv showed), times from
    time.monotonic_ns() (so each carries up to POLL_S of polling error); BenchError after timeout_s."""
    t0 = time.monotonic_ns()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    forked: dict[int, int] = {}
    while True:
        now = time.monotonic_ns()
        for c in child_pids(parent) - {old}:
            forked.setdefault(c, now)
            if cmdline(c) == argv:
                return t0, c, min(forked.values()), time.monotonic_ns()
        if time.monotonic() > deadline:
            raise BenchError(f"no replacement exec'd within {timeout_s:g} s of killing {old}; new children {forked}")
        time.sleep(POLL_S)


def tids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except FileNotFoundError:
        return set()


def _threads_sum(pid: int, name: str, count: Callable[[str], int]) -> int:
    """The sum of count(text of /proc/pid/task/TID/name) over every live thread of pid."""
    total = 0
    for tid in tids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                total += count(f.read())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def sched_ns(pid: int) -> int:
    """CPU time of every live thread of pid in ns (sched_info, first field of schedstat)."""
    return _threads_sum(pid, "schedstat", lambda text: int(text.split()[0]))


def ctx_switches(pid: int) -> int:
    """Context switches of every live thread of pid (psutil's figure is the main thread's only)."""
    return _threads_sum(pid, "status", lambda text: sum(
        int(line.split()[1]) for line in text.splitlines()
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"))))


def idle_cost(pid: int, window_s: float, settle_s: float = 2.0) -> dict[str, Any]:
    """pid's CPU (psutil ticks and schedstat ns), context switches and memory over window_s after settle_s."""
    time.sleep(settle_s)
    p = psutil.Process(pid)
    c0, s0, x0, t0 = p.cpu_times(), sched_ns(pid), p.num_ctx_switches(), time.monotonic()
    time.sleep(window_s)
    c1, s1, x1, t1 = p.cpu_times(), sched_ns(pid), p.num_ctx_switches(), time.monotonic()
    mem = p.memory_full_info()
    dt = t1 - t0
    return {
        "window_s": dt,
        "cpu_pct_psutil": ((c1.user - c0.user) + (c1.system - c0.system)) / dt * 100,
        "cpu_pct_schedstat": (s1 - s0) / 1e9 / dt * 100,
        "cpu_tick_resolution_pct": 1 / os.sysconf("SC_CLK_TCK") / dt * 100,
        "ctx_switches": (x1.voluntary - x0.voluntary) + (x1.involuntary - x0.involuntary),
        "rss_mib": mem.rss / 2**20,
        "uss_mib": mem.uss / 2**20,
        "threads": p.num_threads(),
        "fds": p.num_fds(),
    }


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def alive_of(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of procs still running (not zombies); psutil.Process remembers create_time: no pid reuse."""
    out = []
    for k in procs:
        try:
            if k.is_running() and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_all(procs: list[psutil.Process]) -> list[int]:
    """SIGKILL procs and wait for them (5 s); return their pids."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)
    return [p.pid for p in procs]


def wait_exit(proc: "subprocess.Popen[Any]", timeout_s: float) -> int | None:
    """proc's exit code once it exited; None if it still runs after timeout_s.

    Not proc.wait(timeout): with a timeout it polls with sleeps of up to 50 ms, which would show in the
    figures. A pidfd becomes readable at the exit (pidfd_open(2)), then wait() reaps at once.
    """
    pidfd = os.pidfd_open(proc.pid)
    try:
        exited = bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)
    return proc.wait() if exited else None


def clean_env() -> dict[str, str]:
    """This environment without PROCGUARD_* and CIRCUS* (-s wins anyway) and without colour; procguardctl
    imports procguard from this checkout, as the daemon does (cwd = the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCGUARD_", "CIRCUS"))}
    env["NO_COLOR"] = "1"
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    if str(REPO) not in paths:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), *paths]))
    return env


def wall_ms(argv: list[str], out: Path, timeout_s: float = CLI_TIMEOUT_S) -> tuple[float, int]:
    """Run argv with stdout to `out`; return (ms from Popen to exit, exit code). Never leaves it running."""
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=clean_env(),
                             cwd="/")
        try:
            code = wait_exit(p, timeout_s)
            dt = (time.perf_counter() - t0) * 1e3
            if code is None:
                raise BenchError(f"{' '.join(argv)} still running after {timeout_s:g}s")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return dt, code


def cli_ms(argv: list[str], out: Path, expect_lines: int | None = None, timeout_s: float = CLI_TIMEOUT_S) -> float:
    """wall_ms of a CLI that must exit 0 (and print expect_lines lines, if given), else BenchError."""
    ms, code = wall_ms(argv, out, timeout_s)
    text = out.read_text(errors="replace")
    if code != 0 or (expect_lines is not None and len(text.splitlines()) != expect_lines):
        raise BenchError(f"`{' '.join(argv)}` exited {code} with {len(text.splitlines())} lines (expected 0"
                         f"{'' if expect_lines is None else f' and {expect_lines}'}):\n{text[-2000:]}")
    return ms


def run_ctl(argv: list[str], what: str, ok_codes: tuple[int, ...] = (0,), timeout_s: float = CLI_TIMEOUT_S) -> str:
    """Run a control CLI; its stdout and stderr, or BenchError if it failed or did not answer."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, env=clean_env(),
                           cwd="/")
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no answer within {timeout_s}s: {argv}") from None
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    if p.returncode not in ok_codes:
        raise BenchError(f"{what}: {argv} exited {p.returncode}: {out.strip()[-2000:]}")
    return out


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (procguard.testing.free_port: below the ephemeral range)."""
    out: set[int] = set()
    while len(out) < n:
        out.add(free_port())
    return sorted(out)


# A child whose first action appends the monotonic clock (system-wide, comparable across processes) to the
# file named by its argument, then idles: run as `CHILD_PYTHON -S -c STAMP_CHILD FILE`.
STAMP_CHILD = ("import sys,time\nf=open(sys.argv[1],'a');f.write('%d\\n'%time.monotonic_ns());f.close()\n"
               "time.sleep(1e6)\n")


def stamps_in(path: Path) -> list[int]:
    """The stamps STAMP_CHILD children appended to path so far."""
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def naming(text: str, started_wall: float) -> list[psutil.Process]:
    """Processes started since started_wall (time.time()) with `text` in an argument: what a run left behind."""
    out = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if (p.info["create_time"] >= started_wall - 1 and any(text in a for a in p.info["cmdline"] or [])
                    and p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out
