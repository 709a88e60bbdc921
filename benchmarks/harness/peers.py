"""The three supervisors under test, one interface: write a config, start, ask for status, stop.

procguard (`python -m procguard`), supervisord 4 (PyPI `supervisor`) and circus (PyPI `circus`), all
run from the venv this module runs in, each as a real daemon in its own directory under the suite's
temp dir. A `Program` describes what to supervise once; each `System` renders it into its own config
with the keys that mean the same thing (the table below), so every workload runs identical children.
How each is asked for status over the wire, and timed, is in harness/probes.py.

| Program field | procguard (TOML)          | supervisord (INI)        | circus (INI)                         |
| ------------- | ------------------------- | ------------------------ | ------------------------------------ |
| argv          | command = [...]           | command=shlex.join(argv) | cmd=shlex.join(argv)                 |
| autostart     | autostart                 | autostart                | autostart                            |
| autorestart   | autorestart               | autorestart              | respawn                              |
| (always)      | startsecs = 0             | startsecs=0              | (no such wait: up once spawned)      |
| stdout None   | stdout_logfile = "NONE"   | stdout_logfile=NONE      | close_child_stdout (/dev/null)       |
| stdout path   | stdout_logfile, maxbytes 0| stdout_logfile, maxbytes=0 | stdout_stream.class = FileStream   |
| stderr        | "NONE"                    | NONE                     | close_child_stderr (/dev/null)       |
| stopwaitsecs  | stopwaitsecs              | stopwaitsecs             | graceful_timeout                     |
| (always)      | stopsignal TERM (default) | stopsignal=TERM          | stop_signal = TERM (default)         |
| held_socket   | [socket.N] + sockets      | (none: see below)        | [socket:N] + use_sockets = True      |
| directory     | directory                 | directory                | working_dir                          |

Choices that could favour one side are in RESULTS.md, "Config choices that could favour one side".
"""

import json
import shlex
import signal
import sys
from importlib.metadata import version
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from benchmarks.harness.daemon import Daemon
from benchmarks.harness.load import get_once
from benchmarks.harness.probes import CTL_TIMEOUT_S, StatusProbe, XmlRpcProbe, ZmqProbe
from benchmarks.harness.procs import child_pids, clean_env, run_ctl, wait_exit
from benchmarks.harness.run import SLEEP_ARGV, Bench, BenchError, poll_until

VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's scripts live here
PYTHON = str(VENV_BIN / "python")
PROCGUARDCTL = str(VENV_BIN / "procguardctl")
SUPERVISORD = str(VENV_BIN / "supervisord")
SUPERVISORCTL = str(VENV_BIN / "supervisorctl")
CIRCUSD = str(VENV_BIN / "circusd")
CIRCUSCTL = str(VENV_BIN / "circusctl")
SYSTEMS = ("procguard", "supervisord", "circus")
# Stands for "the number of the held socket's descriptor" inside a Program's argv.
HELD_FD = "\x00HELD_FD\x00"
READY_TIMEOUT_S = 120.0
INSTALL = "missing: .venv/bin/python -m pip install -e '.[bench]'"


def peer_missing(system: str) -> str | None:
    """Why `system` cannot run here (not installed, or does not start), or None."""
    exes = {"supervisord": (SUPERVISORD, SUPERVISORCTL), "circus": (CIRCUSD, CIRCUSCTL)}.get(system, ())
    return next((f"{exe} {INSTALL}" for exe in exes if not Path(exe).exists()), None)


def version_of(system: str) -> str:
    try:
        if system == "supervisord":
            return run_ctl([SUPERVISORD, "--version"], "supervisord --version", timeout_s=30).strip()
        return version(system)
    except Exception as exc:  # a version string is informative only
        return f"unknown ({exc})"


@dataclass(frozen=True, kw_only=True)
class Program:
    """One supervised program, the same on every system (see the module's table)."""

    name: str
    argv: tuple[str, ...]
    autostart: bool = True
    autorestart: bool = True
    stdout: str | None = None  # a file, or None: discarded
    directory: str | None = None
    stopwaitsecs: float = 10.0
    held_socket: str | None = None  # a socket name from the System's `sockets`; argv uses HELD_FD
    server: str | None = None  # procguard's `server = ...` profile (gunicorn: TERM, READY=1 readiness)
    procguard_keys: dict[str, Any] = field(default_factory=dict)  # procguard-only keys, documented per use


