"""A real `procguard` daemon on a config written into a fresh temporary directory.

RealDaemon (procguard.testing) runs and stops the daemon; DaemonRun adds the directory, the config
header and what the probe programs report there. Shared by tests, the demo driver and benchmarks.
"""

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from procguard.testing import CHECKOUT, RealDaemon, wait_until

REPO = CHECKOUT


class DaemonRun(RealDaemon):
    """A real `procguard` daemon on a config written into a fresh directory.

    `work` is world-writable so children running as nobody can report into it. Cleanup stops the
    daemon, then kills anything it started that is still alive (RealDaemon.close, plus any pid a probe
    recorded that is provably its probe: see survivors()), and reports them as survivors.
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

    def start(self, *extra: str, wait: bool = True, env: Mapping[str, str] | None = None,
              launcher: Sequence[str] = (), timeout: float = 60.0) -> Self:
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

        A probe's recorded pid counts only while it is provably the probe: a descendant of the daemon
        (track() walks them) or a member of a process group a tracked child still leads
        (track_groups()). A start time after this run's is no proof: pids are reused within minutes
        where pid_max is 32768, and a 30-minute soak killed other tests' processes that way.
        """
        if self.logged_pids_are_ours:
            recorded = set(self.recorded_pids())
            if self.proc is not None and self.proc.poll() is None:
                self.track()
            if recorded - set(self.started):
                self.track_groups()
        return super().survivors()

    def cleanup(self) -> list[int]:
        """Stop everything this run started; return the survivors found (and killed)."""
        left = self.close()
        shutil.rmtree(self.work, ignore_errors=True)
        return left
