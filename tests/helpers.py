"""Shared test helpers: probe programs, config snippets, and a real daemon run in a temp directory.

The daemon itself (start, socket, stop, survivors) is procguard.testing.RealDaemon, which benchmarks
share; DaemonRun adds the test's temp directory, config header and the probes' reports.
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import psutil

from procguard.testing import CTL, RealDaemon, alive, free_port, wait_until

__all__ = ["CTL", "PROBE", "REPO", "DaemonRun", "alive", "catches", "free_port", "probe", "prog", "toml_list", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
PROBE = str(REPO / "tests" / "programs" / "probe.py")


def probe(d: "str | Path", name: str, mode: str = "sleep", **kw: object) -> list[str]:
    """The argv of a probe child writing into directory d."""
    argv = [sys.executable, PROBE, "--dir", str(d), "--name", name, "--mode", mode]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return argv


def catches(pid: int, sig: int) -> bool:
    """True once process pid has a handler installed for sig (SigCgt in /proc/PID/status, proc(5))."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


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


class DaemonRun(RealDaemon):
    """A real `procguard` daemon on a config written into a fresh directory.

    `work` is world-writable so children running as nobody can report into it. Cleanup stops the
    daemon, then kills anything it started that is still alive (RealDaemon.close, plus any pid a probe
    recorded), and reports them as survivors.
    """

    def __init__(self, config_text: str = "") -> None:
        self.started_at = time.time()
        self.work = Path(tempfile.mkdtemp(prefix="procguard-test-"))
        self.work.chmod(0o777)
        super().__init__(self.work / "procguard.toml", logfile=self.work / "daemon.log",
                         endpoint=f"ipc://{self.work}/control.sock", cwd=REPO)
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
              launcher: tuple[str, ...] = (), timeout: float = 60.0) -> Self:
        """env: added to this process's environment. launcher: argv that runs the daemon's argv (given as
        its last arguments), e.g. to start it with signals ignored."""
        return super().start(*extra, wait=wait, env={**os.environ, **(env or {})}, launcher=launcher,
                             timeout=timeout)

    # ------------------------------------------------------------------------------ observing
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

    def status(self) -> dict[str, dict[str, Any]]:
        """`procguardctl --json status`, by process name (exit 0, or 3 when one is not running)."""
        r = self.ctl("--json", "status")
        assert r.returncode in (0, 3), r.stderr
        return {s["name"]: s for s in json.loads(r.stdout)}

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
        """Pids started by this test still alive: the daemon's (RealDaemon.track) and every probe's.

        A probe's recorded pid counts only if that process started after this run (no pid reuse), and
        only where the daemon shares our pid namespace.
        """
        for pid in self.recorded_pids() if self.logged_pids_are_ours else ():
            try:
                if psutil.Process(pid).create_time() >= self.started_at - 1:
                    self.track(pid)
            except psutil.NoSuchProcess:
                pass
        return super().survivors()

    def cleanup(self) -> list[int]:
        """Stop everything this run started; return the survivors found (and killed)."""
        left = self.close()
        shutil.rmtree(self.work, ignore_errors=True)
        return left
