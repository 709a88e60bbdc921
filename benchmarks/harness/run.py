"""A benchmark run: its temp directory and every daemon it started (Bench), waits, and the shared command line."""

import argparse
import compileall
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from procguard.testing import wait_until

if TYPE_CHECKING:
    from benchmarks.harness.daemon import Daemon

REPO = Path(__file__).resolve().parent.parent.parent
# The real interpreter, not a shim or the venv's symlink: a child must start as fast as Python can.
CHILD_PYTHON = os.path.realpath(sys.executable)
SLEEP = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
SLEEP_ARGV = [SLEEP, "100000"]
POLL_S = 0.0005

T = TypeVar("T")


class BenchError(Exception):
    """The harness could not measure (not a slow daemon: that is only ever printed)."""


class Interrupted(BaseException):
    """SIGTERM to this script: unwind through every `finally` like Ctrl-C does."""


def poll_until(pred: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = POLL_S) -> T:
    """procguard.testing.wait_until (the tests' poll with a deadline), raising BenchError with the last value
    seen after `timeout_s`: the harness could not measure."""
    try:
        return wait_until(pred, timeout_s, what, interval_s)  # type: ignore[return-value]  # truthy: not None
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


def installed_bytecode() -> None:
    """Run procguard from compiled bytecode, as an installed package (and supervisor, circus) runs.

    supervisor's and circus's modules sit compiled in site-packages; this checkout is an editable
    install, and under PYTHONDONTWRITEBYTECODE=1 every daemon and CLI start recompiled each procguard
    module (issue #17). Compile once into __pycache__ (ignored by git) and let children use it.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for pkg in ("procguard", "procguardctl"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)


def machine() -> dict[str, Any]:
    """The machine a run measured, for the JSON and the header line."""
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "kernel": platform.release(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


def begin(what: str, args: argparse.Namespace, detail: str = "", children: str = "", root: Path | None = None,
          **extra: Any) -> dict[str, Any]:
    """A script's results so far (mode, machine, extra), its header printed: the machine, then what its
    children run and the temp dir (if given)."""
    results = {"mode": "quick" if args.quick else "full", "machine": machine(), **extra}
    print(f"procguard {what} benchmark ({results['mode']}{detail}): {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, kernel {platform.release()}, load {os.getloadavg()[0]:.2f}")
    if children:
        print(f"{children}; temp dir {root}\n")
    return results


class SeenPids:
    """Child pids seen during a run, each with when it was last seen (time.time()).

    On a busy machine the kernel reuses pids within minutes (pid_max 32768): a process created after its
    pid was last seen as ours is someone else's, and the cleanup must leave it alone.
    """

    def __init__(self) -> None:
        self.last_seen: dict[int, float] = {}

    def add(self, pid: int) -> None:
        self.last_seen[pid] = time.time()

    def update(self, pids: Iterable[int]) -> None:
        now = time.time()
        self.last_seen.update((pid, now) for pid in pids)

    def ours(self, proc: psutil.Process) -> bool:
        """Was proc already running when its pid was last seen (the creation clock ticks in 10 ms)?"""
        seen = self.last_seen.get(proc.pid)
        return seen is not None and proc.create_time() <= seen + 0.05


class Bench:
    """Owns the temp directory, every daemon started and every child pid seen; `close` cleans all up."""

    def __init__(self) -> None:
        self.started_wall = time.time()
        self.root = Path(tempfile.mkdtemp(prefix="procguard-bench-"))
        self.daemons: list["Daemon"] = []
        self.child_pids_seen = SeenPids()
        self.known_cmdlines: list[list[str]] = [SLEEP_ARGV]
        self.plain_children: list[subprocess.Popen[bytes]] = []

    def daemon(self, name: str, programs_toml: str | None = "", log_level: str = "info") -> "Daemon":
        """A procguard daemon in its own directory (its config written unless programs_toml is None)."""
        from benchmarks.harness.daemon import Daemon

        d = Daemon(self, self.root / name, log_level)
        if programs_toml is not None:
            d.write_config(programs_toml)
        self.daemons.append(d)
        return d

    def close(self) -> list[int]:
        """Stop every daemon (TERM, then KILL), kill recorded children still alive; return those killed."""
        killed = []
        for d in self.daemons:
            d.record_children()
            killed += d.kill()
        for p in self.plain_children:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in sorted(set(self.child_pids_seen.last_seen) - set(killed)):
            try:
                proc = psutil.Process(pid)
                # Ours only: started after this script, running one of its commands, and already running when
                # its pid was last seen as ours (not a reused pid).
                if (proc.create_time() >= self.started_wall - 1 and self.child_pids_seen.ours(proc)
                        and proc.cmdline() in self.known_cmdlines and proc.status() != psutil.STATUS_ZOMBIE):
                    proc.kill()
                    killed.append(pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        return killed

    def close_uninterrupted(self) -> list[int]:
        """`close`, with a second Ctrl-C ignored meanwhile: it must not leave children behind."""
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return self.close()
        finally:
            signal.signal(signal.SIGINT, old)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


RunFn = Callable[[argparse.Namespace, Bench], dict[str, Any]]


def bench_main(name: str, description: str, quick_help: str, run_fn: RunFn, argv: list[str] | None,
               parser: argparse.ArgumentParser | None = None,
               after_close: Callable[[Bench, dict[str, Any]], None] | None = None) -> int:
    """The command line every bench_*.py shares: --quick, --json OUT (plus `parser`'s own options), cleanup
    on any exit, exit 2 on a harness failure (never on speed), 130 when interrupted.

    after_close(bench, results) runs after the cleanup, also when the run failed (results then empty).
    """
    ap = argparse.ArgumentParser(description=description, parents=[parser] if parser else [])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    args = ap.parse_args(argv)
    bench = Bench()
    t0 = time.monotonic()
    results: dict[str, Any] = {}
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
        killed = bench.close_uninterrupted()  # bounded: TERM, 60 s, KILL
        if killed:
            print(f"{name}: cleanup killed leftover children: {killed}", file=sys.stderr)
        if after_close is not None:
            after_close(bench, results)
    results["elapsed_s"] = time.monotonic() - t0
    results["cleanup_killed"] = killed
    print(f"\nelapsed {results['elapsed_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0
