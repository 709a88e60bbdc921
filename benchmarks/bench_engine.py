"""Engine benchmarks against a real daemon: respawn latency, start-up, idle cost, shutdown.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--json OUT]

Every figure comes from a real `python -m procguard` started as a subprocess on a config this script
writes into a temp directory, with real children. The script prints figures (min / median / max) next
to the targets of the issue; it never asserts speed (DESIGN.md, "Tests"). It exits non-zero only when
the harness itself fails (a daemon that does not start, a child that never shows up).

What is measured, and how:

1. Respawn: SIGKILL of a RUNNING child (startsecs = 0, backoff_reset = 0, so no backoff) until the
   replacement is (a) visible as a new child of the daemon, (b) exec'd (its /proc cmdline is the
   program's), (c) running its first Python instruction, which appends time.monotonic_ns() to a file.
   (c) includes the child's own interpreter start-up, so the same child is also timed started plainly
   by this script (the baseline) for the reader to subtract. (a) and (b) are found by polling /proc
   every 0.5 ms, so they carry up to ~0.5 ms of polling error (and the cost of the poll itself).
2. Start-up: N programs of `sleep 100000` (startsecs = 0, output to NONE) from the daemon's Popen until
   the log has N `process_state_changed new=RUNNING` AND psutil sees N exec'd `sleep` children.
3. Idle: with 100 idle children, the daemon's CPU over a window (psutil's tick-resolution times and
   the scheduler's ns-resolution /proc/PID/task/*/schedstat), context switches, RSS and USS.
4. Shutdown: SIGTERM with the children up; time until the daemon exited; children still alive after.

Cleanup: every daemon and every child pid seen (log events and /proc scans) is recorded; in `finally`
(also on Ctrl-C or SIGTERM) daemons get SIGTERM, then SIGKILL, and any recorded child that still runs
one of this script's commands is killed. The temp directory is removed.
"""

import argparse
import compileall
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO = Path(__file__).resolve().parent.parent
# The real interpreter, not a shim or the venv's symlink: the child must start as fast as Python can.
CHILD_PYTHON = os.path.realpath(sys.executable)
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
SLEEP_ARGV = [SLEEP, "100000"]
# First action: append the monotonic clock (system-wide, comparable across processes), then idle.
CHILD_CODE = "import sys,time\nf=open(sys.argv[1],'a');f.write('%d\\n'%time.monotonic_ns());f.close()\ntime.sleep(1e6)"
POLL_S = 0.0005
TARGETS = {
    "respawn_median_ms": 10.0,
    "start_100_s": 0.300,
    "start_1000_s": 3.0,
    "idle_cpu_pct": 0.02,
    "idle_rss_mib": 26.0,
    "shutdown_survivors": 0,
}
HAVE_CHILDREN_FILE = os.path.exists(f"/proc/self/task/{os.getpid()}/children")

T = TypeVar("T")


def installed_bytecode() -> None:
    """Run procguard from compiled bytecode, as an installed package (and supervisor, circus) runs.

    supervisor's and circus's modules sit compiled in site-packages; this checkout is an editable
    install, and under PYTHONDONTWRITEBYTECODE=1 (set on this machine) every daemon and CLI start
    recompiled each procguard module: +2.2 MiB of daemon RSS and most of procguard.config.model's import
    time (issue #17). Compile once into __pycache__ (ignored by git) and let children use it.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for pkg in ("procguard", "procguardctl"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)


class BenchError(Exception):
    """The harness could not measure (not a slow daemon: that is only ever printed)."""


class Interrupted(BaseException):
    """SIGTERM to this script: unwind through every `finally` like Ctrl-C does."""


def poll_until(pred: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = POLL_S) -> T:
    """Poll `pred` until truthy; raise BenchError with the last value seen after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = pred()
    while not last:
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")
        time.sleep(interval_s)
        last = pred()
    return last


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt_row(label: str, values: list[float], unit: str, scale: float = 1.0, digits: int = 2) -> str:
    s = summary(values)
    return (f"  {label:<46} min {s['min'] * scale:>8.{digits}f}  median {s['median'] * scale:>8.{digits}f}"
            f"  max {s['max'] * scale:>8.{digits}f} {unit}  (n={s['n']})")