def toml_value(v: Any) -> str:
    """v as a TOML value: strings JSON-quoted (a subset of TOML's basic strings), dicts as inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def procguard_programs(programs: list[Program], sockets: dict[str, int] | None = None) -> str:
    """[socket.N] and [program.N] tables of procguard.toml for these programs (the module's table)."""
    out = [f'[socket.{name}]\nbind = "tcp://127.0.0.1:{port}"\n' for name, port in (sockets or {}).items()]
    for p in programs:
        argv = [a.replace(HELD_FD, "{socket.%s.fd}" % p.held_socket) for a in p.argv]
        keys: dict[str, Any] = {"command": argv, "autostart": p.autostart, "autorestart": p.autorestart,
                                "startsecs": 0, "stdout_logfile": p.stdout or "NONE", "stderr_logfile": "NONE",
                                "stopwaitsecs": f"{p.stopwaitsecs:g}s"}
        if p.stdout:
            keys["stdout_logfile_maxbytes"] = 0
        optional = {"directory": p.directory, "sockets": [p.held_socket] if p.held_socket else None,
                    "server": p.server}
        keys |= {k: v for k, v in optional.items() if v is not None} | p.procguard_keys
        out.append(f"[program.{p.name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()))
    return "\n".join(out)


def sleep_programs(n: int, **procguard_keys: Any) -> list[Program]:
    """n programs p0000.. of `sleep 100000`."""
    return [Program(name=f"p{i:04d}", argv=tuple(SLEEP_ARGV), procguard_keys=procguard_keys) for i in range(n)]


class System:
    """One daemon of one kind on a list of programs; its Daemon is owned (and cleaned up) by `bench`."""

    kind = ""

    def __init__(self, bench: Bench, name: str, programs: list[Program],
                 sockets: dict[str, int] | None = None) -> None:
        self.bench = bench
        self.programs = programs
        self.sockets = sockets or {}
        # The Daemon: its directory, its cleanup (TERM, 60 s, KILL), child recording.
        self.daemon: Daemon = bench.daemon(f"{self.kind}-{name}", None)
        self.work = self.daemon.work
        for p in programs:
            bench.known_cmdlines.append(list(self.resolve(p.argv, p)))
        self.write_config()

    def resolve(self, argv: tuple[str, ...], p: Program) -> tuple[str, ...]:
        return tuple(a.replace(HELD_FD, self.held_fd % p.held_socket) for a in argv)

    held_fd = "%s"

    def write_config(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self.daemon.pid

    @property
    def popen_mono(self) -> float:
        return self.daemon.popen_mono

    def start(self) -> None:
        """Popen the daemon (its Popen time is `popen_mono`); does not wait for anything."""
        self.daemon.popen(self.daemon_argv(), self.work, clean_env())

    def daemon_argv(self) -> list[str]:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def check_alive(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is not None and not self.daemon.stopping:
            raise BenchError(f"{self.kind} exited with {self.daemon.proc.returncode}; its log:\n"
                             f"{self.daemon.log_text()[-3000:]}")

    def serving(self, port: int, host: str | None = None) -> bool:
        """One GET / on port answered 200 (BenchError if the daemon died meanwhile)."""
        self.check_alive()
        return get_once(port, 2.0, host).ok

    def wait_control(self) -> None:
        """Until the control interface answers a status request (StatusProbe)."""
        def answers() -> bool:
            self.check_alive()
            try:
                with self.status_probe() as probe:
                    probe.status()
                return True
            except (BenchError, OSError, zmq.ZMQError):
                return False

        poll_until(answers, READY_TIMEOUT_S, f"{self.kind} answering its control interface", interval_s=0.05)

    def children(self) -> list[psutil.Process]:
        """Every descendant of the daemon (recorded for cleanup)."""
        return self.daemon.record_children()

    def record_cmdlines(self) -> None:
        """Make the cleanup know the argv of every descendant (servers that start their own workers)."""
        for c in self.children():
            try:
                self.bench.known_cmdlines.append(c.cmdline())
            except psutil.Error:
                pass

    def exec_children(self, argv: list[str]) -> list[psutil.Process]:
        return self.daemon.exec_children(argv)

    def n_children(self) -> int:
        """Cheap: the daemon's direct children from /proc (exec'd or not)."""
        return len(child_pids(self.pid))

    def terminate(self, timeout_s: float = 120.0) -> int | None:
        """SIGTERM the daemon; return its exit code, or None if it had not exited after timeout_s (killed)."""
        self.send_term()
        return self.wait_exit(timeout_s)

    def send_term(self) -> None:
        assert self.daemon.proc is not None
        self.daemon.stopping = True
        self.daemon.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float = 120.0) -> int | None:
        """The daemon's exit code, once it has exited; None if it was still up after timeout_s (then killed)."""
        proc = self.daemon.proc
        assert proc is not None
        code = wait_exit(proc, timeout_s)
        if code is None:
            proc.kill()
            proc.wait()
        return code

    def ctl(self, *args: str) -> list[str]:
        raise NotImplementedError

    def run_ctl(self, *args: str) -> str:
        """The control CLI with args; its output (BenchError if it failed)."""
        return run_ctl(self.ctl(*args), f"{self.kind} {' '.join(args)}")

    def status_probe(self) -> "StatusProbe":
        raise NotImplementedError


class Procguard(System):
    kind = "procguard"
    held_fd = "{socket.%s.fd}"

    @property
    def endpoint(self) -> str:
        return self.daemon.endpoint

    def write_config(self) -> None:
        self.daemon.write_config(procguard_programs(self.programs, self.sockets))

    def start(self) -> None:
        self.daemon.start()  # python -m procguard -c CONFIG --log-format json --log-level info

    def ctl(self, *args: str) -> list[str]:
        return [PROCGUARDCTL, "-s", self.endpoint, *args]

    def status_probe(self) -> "StatusProbe":
        return ZmqProbe(self.endpoint, procguard=True)


class Supervisord(System):
    kind = "supervisord"

    @property
    def sock(self) -> Path:
        return self.work / "supervisor.sock"

    @property
    def conf(self) -> Path:
        return self.work / "supervisord.conf"

    def write_config(self) -> None:
        if self.sockets:
            raise BenchError("supervisord has no held sockets for a [program]")
        (self.work / "childlogs").mkdir(exist_ok=True)
        out = [f"""[unix_http_server]
file={self.sock}

[supervisord]
nodaemon=true
logfile={self.work}/supervisord.log
pidfile={self.work}/supervisord.pid
childlogdir={self.work}/childlogs
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.sock}
"""]
        for p in self.programs:
            # supervisord expands %(name)s in values: a literal % is written %%.
            cmd = shlex.join(p.argv).replace("%", "%%")
            lines = [f"[program:{p.name}]", f"command={cmd}", f"autostart={str(p.autostart).lower()}",
                     f"autorestart={str(p.autorestart).lower()}", "startsecs=0", "stopsignal=TERM",
                     f"stopwaitsecs={max(1, round(p.stopwaitsecs))}", "redirect_stderr=false",
                     f"stdout_logfile={p.stdout or 'NONE'}", "stderr_logfile=NONE"]
            if p.stdout:
                lines += ["stdout_logfile_maxbytes=0", "stdout_logfile_backups=0", "stdout_capture_maxbytes=0",
                          "stdout_events_enabled=false", "stdout_syslog=false"]
            if p.directory:
                lines.append(f"directory={p.directory}")
            out.append("\n".join(lines) + "\n")
        self.conf.write_text("\n".join(out))

    def daemon_argv(self) -> list[str]:
        return [SUPERVISORD, "-n", "-c", str(self.conf)]

    def ctl(self, *args: str) -> list[str]:
        return [SUPERVISORCTL, "-c", str(self.conf), *args]

    def status_probe(self) -> "StatusProbe":
        return XmlRpcProbe(str(self.sock))


class Circus(System):
    kind = "circus"
    held_fd = "$(circus.sockets.%s)"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.work}/control.sock"

    @property
    def conf(self) -> Path:
        return self.work / "circus.ini"

    def write_config(self) -> None:
        out = [f"""[circus]
endpoint = {self.endpoint}
pubsub_endpoint = ipc://{self.work}/pubsub.sock
check_delay = 1
statsd = false
httpd = false
loglevel = info
logoutput = {self.work}/circus.log
"""]
        for name, port in self.sockets.items():
            out.append(f"[socket:{name}]\nhost = 127.0.0.1\nport = {port}\n")
        for p in self.programs:
            lines = [f"[watcher:{p.name}]", f"cmd = {shlex.join(self.resolve(p.argv, p))}", "numprocesses = 1",
                     f"autostart = {str(p.autostart).lower()}", f"respawn = {str(p.autorestart).lower()}",
                     "warmup_delay = 0", "copy_env = true", "stop_signal = TERM",
                     f"graceful_timeout = {p.stopwaitsecs:g}", "close_child_stderr = true"]
            if p.stdout:
                lines += ["stdout_stream.class = FileStream", f"stdout_stream.filename = {p.stdout}",
                          "stdout_stream.max_bytes = 0"]
            else:
                lines.append("close_child_stdout = true")
            if p.directory:
                lines.append(f"working_dir = {p.directory}")
            if p.held_socket:
                lines.append("use_sockets = true")
            out.append("\n".join(lines) + "\n")
        self.conf.write_text("\n".join(out))

    def daemon_argv(self) -> list[str]:
        return [CIRCUSD, str(self.conf)]

    def ctl(self, *args: str) -> list[str]:
        return [CIRCUSCTL, "--endpoint", self.endpoint, "--timeout", str(int(CTL_TIMEOUT_S)), *args]

    def status_probe(self) -> "StatusProbe":
        return ZmqProbe(self.endpoint, procguard=False)


KINDS: dict[str, type[System]] = {"procguard": Procguard, "supervisord": Supervisord, "circus": Circus}


def make(kind: str, bench: Bench, name: str, programs: list[Program], sockets: dict[str, int] | None = None) -> System:
    return KINDS[kind](bench, name, programs, sockets)
