"""Shared test helpers: polling with deadlines, and a real daemon run in a temp directory."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

REPO = Path(__file__).resolve().parent.parent
PROBE = str(REPO / "tests" / "programs" / "probe.py")


T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `pred` until it returns something truthy; fail with the last value seen after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(0.02)
        last = pred()
    return last


def alive(pid: int) -> bool:
    """True when pid runs and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def probe(d: "str | Path", name: str, mode: str = "sleep", **kw: object) -> list[str]:
    """The argv of a probe child writing into directory d."""
    argv = [sys.executable, PROBE, "--dir", str(d), "--name", name, "--mode", mode]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return argv


def toml_list(argv: list[str]) -> str:
    return json.dumps(argv)


def prog(name: str, argv: list[str], **keys: object) -> str:
    lines = [f"[program.{name}]", f"command = {toml_list(argv)}"]
    for k, v in keys.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v}")
        elif isinstance(v, dict):
            inner = ", ".join(f'{ik} = "{iv}"' for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        elif isinstance(v, list):
            lines.append(f"{k} = {v!r}".replace("'", '"'))
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n\n"


class DaemonRun:
    """A real `procguard` daemon on a config written into a fresh directory.

    `work` is world-writable so children running as nobody can report into it. Cleanup stops the
    daemon, then kills any pid a probe recorded that is still alive, and reports them as survivors.
    """

    def __init__(self, config_text: str = "") -> None:
        self.started_at = time.time()
        self.work = Path(tempfile.mkdtemp(prefix="procguard-test-"))
        self.work.chmod(0o777)
        self.config = self.work / "procguard.toml"
        self.logfile = self.work / "daemon.log"
        self.endpoint = f"ipc://{self.work}/control.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        if config_text:
            self.write_config(config_text)

    def write_config(self, text: str, name: str = "procguard.toml") -> Path:
        path = self.work / name
        header = (f'[procguard]\nlogdir = "{self.work}/logs"\nloglevel = "debug"\ncontrol = "{self.endpoint}"\n'
                  if name == "procguard.toml" else "")
        if name == "procguard.toml" and text.lstrip().startswith("[procguard]"):
            header = ""
        path.write_text(header + text)
        return path

    def start(self, *extra: str, wait: bool = True, env: dict[str, str] | None = None,
              launcher: tuple[str, ...] = ()) -> "DaemonRun":
        """launcher: argv that runs the daemon's argv (given as its last arguments), e.g. to start it with
        signals ignored."""
        env = {**os.environ, **(env or {})}
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [*launcher, sys.executable, "-m", "procguard", "-c", str(self.config), "--log-format", "json", *extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
            )
        if wait:
            wait_until(lambda: self.events("daemon_started") or self.proc.poll() is not None, what="daemon start")
            assert self.proc.poll() is None, self.logfile.read_text()
        return self

    # ------------------------------------------------------------------------------ observing
    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        out = []
        if not self.logfile.exists():
            return out
        for line in self.logfile.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is not None and ev.get("event") != name:
                continue
            if all(ev.get(k) == v for k, v in match.items()):
                out.append(ev)
        return out

    def transitions(self, process: str) -> list[str]:
        return [e["new"] for e in self.events("process_state_changed", process=process)]

    def state(self, process: str) -> str | None:
        t = self.transitions(process)
        return t[-1] if t else None

    def wait_state(self, process: str, state: str, timeout: float = 10.0, count: int = 1) -> dict[str, Any]:
        def seen() -> list[dict[str, Any]]:
            evs = self.events("process_state_changed", process=process, new=state)
            return evs if len(evs) >= count else []

        return wait_until(seen, timeout, f"{process} -> {state} (x{count}); transitions {self.transitions(process)}")[count - 1]

    def reports(self, name: str | None = None) -> list[dict[str, Any]]:
        path = self.work / "reports.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if name is None or r["name"] == name]

    def wait_reports(self, name: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]]:
            rows = self.reports(name)
            return rows if len(rows) >= count else []

        return wait_until(enough, timeout, f"{count} reports from {name}")

    def probe_events(self) -> list[str]:
        path = self.work / "events.log"
        return path.read_text().splitlines() if path.exists() else []

    def recorded_pids(self) -> list[int]:
        path = self.work / "pids"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def survivors(self) -> list[int]:
        """Recorded pids still alive that were started by this test (pid reuse is ruled out by start time)."""
        out = []
        for pid in self.recorded_pids():
            try:
                p = psutil.Process(pid)
                if p.create_time() >= self.started_at - 1 and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    # ------------------------------------------------------------------------------- control
    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> list[int]:
        """Stop everything this run started; return the survivors found (and killed)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        left = self.survivors()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.work, ignore_errors=True)
        return left
