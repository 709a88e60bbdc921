"""One real `python -m procguard` in its own directory, and the JSON log it writes."""

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from benchmarks.harness.run import REPO, SLEEP_ARGV, BenchError, poll_until
from procguard.testing import RealDaemon

if TYPE_CHECKING:
    from benchmarks.harness.run import Bench


def parse_ts(event: dict[str, Any]) -> float:
    """The daemon's TimeStamper(fmt="iso", utc=False) stamp as time.time() seconds."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


class LineTail:
    """Incremental reader of a file that processes append to: only complete new lines are returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def poll_bytes(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [line for line in lines if line.strip()]

    def poll(self) -> list[str]:
        return [line.decode(errors="replace") for line in self.poll_bytes()]

    @property
    def size(self) -> int:
        return self._offset


class LogTail:
    """The daemon's JSON log: every event read so far in `events`, lines that are not JSON in `bad_lines`."""

    def __init__(self, path: Path) -> None:
        self._lines = LineTail(path)
        self.events: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []

    @property
    def size(self) -> int:
        return self._lines.size

    def poll(self) -> list[dict[str, Any]]:
        """The events logged since the last poll."""
        new = []
        for line in self._lines.poll_bytes():
            try:
                new.append(json.loads(line))
            except json.JSONDecodeError:
                self.bad_lines.append(line.decode(errors="replace"))
        self.events.extend(new)
        return new

    def find(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]


class Daemon:
    """A daemon process in its directory `work`, owned (and cleaned up) by a Bench: procguard, started and
    closed by procguard.testing.RealDaemon (the tests' harness), unless a peer driver (peers.py) Popens
    another daemon in its place."""

    def __init__(self, bench: "Bench", work: Path, log_level: str = "info") -> None:
        self.bench = bench
        self.work = work
        work.mkdir(parents=True)
        self.config = work / "procguard.toml"
        self.endpoint = f"ipc://{work}/run/control.sock"
        self.logfile = work / "daemon.log"
        self.log_level = log_level
        self.tail = LogTail(self.logfile)
        self.proc: subprocess.Popen[bytes] | None = None
        self.real: RealDaemon | None = None
        self.popen_mono = self.popen_wall = 0.0
        self.stopping = False  # set before we signal it, so its exit is not reported as a crash

    def write_config(self, programs_toml: str, extra: str = "") -> None:
        """procguard.toml: logs and control socket in `work`, `extra` [procguard] keys, then the programs."""
        self.config.write_text(f'[procguard]\nlogdir = "{self.work}/logs"\nloglevel = "{self.log_level}"\n'
                               f'control = "{self.endpoint}"\n{extra}\n{programs_toml}')

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def popen(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        """Start argv as this daemon, its output appended to `logfile`; `popen_mono` is when."""
        with open(self.logfile, "ab") as log:
            self.popen_wall, self.popen_mono = time.time(), time.monotonic()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(cwd),
                                         env=env)

    def start(self) -> None:
        """`python -m procguard -c CONFIG --log-format json --log-level L`; does not wait for it."""
        self.real = RealDaemon(self.config, logfile=self.logfile, endpoint=self.endpoint, cwd=REPO)
        self.popen_wall, self.popen_mono = time.time(), time.monotonic()
        self.proc = self.real.start("--log-level", self.log_level, wait=False).proc

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None and not self.stopping:
            raise BenchError(f"daemon exited with {self.proc.returncode}; log tail:\n{self.log_text()[-3000:]}")

    def poll_log(self) -> list[dict[str, Any]]:
        new = self.tail.poll()
        for e in new:
            if e.get("event") == "process_spawned" and isinstance(e.get("pid"), int):
                self.bench.child_pids_seen.add(e["pid"])
        self.check_alive()
        return new

    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_event(self, name: str, timeout_s: float = 10.0, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.poll_log()
            hits = self.tail.find(name, **match)
            return hits[-1] if hits else None

        return poll_until(found, timeout_s, f"{name} {match}")

    def wait_running(self, n: int, timeout_s: float, interval_s: float = 0.01) -> None:
        """Until the log shows n distinct processes RUNNING and n children have exec'd `sleep` (psutil)."""
        running: set[str] = set()

        def all_up() -> bool:
            for e in self.poll_log():
                if e.get("event") == "process_state_changed" and e.get("new") == "RUNNING":
                    running.add(e["process"])
            return len(running) >= n and len(self.exec_children()) >= n

        poll_until(all_up, timeout_s, f"{n} programs RUNNING (log) and exec'd (psutil)", interval_s=interval_s)

    def record_children(self) -> list[psutil.Process]:
        """Every descendant (recorded for the cleanup)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            kids = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.bench.child_pids_seen.update(k.pid for k in kids)
        return kids

    def exec_children(self, argv: list[str] | None = None) -> list[psutil.Process]:
        """Descendants that have exec'd argv (default `sleep 100000`) and are no zombies (psutil, not the log)."""
        want = SLEEP_ARGV if argv is None else argv
        out = []
        for c in self.record_children():
            try:
                if c.cmdline() == want and c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def kill(self) -> list[int]:
        """Stop it (SIGTERM, then SIGKILL); for procguard also kill what it started that survived (RealDaemon's
        close): those pids."""
        if self.proc is None:
            return []
        self.stopping = True
        if self.real is not None:
            return self.real.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return []