def parse_ts(event: dict[str, Any]) -> float:
    """The daemon's TimeStamper(fmt="iso", utc=False) stamp as time.time() seconds."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


# ------------------------------------------------------------------------------------------- /proc


def child_pids(pid: int) -> set[int]:
    """Direct children of pid. /proc/PID/task/TID/children is per thread, and the daemon forks in threads."""
    if not HAVE_CHILDREN_FILE:
        try:
            return {c.pid for c in psutil.Process(pid).children()}
        except psutil.NoSuchProcess:
            return set()
    out: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
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


def sched_ns(pid: int) -> int:
    """CPU time of every live thread of pid in ns (sched_info, first field of schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


# ------------------------------------------------------------------------------------------ daemon


class LogTail:
    """Incremental reader of the daemon's JSON log: only complete new lines are parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if not line.strip():
                continue
            try:
                new.append(json.loads(line))
            except json.JSONDecodeError:
                self.bad_lines.append(line.decode(errors="replace"))
        self.events.extend(new)
        return new

    def find(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    @property
    def size(self) -> int:
        return self._offset


class Bench:
    """Owns the temp directory, every daemon started and every child pid seen; `close` cleans all up."""

    def __init__(self) -> None:
        self.started_wall = time.time()
        self.root = Path(tempfile.mkdtemp(prefix="procguard-bench-"))
        self.daemons: list["Daemon"] = []
        self.child_pids_seen: set[int] = set()
        self.known_cmdlines: list[list[str]] = [SLEEP_ARGV]
        self.plain_children: list[subprocess.Popen[bytes]] = []

    def daemon(self, name: str, programs_toml: str, log_level: str = "info") -> "Daemon":
        d = Daemon(self, self.root / name, programs_toml, log_level)
        self.daemons.append(d)
        return d

    def close(self) -> list[int]:
        """Stop every daemon (TERM, then KILL), kill recorded children still alive; return those killed."""
        for d in self.daemons:
            d.record_children()
            d.kill()
        for p in self.plain_children:
            if p.poll() is None:
                p.kill()
                p.wait()
        killed = []
        for pid in sorted(self.child_pids_seen):
            try:
                proc = psutil.Process(pid)
                # Ours only: started after this script, running one of its commands (pid reuse is ruled out).
                if (proc.create_time() >= self.started_wall - 1 and proc.cmdline() in self.known_cmdlines
                        and proc.status() != psutil.STATUS_ZOMBIE):
                    proc.kill()
                    killed.append(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return killed


class Daemon:
    """One real `python -m procguard` on a config written into its own directory."""

    def __init__(self, bench: Bench, work: Path, programs_toml: str, log_level: str) -> None:
        self.bench = bench
        self.work = work
        work.mkdir(parents=True)
        self.config = work / "procguard.toml"
        self.config.write_text(f'[procguard]\nlogdir = "{work}/logs"\nloglevel = "{log_level}"\n\n{programs_toml}')
        self.logfile = work / "daemon.log"
        self.log_level = log_level
        self.tail = LogTail(self.logfile)
        self.proc: subprocess.Popen[bytes] | None = None
        self.popen_mono = self.popen_wall = 0.0
        self.stopping = False  # set before we signal it, so its exit is not reported as a crash

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with open(self.logfile, "ab") as log:
            self.popen_wall = time.time()
            self.popen_mono = time.monotonic()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "procguard", "-c", str(self.config), "--log-format", "json",
                 "--log-level", self.log_level],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(REPO),
            )

    def poll_log(self) -> list[dict[str, Any]]:
        new = self.tail.poll()
        for e in new:
            if e.get("event") == "process_spawned" and isinstance(e.get("pid"), int):
                self.bench.child_pids_seen.add(e["pid"])
        if self.proc is not None and self.proc.poll() is not None and not self.stopping:
            raise BenchError(f"daemon exited with {self.proc.returncode}; log tail:\n{self.log_text()[-3000:]}")
        return new

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_event(self, name: str, timeout_s: float = 10.0, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.poll_log()
            hits = self.tail.find(name, **match)
            return hits[-1] if hits else None

        return poll_until(found, timeout_s, f"{name} {match}")

    def record_children(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.bench.child_pids_seen.update(k.pid for k in kids)
        return kids

    def kill(self) -> None:
        """Cleanup path: SIGTERM, wait, SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.stopping = True
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def programs_toml(n: int, argv: list[str], **keys: str | int) -> str:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    cmd = json.dumps(argv)
    return "".join(
        f'[program.p{i:04d}]\ncommand = {cmd}\nstartsecs = 0\nstdout_logfile = "NONE"\nstderr_logfile = "NONE"\n{extra}\n'
        for i in range(n)
    )


# ----------------------------------------------------------------------------------------- respawn


def lines_in(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


def bench_respawn(bench: Bench, samples: int) -> dict[str, Any]:
    stamps = bench.root / "respawn-stamps"
    argv = [CHILD_PYTHON, "-S", "-c", CHILD_CODE, str(stamps)]
    bench.known_cmdlines.append(argv)
    d = bench.daemon("respawn", f"""[program.respawn]
command = {json.dumps(argv)}
startsecs = 0
backoff_reset = "0"
autorestart = true
stdout_logfile = "NONE"
stderr_logfile = "NONE"
stopwaitsecs = "2s"
""")
    d.start()
    pid = d.wait_event("process_state_changed", process="respawn", new="RUNNING")["pid"]
    poll_until(lambda: len(lines_in(stamps)) >= 1, 10, "first respawn child's stamp")

    rows: dict[str, list[float]] = {k: [] for k in (
        "kill_to_forked_ms", "kill_to_exec_ms", "kill_to_first_instruction_ms", "kill_to_running_logged_ms",
        "kill_to_exited_logged_ms", "exited_to_spawned_logged_ms")}
    for _ in range(samples):
        time.sleep(0.05)  # let the previous round's logging and Popen bookkeeping finish
        n_stamps = len(lines_in(stamps))
        n_events = len(d.tail.events)
        t0_ns, t0_wall = time.monotonic_ns(), time.time()
        os.kill(pid, signal.SIGKILL)
        new_pid: int | None = None
        t_fork = t_exec = None
        deadline = time.monotonic() + 10
        while t_exec is None:
            now = time.monotonic_ns()
            if new_pid is None:
                fresh = child_pids(d.pid) - {pid}
                if fresh:
                    new_pid = min(fresh)
                    t_fork = now
            if new_pid is not None and cmdline(new_pid) == argv:
                t_exec = time.monotonic_ns()
            if time.monotonic() > deadline:
                raise BenchError(f"no replacement exec'd within 10s of killing {pid}; new pid {new_pid}")
            time.sleep(POLL_S)
        assert t_fork is not None and new_pid is not None
        bench.child_pids_seen.add(new_pid)
        first = poll_until(lambda: lines_in(stamps)[n_stamps:], 10, "replacement's stamp")[0]
        running = d.wait_event("process_state_changed", process="respawn", new="RUNNING", pid=new_pid)
        window = d.tail.events[n_events:]
        exited = next(e for e in window if e.get("event") == "process_state_changed" and e.get("new") == "EXITED")
        spawned = next(e for e in window if e.get("event") == "process_spawned" and e.get("pid") == new_pid)
        rows["kill_to_forked_ms"].append((t_fork - t0_ns) / 1e6)
        rows["kill_to_exec_ms"].append((t_exec - t0_ns) / 1e6)
        rows["kill_to_first_instruction_ms"].append((first - t0_ns) / 1e6)
        rows["kill_to_running_logged_ms"].append((parse_ts(running) - t0_wall) * 1e3)
        rows["kill_to_exited_logged_ms"].append((parse_ts(exited) - t0_wall) * 1e3)
        rows["exited_to_spawned_logged_ms"].append((parse_ts(spawned) - parse_ts(exited)) * 1e3)
        pid = new_pid

    # Baseline: the same child started plainly from this (Python) process, as the daemon's Popen does.
    base_stamps = bench.root / "baseline-stamps"
    base_argv = [CHILD_PYTHON, "-S", "-c", CHILD_CODE, str(base_stamps)]
    bench.known_cmdlines.append(base_argv)
    baseline: list[float] = []
    for _ in range(samples):
        n = len(lines_in(base_stamps))
        t0_ns = time.monotonic_ns()
        p = subprocess.Popen(base_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True, process_group=0,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        bench.plain_children.append(p)
        first = poll_until(lambda: lines_in(base_stamps)[n:], 10, "baseline child's stamp")[0]
        baseline.append((first - t0_ns) / 1e6)
        p.kill()
        p.wait()
        time.sleep(0.02)
    rows["baseline_popen_to_first_instruction_ms"] = baseline

    d.poll_log()
    spawns = len(d.tail.find("process_spawned"))
    out: dict[str, Any] = {k: summary(v) for k, v in rows.items()}
    out["samples"] = rows
    out["log_bytes_per_respawn"] = d.tail.size / max(1, spawns)
    out["log_lines_per_respawn"] = len(d.tail.events) / max(1, spawns)
    d.kill()
    return out


def print_respawn(r: dict[str, Any]) -> None:
    s = r["samples"]
    print("respawn (SIGKILL a RUNNING child; startsecs = 0, backoff_reset = 0):")
    print(fmt_row("kill -> replacement forked (seen in /proc)", s["kill_to_forked_ms"], "ms"))
    print(fmt_row("kill -> replacement exec'd (cmdline in /proc)", s["kill_to_exec_ms"], "ms"))
    print(fmt_row("kill -> child's first instruction", s["kill_to_first_instruction_ms"], "ms"))
    print(fmt_row("baseline: plain Popen -> first instruction", s["baseline_popen_to_first_instruction_ms"], "ms"))
    net = statistics.median(s["kill_to_first_instruction_ms"]) - statistics.median(s["baseline_popen_to_first_instruction_ms"])
    print(f"  {'first instruction minus baseline (medians)':<46} {net:.2f} ms")
    print("  daemon-side, from its log timestamps:")
    print(fmt_row("  kill -> EXITED logged (reap)", s["kill_to_exited_logged_ms"], "ms"))
    print(fmt_row("  EXITED logged -> process_spawned logged", s["exited_to_spawned_logged_ms"], "ms"))
    print(fmt_row("  kill -> RUNNING logged", s["kill_to_running_logged_ms"], "ms"))
    print(f"  log volume: {r['log_lines_per_respawn']:.1f} lines, {r['log_bytes_per_respawn']:.0f} bytes per respawn")


# ---------------------------------------------------------------------------------- start-up etc.


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def sleep_children(d: Daemon) -> list[psutil.Process]:
    """Children of the daemon that have exec'd `sleep 100000` (psutil, independent of the log)."""
    out = []
    for c in d.record_children():
        try:
            if c.cmdline() == SLEEP_ARGV and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def bench_startup(bench: Bench, n: int, run: int, log_level: str = "info") -> tuple[dict[str, Any], Daemon]:
    """Start a daemon with n sleep programs; time until all are RUNNING (log) and exec'd (psutil)."""
    raise_nofile(n)
    d = bench.daemon(f"start-{n}-{log_level}-{run}", programs_toml(n, SLEEP_ARGV), log_level)
    d.start()
    deadline = d.popen_mono + 300
    running: set[str] = set()
    t_log: float | None = None
    t_done: float | None = None
    checks = 0
    while t_done is None:
        if time.monotonic() > deadline:
            raise BenchError(f"{n} programs not all up after 300s: {len(running)} RUNNING in the log")
        if log_level == "info":
            for e in d.poll_log():
                if e.get("event") == "process_state_changed" and e.get("new") == "RUNNING":
                    running.add(e["process"])
            if len(running) >= n and t_log is None:
                t_log = time.monotonic()
            ready = t_log is not None
        else:
            # No RUNNING lines below info: count children cheaply, then confirm with psutil.
            d.poll_log()
            ready = len(child_pids(d.pid)) >= n
        if ready:
            checks += 1
            t_check = time.monotonic()
            if len(sleep_children(d)) >= n:
                # Each RUNNING line follows its Popen's return, i.e. the exec: if psutil confirms at the
                # first look, all were up when the log said so.
                # Otherwise take the start of the successful scan (early by at most the scan's length).
                t_done = t_log if (checks == 1 and t_log is not None) else t_check
                break
        time.sleep(0.002)
    cpu = psutil.Process(d.pid).cpu_times()
    d.poll_log()
    started = d.tail.find("daemon_started")
    spawned = d.tail.find("process_spawned")
    out: dict[str, Any] = {
        "n": n,
        "log_level": log_level,
        "wall_s": t_done - d.popen_mono,
        "log_all_running_s": (t_log - d.popen_mono) if t_log is not None else None,
        "psutil_checks": checks,
        "daemon_cpu_s": cpu.user + cpu.system,  # its whole life so far, interpreter start-up included
        "log_bytes": d.tail.size,
        "log_lines": len(d.tail.events),
    }
    if started:
        out["popen_to_daemon_started_s"] = parse_ts(started[0]) - d.popen_wall
    if started and spawned:
        out["daemon_started_to_first_spawn_s"] = parse_ts(spawned[0]) - parse_ts(started[0])
        out["first_to_last_spawn_s"] = parse_ts(spawned[-1]) - parse_ts(spawned[0])
    return out, d


def bench_idle(d: Daemon, window_s: float) -> dict[str, Any]:
    time.sleep(2.0)  # settle
    p = psutil.Process(d.pid)
    d.poll_log()
    log0 = d.tail.size
    c0, s0, x0, t0 = p.cpu_times(), sched_ns(d.pid), p.num_ctx_switches(), time.monotonic()
    time.sleep(window_s)
    c1, s1, x1, t1 = p.cpu_times(), sched_ns(d.pid), p.num_ctx_switches(), time.monotonic()
    mem = p.memory_full_info()
    d.poll_log()
    dt = t1 - t0
    return {
        "children": len(sleep_children(d)),
        "window_s": dt,
        "cpu_pct_psutil": ((c1.user - c0.user) + (c1.system - c0.system)) / dt * 100,
        "cpu_pct_schedstat": (s1 - s0) / 1e9 / dt * 100,
        "cpu_tick_resolution_pct": 1 / os.sysconf("SC_CLK_TCK") / dt * 100,
        "ctx_switches": (x1.voluntary - x0.voluntary) + (x1.involuntary - x0.involuntary),
        "rss_mib": mem.rss / 2**20,
        "uss_mib": mem.uss / 2**20,
        "threads": p.num_threads(),
        "fds": p.num_fds(),
        "log_bytes_during_window": d.tail.size - log0,
    }


def bench_shutdown(d: Daemon, timeout_s: float = 120.0) -> dict[str, Any]:
    assert d.proc is not None
    kids = d.record_children()
    before = []
    for k in kids:
        try:
            before.append((k.pid, k.create_time()))
        except psutil.NoSuchProcess:
            pass
    d.stopping = True
    d.poll_log()
    n_events = len(d.tail.events)
    t0, t0_wall = time.monotonic(), time.time()
    d.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = d.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    dt = time.monotonic() - t0
    survivors = []
    for pid, ctime in before:
        try:
            p = psutil.Process(pid)
            if p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(pid)
        except psutil.NoSuchProcess:
            pass
    d.poll_log()
    if code is None:
        d.kill()
    window = d.tail.events[n_events:]
    stopped = [e for e in window if e.get("event") == "process_state_changed" and e.get("new") == "STOPPED"]
    done = [e for e in window if e.get("event") == "daemon_stopped"]
    out: dict[str, Any] = {
        "children_before": len(before),
        "exit_s": dt if code is not None else None,
        "exit_code": code,
        "survivors": survivors,
        "stopped_events": len(stopped),
        "orphans_signalled_events": sum(1 for e in window if e.get("event") == "orphans_signalled"),
    }
    # Daemon-side breakdown from its log clock: when the last program was STOPPED, when it said goodbye.
    if stopped:
        out["sigterm_to_last_stopped_s"] = parse_ts(stopped[-1]) - t0_wall
    if done:
        out["sigterm_to_daemon_stopped_logged_s"] = parse_ts(done[-1]) - t0_wall
    return out


# -------------------------------------------------------------------------------------------- main


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    quick = args.quick
    samples = 10 if quick else 30
    starts = {100: 3} if quick else {100: 5, 1000: 3}
    idle_window_s = 5.0 if quick else 30.0
    results: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
                    "load_avg_at_start": os.getloadavg()},
        "targets": TARGETS,
    }

    print(f"procguard engine benchmark ({results['mode']}): {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, kernel {platform.release()}, load {os.getloadavg()[0]:.2f}")
    print(f"child python: {CHILD_PYTHON} -S; sleep: {SLEEP}; temp dir {bench.root}\n")

    results["respawn"] = r = bench_respawn(bench, samples)
    print_respawn(r)
    print()

    results["startup"] = {}
    results["shutdown"] = {}
    for n, repeats in starts.items():
        runs = []
        shutdowns = []
        for i in range(repeats):
            fig, d = bench_startup(bench, n, i)
            runs.append(fig)
            if n == 100 and i == repeats - 1:
                results["idle"] = idle = bench_idle(d, idle_window_s)
            shutdowns.append(bench_shutdown(d))
        # The same start with the log at warning: how much of the start-up is the daemon's own logging.
        fig_w, d = bench_startup(bench, n, 0, log_level="warning")
        shutdowns.append(bench_shutdown(d))
        results["startup"][str(n)] = {"runs": runs, "wall_s": summary([x["wall_s"] for x in runs]),
                                      "warning_level_run": fig_w}
        results["shutdown"][str(n)] = {"runs": shutdowns}
        print(f"start-up, {n} programs of `sleep 100000` (startsecs = 0), Popen -> all RUNNING and exec'd:")
        print(fmt_row("wall (log shows all RUNNING, psutil agrees)", [x["wall_s"] for x in runs], "ms", 1e3, 1))
        for key, label in (("popen_to_daemon_started_s", "  Popen -> daemon_started logged"),
                           ("daemon_started_to_first_spawn_s", "  daemon_started -> first process_spawned"),
                           ("first_to_last_spawn_s", "  first -> last process_spawned")):
            vals = [x[key] for x in runs if key in x]
            if vals:
                print(fmt_row(label, vals, "ms", 1e3, 1))
        print(fmt_row("  daemon CPU (user+sys) until then", [x["daemon_cpu_s"] for x in runs], "ms", 1e3, 1))
        print(f"  {'same, --log-level warning (psutil only)':<46} {fig_w['wall_s'] * 1e3:.1f} ms  "
              f"(log {fig_w['log_bytes']} bytes vs {runs[-1]['log_bytes']} at info, "
              f"{runs[-1]['log_lines']} lines)")
        exits = [s["exit_s"] for s in shutdowns if s["exit_s"] is not None]
        surv = sum(len(s["survivors"]) for s in shutdowns)
        print(f"shutdown (SIGTERM) with {n} children, {len(shutdowns)} daemons (log-timed rows: info-level ones):")
        if exits:
            print(fmt_row("SIGTERM -> daemon exited", exits, "ms", 1e3, 1))
        for key, label in (("sigterm_to_last_stopped_s", "  SIGTERM -> last STOPPED logged"),
                           ("sigterm_to_daemon_stopped_logged_s", "  SIGTERM -> daemon_stopped logged")):
            vals = [s[key] for s in shutdowns if key in s]
            if vals:
                print(fmt_row(label, vals, "ms", 1e3, 1))
        hung = [s for s in shutdowns if s["exit_s"] is None]
        if hung:
            print(f"  {len(hung)} daemon(s) did not exit within 120 s (killed)")
        print(f"  {'children surviving the daemon':<46} {surv}  (of {sum(s['children_before'] for s in shutdowns)})")
        if n == 100:
            print(f"idle, 100 idle children, {idle['window_s']:.1f} s window after 2 s settle:")
            print(f"  {'daemon CPU, psutil user+system':<46} {idle['cpu_pct_psutil']:.4f} % of a core  "
                  f"(resolution {idle['cpu_tick_resolution_pct']:.4f} %)")
            print(f"  {'daemon CPU, schedstat (ns)':<46} {idle['cpu_pct_schedstat']:.4f} % of a core")
            print(f"  {'context switches in the window':<46} {idle['ctx_switches']}")
            print(f"  {'RSS / USS':<46} {idle['rss_mib']:.1f} / {idle['uss_mib']:.1f} MiB  "
                  f"({idle['threads']} threads, {idle['fds']} fds)")
        print()

    print_summary(results)
    return results


def print_summary(res: dict[str, Any]) -> None:
    def verdict(value: float, target: float) -> str:
        return "within" if value < target else "OVER"

    r = res["respawn"]
    rows = [
        ("median respawn, kill -> exec'd", r["kill_to_exec_ms"]["median"], "ms", TARGETS["respawn_median_ms"],
         "supervisord ~1 s, circus ~1.8 s"),
        ("median respawn, kill -> first instr. - baseline",
         r["kill_to_first_instruction_ms"]["median"] - r["baseline_popen_to_first_instruction_ms"]["median"], "ms",
         TARGETS["respawn_median_ms"], ""),
        ("100 programs started (median)", res["startup"]["100"]["wall_s"]["median"] * 1e3, "ms",
         TARGETS["start_100_s"] * 1e3, ""),
    ]
    if "1000" in res["startup"]:
        rows.append(("1000 programs running (median)", res["startup"]["1000"]["wall_s"]["median"] * 1e3, "ms",
                     TARGETS["start_1000_s"] * 1e3, "supervisord 24.6 s"))
    idle = res["idle"]
    rows += [
        ("idle CPU, 100 children (schedstat)", idle["cpu_pct_schedstat"], "%", TARGETS["idle_cpu_pct"], ""),
        ("idle RSS, 100 children", idle["rss_mib"], "MiB", TARGETS["idle_rss_mib"], ""),
    ]
    print("summary (figures only; nothing here fails the run):")
    print(f"  {'figure':<50} {'value':>10}  {'target':>10}  verdict  reference")
    for label, value, unit, target, ref in rows:
        print(f"  {label:<50} {value:>10.3f}  {'< ' + format(target, 'g'):>10}  {verdict(value, target):<7}  "
              f"{unit}{'; ' + ref if ref else ''}")
    surv = sum(len(s["survivors"]) for v in res["shutdown"].values() for s in v["runs"])
    print(f"  {'children surviving shutdown (all daemons)':<50} {surv:>10}  {'= 0':>10}  "
          f"{'within' if surv == 0 else 'OVER':<7}")


def wall_ms(argv: list[str], out: Path, timeout_s: float, env: dict[str, str]) -> tuple[float, int]:
    """Run argv with stdout to `out`; return (ms from Popen to exit, exit code). Never leaves it running."""
    with open(out, "wb") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env, cwd="/")
        try:
            # Not p.wait(timeout): with a timeout it polls with sleeps of up to 50 ms, which would show up
            # in the figures. A pidfd becomes readable at the exit (pidfd_open(2)), then wait() reaps at once.
            pidfd = os.pidfd_open(p.pid)
            try:
                if not select.select([pidfd], [], [], timeout_s)[0]:
                    raise BenchError(f"{' '.join(argv)} still running after {timeout_s:g}s")
            finally:
                os.close(pidfd)
            code = p.wait()
            dt = (time.perf_counter() - t0) * 1e3
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return dt, code


