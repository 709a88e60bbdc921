"""What "never loses anything" means, checked against the real system (issue #20).

`World` runs a real daemon on programs of procguard/testing/recorder.py and checks, from /proc, the output
files and the control socket (never from procguard's own word alone):

- every process status calls RUNNING is alive with that pid, leads its own process group, and runs with
  the configured uid, umask and cwd;
- a process at rest (STOPPED, EXITED, BACKOFF, FATAL) or removed has nothing left: no pid it started lives;
- nothing descends from the daemon that the config does not account for (a live process's group, or
  one of its exec health checks);
- every record a child wrote is in its output file, in order, with its checksum (recorder.py keeps what
  it wrote in DIR/seq/PID);
- every command gets a reply within its deadline; the daemon's log has no traceback;
- every transition in the log is one docs/states.md allows, and continues where the last one ended.

Shared by tests/integration/test_model.py, test_faults.py, test_control_load.py and benchmarks/soak.py.
"""

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from procguard.testing import ControlClient, recorder, wait_until
from procguard.testing.recorder import parse as parse_record
from procguard.testing.recorder import start_ticks
from procguard.testing.run import DaemonRun

RECORDER = recorder.__file__  # run by path, as a script of its own
# The system python, which any user may run (the venv's may live under /root, 0700); the recorder
# needs only the standard library. -I -S: no site, no environment: it starts in a few ms.
PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable

# docs/states.md, as (old, new). STOPPING -> BACKOFF/FATAL: not ready within start_timeout is a failed
# start (docs/health.md); STARTING -> EXITED: a oneshot that completed.
ALLOWED = frozenset({
    ("STOPPED", "STARTING"), ("STARTING", "RUNNING"), ("STARTING", "BACKOFF"), ("STARTING", "FATAL"),
    ("STARTING", "EXITED"), ("BACKOFF", "STARTING"), ("RUNNING", "EXITED"), ("EXITED", "STARTING"),
    ("EXITED", "BACKOFF"), ("EXITED", "FATAL"), ("STARTING", "STOPPING"), ("RUNNING", "STOPPING"),
    ("STOPPING", "STOPPED"), ("STOPPING", "BACKOFF"), ("STOPPING", "FATAL"), ("BACKOFF", "STOPPED"),
    ("EXITED", "STOPPED"), ("FATAL", "STOPPED"), ("FATAL", "STARTING"),
})
LIVE = frozenset({"STARTING", "RUNNING", "STOPPING"})
AT_REST = frozenset({"STOPPED", "EXITED", "BACKOFF", "FATAL"})
USERS = {"root": 0, "nobody": 65534, "games": 5}
HEALTH_MARK = "unhealthy-"


@dataclass(frozen=True, slots=True)
class Spec:
    """One program of the model: what its config says, in the terms the checks use."""

    name: str
    user: str = "root"
    umask: int = 0o022
    cwd: str = "a"  # a subdirectory of the world's directory
    worker: bool = False
    health: bool = False
    autostart: bool = True
    autorestart: str = "true"  # or "unexpected"
    ignore_signals: bool = False
    stopwaitsecs: float = 1.0
    tick: float = 0.02  # seconds between records


def toml_str(s: str) -> str:
    return json.dumps(s)


@dataclass
class Expect:
    """What the model allows for one program now: the states status may show once things settle."""

    states: frozenset[str]
    why: str


UP = frozenset({"STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED"})
DOWN = frozenset({"STOPPED"})


@dataclass
class World:
    """A real daemon on recorder programs, and the checks of everything it must never lose."""

    run: DaemonRun
    specs: dict[str, Spec] = field(default_factory=dict)
    expect: dict[str, Expect] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    maxbytes: int = 65536
    _log_offset: int = 0
    _last_state: dict[tuple[str, int], str] = field(default_factory=dict)  # by (process, generation)
    problems_seen: list[str] = field(default_factory=list)
    _starts: dict[int, int] = field(default_factory=dict)  # pid -> start ticks, as the owners file says
    ctl: ControlClient | None = None
    # Programs besides the recorders (the soak's web server): written into the config as they are,
    # checked for nothing but being accounted for (their group is a live process's).
    extra_toml: str = ""
    extra_names: frozenset[str] = frozenset()

    # ------------------------------------------------------------------------------ set-up
    @classmethod
    def create(cls, specs: list[Spec], maxbytes: int = 65536) -> "World":
        run = DaemonRun()
        w = cls(run=run, maxbytes=maxbytes)
        work = run.work
        for sub in ("a", "b", "seq", "cmd", "out"):
            (work / sub).mkdir()
            (work / sub).chmod(0o777)
        for f in ("pids", "owners"):
            (work / f).touch()
            (work / f).chmod(0o666)
        w.specs = {s.name: s for s in specs}
        w.write_config()
        for s in specs:
            w.expect[s.name] = Expect(UP if s.autostart else DOWN, "initial config")
        return w

    def start(self, *extra: str, **kw: Any) -> None:
        self.run.start(*extra, **kw)
        self.ctl = ControlClient(self.run.endpoint)

    def program_toml(self, s: Spec) -> str:
        work = self.run.work
        argv = [PYTHON, "-I", "-S", RECORDER, "--dir", str(work), "--name", s.name]
        if s.worker:
            argv.append("--worker")
        if s.ignore_signals:
            argv.append("--ignore-signals")
        if s.tick != 0.02:
            argv += ["--tick", str(s.tick)]
        lines = [
            f"[program.{s.name}]", f"command = {json.dumps(argv)}", f"user = {toml_str(s.user)}",
            f'umask = "{s.umask:03o}"', f"directory = {toml_str(str(work / s.cwd))}",
            f"autostart = {str(s.autostart).lower()}",
            f"autorestart = {'true' if s.autorestart == 'true' else toml_str(s.autorestart)}",
            "startsecs = 0", f"stopwaitsecs = {s.stopwaitsecs}", 'backoff_initial = "100ms"', 'backoff_max = "500ms"',
            f"stdout_logfile = {toml_str(str(self.out_path(s.name)))}", f"stdout_logfile_maxbytes = {self.maxbytes}",
            "stdout_logfile_backups = 1000",
        ]
        if s.health:
            check = ["/bin/sh", "-c", f"test ! -e {work}/{HEALTH_MARK}{s.name}"]
            lines += ['start_timeout = "3s"', "", f"[program.{s.name}.healthcheck]", 'type = "exec"',
                      f"command = {json.dumps(check)}", 'interval = "300ms"', 'timeout = "2s"', "retries = 1"]
        return "\n".join(lines) + "\n\n"

    def write_config(self) -> None:
        self.run.write_config(self.extra_toml + "".join(self.program_toml(s) for s in self.specs.values()))

    def out_path(self, name: str) -> Path:
        return self.run.work / "out" / f"{name}.log"

    # ----------------------------------------------------------------------------- observing
    def status(self, deadline_s: float = 15.0) -> dict[str, dict[str, Any]]:
        assert self.ctl is not None
        reply = self.ctl.request("status", {}, deadline_s)
        assert reply["ok"], reply
        return {s["name"]: s for s in reply["result"]}

    def owners(self) -> dict[str, list[int]]:
        """The pids every recorder (and its worker) reported, by program; their start times into _starts."""
        out: dict[str, list[int]] = {}
        path = self.run.work / "owners"
        for line in path.read_text().splitlines():
            name, pid, start = (line.split(" ") + ["", ""])[:3]
            if pid.isdigit():
                out.setdefault(name, []).append(int(pid))
                if start.isdigit():
                    self._starts[int(pid)] = int(start)
        return out

    def alive(self, pid: int) -> bool:
        """Does the recorder (or worker) that reported pid still run? A reused pid is another process."""
        start = self._starts.get(pid)
        return _alive(pid) and (start is None or start_ticks(pid) == start)

    def written(self, name: str, pid: int) -> int:
        """The last record number process `name`'s recorder pid reported written (-1: none yet)."""
        try:
            text = (self.run.work / "seq" / f"{name}.{pid}").read_text()
        except FileNotFoundError:
            return -1
        return int(text) if text.strip().isdigit() else -1

    def output(self, name: str) -> bytes:
        """The whole stdout history of a program: its backups, oldest first, then the current file."""
        base = self.out_path(name)
        backups = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]))
        return b"".join(p.read_bytes() for p in [*backups, base] if p.exists())

    # ------------------------------------------------------------------------------ checking
    def problems(self, *, final: bool = False, floors: dict[tuple[str, int], int] | None = None) -> list[str]:
        """Everything wrong right now (an empty list when the world is consistent).

        floors: per pid, the record number its file must reach, fixed at the first look of a check: a
        live writer always has its newest record in the pipe, so the target must not move with it.
        """
        out: list[str] = []
        out += self._log_problems()
        st = self.status()
        owners = self.owners()
        live_groups: set[int] = set()
        for name, s in st.items():
            if name in self.extra_names:
                if s["state"] in LIVE and s["pid"]:
                    live_groups.add(s["pid"])
                continue
            if name not in self.specs:
                out.append(f"status shows {name}, which the config does not have")
                continue
            state = s["state"]
            exp = self.expect.get(name)
            if exp is not None and state not in exp.states:
                out.append(f"{name} is {state}; the model allows {sorted(exp.states)} ({exp.why})")
            if state in LIVE and s["pid"]:
                live_groups.add(s["pid"])
            if state == "RUNNING":
                out += self._running_problems(self.specs[name], s["pid"])
            if state in AT_REST:
                alive = [p for p in owners.get(name, []) if self.alive(p)]
                if alive:
                    out.append(f"{name} is {state} but pids it started live: {alive}")
        for name in self.removed - set(self.specs):
            alive = [p for p in owners.get(name, []) if self.alive(p)]
            if alive:
                out.append(f"{name} was removed but pids it started live: {alive}")
        out += self._descendant_problems(live_groups)
        for name in set(owners) | set(self.specs):
            out += self._record_problems(name, owners.get(name, []), final=final, floors=floors)
        return out

    def check(self, timeout_s: float = 20.0) -> None:
        """Wait until the world is consistent; fail with what is still wrong after timeout_s."""
        deadline = time.monotonic() + timeout_s
        floors: dict[tuple[str, int], int] = {}
        while True:
            probs = self.problems(floors=floors)
            hard = [p for p in probs if p.startswith("LOG:")]
            if hard:
                raise AssertionError("\n".join(hard))
            if not probs:
                return
            if time.monotonic() > deadline:
                raise AssertionError("still inconsistent after %.0fs:\n  %s" % (timeout_s, "\n  ".join(probs)))
            time.sleep(0.05)

    def recording(self, name: str, timeout_s: float = 30.0) -> int:
        """Wait until the program's current process has written a record (so its signal set-up is done); its pid."""
        def pid() -> int | None:
            p = self.status()[name]["pid"]
            return p if p and self.written(name, p) >= 0 else None
        found = wait_until(pid, timeout_s, f"{name} recording")
        assert found is not None
        return found

    def check_gone(self, names: list[str]) -> None:
        """At once (no waiting): every pid these programs started is gone (a stop or reload returned)."""
        owners = self.owners()
        left = {n: [p for p in owners.get(n, []) if self.alive(p)] for n in names}
        left = {n: v for n, v in left.items() if v}
        assert not left, f"a stop/reload replied while processes it stopped still live: {left}"

    def _running_problems(self, spec: Spec, pid: int | None) -> list[str]:
        if not pid:
            return [f"{spec.name} is RUNNING without a pid"]
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return [f"{spec.name} RUNNING pid {pid} is a zombie"]
            cmd = p.cmdline()
            uid = p.uids().real
            pgid = os.getpgid(pid)
            cwd = os.readlink(f"/proc/{pid}/cwd")
            umask = next(int(line.split()[1], 8) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                         if line.startswith("Umask:"))
        except (psutil.NoSuchProcess, ProcessLookupError, FileNotFoundError, StopIteration):
            return [f"{spec.name} RUNNING pid {pid} does not exist"]
        out = []
        if RECORDER not in cmd or cmd[cmd.index("--name") + 1] != spec.name:
            out.append(f"{spec.name} RUNNING pid {pid} is not its program: {cmd}")
        if pgid != pid:
            out.append(f"{spec.name} pid {pid} is in group {pgid}, not its own")
        if uid != USERS[spec.user]:
            out.append(f"{spec.name} pid {pid} runs as uid {uid}, configured {spec.user}")
        if umask != spec.umask:
            out.append(f"{spec.name} pid {pid} has umask {umask:03o}, configured {spec.umask:03o}")
        if cwd != str(self.run.work / spec.cwd):
            out.append(f"{spec.name} pid {pid} runs in {cwd}, configured {self.run.work / spec.cwd}")
        return out

    def _descendant_problems(self, live_groups: set[int]) -> list[str]:
        assert self.run.proc is not None
        out = []
        try:
            kids = psutil.Process(self.run.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return ["LOG: the daemon is gone"]
        for k in kids:
            try:
                if k.status() == psutil.STATUS_ZOMBIE:
                    continue
                pgid = os.getpgid(k.pid)
                cmd = " ".join(k.cmdline())
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
            if pgid in live_groups or (HEALTH_MARK in cmd and cmd.startswith("/bin/sh")):
                continue
            out.append(f"pid {k.pid} ({cmd[:120]}) descends from the daemon in group {pgid}, "
                       f"which no live process leads")
        return out

    def _record_problems(self, name: str, pids: list[int], *, final: bool,
                         floors: dict[tuple[str, int], int] | None = None) -> list[str]:
        data = self.output(name)
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" after a final newline, else a record being written
        if tail and final:
            return [f"{name}: output ends in a partial record {tail[:80]!r}"]
        seqs: dict[int, list[int]] = {}
        out = []
        for i, line in enumerate(lines):
            rec = parse_record(line)
            if rec is None:
                return [f"LOG: {name}: line {i} of its output is not a whole record: {line[:100]!r}"]
            seqs.setdefault(rec[0], []).append(rec[1])
        for pid, got in seqs.items():
            if got != list(range(len(got))):
                bad = next(i for i, s in enumerate(got) if s != i)
                return [f"LOG: {name}: records of pid {pid} out of order or missing at #{bad}: "
                        f"{got[max(0, bad - 3):bad + 3]}"]
        for pid in pids:
            wrote = self.written(name, pid) if floors is None else floors.setdefault((name, pid), self.written(name, pid))
            have = len(seqs.get(pid, []))
            if have < wrote + 1:
                out.append(f"{name}: pid {pid} wrote records 0..{wrote}, its file has {have}")
        return out

    def _log_problems(self) -> list[str]:
        """New daemon log lines: tracebacks and transitions docs/states.md does not allow ("LOG:" = at once)."""
        out = []
        with open(self.run.logfile, "rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._log_offset += end
        for raw in chunk[:end].splitlines():
            line = raw.decode(errors="replace")
            if "Traceback" in line:
                out.append(f"LOG: traceback in the daemon's log: {line[:2000]}")
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # a child's inherited output or the daemon's stderr
            if not isinstance(ev, dict):
                continue
            if ev.get("level") in ("error", "critical") and ev.get("event") not in self.expected_errors:
                out.append(f"LOG: unexpected error event: {line[:500]}")
            if ev.get("event") != "process_state_changed":
                continue
            proc, old, new = ev["process"], ev["old"], ev["new"]
            if (old, new) not in ALLOWED:
                out.append(f"LOG: {proc}: transition {old} -> {new} is not in docs/states.md")
            # A replace runs two generations of one process at once: each has its own state machine.
            key = (proc, int(ev.get("generation", 1)))
            last = self._last_state.get(key, "STOPPED")
            if old != last and not (old == "STOPPED" and last in ("STOPPED", "EXITED", "FATAL", "BACKOFF")):
                out.append(f"LOG: {proc} (generation {key[1]}): transition from {old}, but its last state was {last}")
            self._last_state[key] = new
        self.problems_seen += out
        return out

    expected_errors: frozenset[str] = frozenset({"process_state_changed"})  # FATAL is logged as an error

    # ------------------------------------------------------------------------------ teardown
    def shutdown(self) -> None:
        """SIGTERM the daemon: it exits 0, nothing it started survives, every record is in its file."""
        assert self.run.proc is not None
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        code = self.run.stop(timeout=60)
        assert code == 0, f"daemon exited {code}"
        owners = self.owners()
        left = [p for ps in owners.values() for p in ps if self.alive(p)]
        assert not left, f"processes outlived the daemon: {left}"
        probs = self._log_problems()
        for name in set(owners) | set(self.specs):
            probs += self._record_problems(name, owners.get(name, []), final=True)
        assert not probs, "\n".join(probs)

    def cleanup(self) -> list[int]:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        return self.run.cleanup()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