def kill_survivors(before: list[psutil.Process]) -> list[int]:
    """Kill what of `before` (children recorded while their daemon ran) outlived it; return their pids."""
    survivors = []
    for p in before:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                survivors.append(p)
        except psutil.NoSuchProcess:
            pass
    for p in survivors:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=5)
    return [p.pid for p in survivors]


def bench_main(name: str, description: str, quick_help: str,
               run_fn: Callable[[argparse.Namespace, "Bench"], dict[str, Any]], argv: list[str] | None) -> int:
    """The command line every bench_*.py shares: --quick, --json OUT, cleanup on any exit, exit 2 on a
    harness failure (never on speed)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    args = ap.parse_args(argv)
    bench = Bench()
    t0 = time.monotonic()
    try:
        with sigterm_unwinds():
            results = run_fn(args, bench)
    except BenchError as exc:
        print(f"\n{name}: cannot measure: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        print(f"\n{name}: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        # Bounded (TERM, 60 s, KILL); a second Ctrl-C must not leave children behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            killed = bench.close()
        finally:
            signal.signal(signal.SIGINT, old)
        if killed:
            print(f"{name}: cleanup killed leftover children: {killed}", file=sys.stderr)
    results["elapsed_s"] = time.monotonic() - t0
    results["cleanup_killed"] = killed
    print(f"\nelapsed {results['elapsed_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_engine", "Benchmark the procguard engine against a real daemon.",
                      "fewer samples, 100 programs only (< ~40 s)", run, argv)


if __name__ == "__main__":
    sys.exit(main())
