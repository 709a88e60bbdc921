"""The three supervisors under test, one interface: write a config, start, ask for status, stop.

procguard (`python -m procguard`), supervisord 4 (PyPI `supervisor`) and circus (PyPI `circus`), all
run from the venv this module runs in, each as a real daemon in its own directory under the suite's
temp dir. A `Program` describes what to supervise once; each `System` renders it into its own config
with the keys that mean the same thing (the table below), so every workload runs identical children.

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

Choices that could favour one side (repeated in RESULTS.md):
- Whom the stop signal reaches is each one's default: procguard the process group (stopasgroup =
  true, its documented safer default), supervisord and circus the process only. Same for `sleep`.
- Up means "exec'd" (psutil), not each daemon's RUNNING: supervisord reports RUNNING about 1 s after
  the spawn even with startsecs = 0 (its next loop tick), so start-up figures favour supervisord.
- procguard and supervisord still give a NONE stream a pipe and drain it; circus has no "discard"
  stream, so its children get /dev/null (close_child_*): no pipes to create, watch or close. Favours
  circus slightly at start-up and shutdown.
- procguard: `backoff_reset = "0"` for the respawn workload only. By default procguard backs a process
  off (1 s) when it dies within 10 s of starting, even after RUNNING; supervisord and circus never back
  off a process that reached RUNNING, so this setting gives procguard their semantics.
- circus: `check_delay` (1 s, its default) is the period of its reap-and-respawn poll; circus has no
  SIGCHLD handler, so respawn latency is that poll. A smaller check_delay would favour circus at the
  cost of idle CPU; left at the default, as are supervisord's 1 s poll timeout (not configurable).
- circus: `copy_env = true`, so children see this script's environment as under supervisord; procguard
  passes its base environment (docs/configuration.md). `statsd` and `httpd` off (its defaults).
- supervisord has no held socket for a [program]: an [fcgi-program] socket is closed when the group's
  last process stops, so a restart refuses connections there too. Its gunicorn binds the port itself.
- Logging: procguard at info as JSON to a file; supervisord at info to its logfile; circus at info to
  its logoutput file. Each writes a line or more per process state change.
- Each daemon is the venv's Python (the same interpreter binary), run as this script's user.

Status over the wire (server side) is timed with one client kept in this process, the request
encoded before the clock starts and the clock stopped when the whole reply has arrived, before any
decoding: procguard a ZeroMQ DEALER (`status`), circus a ZeroMQ DEALER (its `status` command, JSON),
supervisord XML-RPC `supervisor.getAllProcessInfo` over its UNIX socket (HTTP/1.0, one connection per
request: connecting to a UNIX socket costs microseconds).
"""

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from bench_engine import Bench, BenchError, Daemon, child_pids, poll_until

REPO = Path(__file__).resolve().parent.parent
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
CTL_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 120.0


def peer_missing(system: str) -> str | None:
    """Why `system` cannot run here (not installed, or does not start), or None."""
    if system == "supervisord":
        for exe in (SUPERVISORD, SUPERVISORCTL):
            if not os.path.exists(exe):
                return f"{exe} missing: .venv/bin/python -m pip install -e '.[bench]'"
    if system == "circus":
        for exe in (CIRCUSD, CIRCUSCTL):
            if not os.path.exists(exe):
                return f"{exe} missing: .venv/bin/python -m pip install -e '.[bench]'"
    return None


def version_of(system: str) -> str:
    try:
        if system == "procguard":
            from importlib.metadata import version
            return version("procguard")
        if system == "supervisord":
            return subprocess.run([SUPERVISORD, "--version"], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        if system == "circus":
            from importlib.metadata import version
            return version("circus")
    except Exception as exc:  # a version string is informative only
        return f"unknown ({exc})"
    return "unknown"


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


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCGUARD_", "CIRCUS"))}
    env["NO_COLOR"] = "1"
    return env


def run_ctl(argv: list[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> str:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=CTL_TIMEOUT_S,
                           env=clean_env(), cwd="/")
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no answer within {CTL_TIMEOUT_S}s: {argv}") from None
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    if p.returncode not in ok_codes:
        raise BenchError(f"{what}: {argv} exited {p.returncode}: {out.strip()[-2000:]}")
    return out


class System:
    """One daemon of one kind on a list of programs; its Daemon is owned (and cleaned up) by `bench`."""

    kind = ""

    def __init__(self, bench: Bench, name: str, programs: list[Program],
                 sockets: dict[str, int] | None = None) -> None:
        self.bench = bench
        self.programs = programs
        self.sockets = sockets or {}
        # bench_engine's Daemon: its directory, its cleanup (TERM, 60 s, KILL), child recording.
        self.daemon: Daemon = bench.daemon(f"{self.kind}-{name}", "")
        self.work = self.daemon.work
        for p in programs:
            bench.known_cmdlines.append(list(self.resolve(p.argv, p)))
        self.write_config()

    # -- config
    def resolve(self, argv: tuple[str, ...], p: Program) -> tuple[str, ...]:
        return argv

    def write_config(self) -> None:
        raise NotImplementedError

    # -- life cycle
    @property
    def pid(self) -> int:
        return self.daemon.pid

    @property
    def popen_mono(self) -> float:
        return self.daemon.popen_mono

    def start(self) -> None:
        """Popen the daemon (its Popen time is `popen_mono`); does not wait for anything."""
        raise NotImplementedError

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def check_alive(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is not None and not self.daemon.stopping:
            raise BenchError(f"{self.kind} exited with {self.daemon.proc.returncode}; its log:\n"
                             f"{self.daemon.log_text()[-3000:]}")

    def wait_control(self) -> None:
        """Until the control interface answers a status request (peers.StatusProbe)."""
        def answers() -> bool:
            self.check_alive()
            probe = self.status_probe()
            try:
                probe.status()
                return True
            except (BenchError, OSError, zmq.ZMQError):
                return False
            finally:
                probe.close()

        poll_until(answers, READY_TIMEOUT_S, f"{self.kind} answering its control interface", interval_s=0.05)

    def children(self) -> list[psutil.Process]:
        """Direct children of the daemon (recorded for cleanup)."""
        return self.daemon.record_children()

    def exec_children(self, argv: list[str]) -> list[psutil.Process]:
        out = []
        for c in self.children():
            try:
                if c.cmdline() == argv and c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

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
        # The exit is seen through a pidfd (readable once it is a zombie, pidfd_open(2)): Popen.wait(timeout)
        # polls with sleeps of up to 50 ms.
        pidfd = os.pidfd_open(proc.pid)
        try:
            exited = bool(select.select([pidfd], [], [], timeout_s)[0])
        finally:
            os.close(pidfd)
        if not exited:
            proc.kill()
            proc.wait()
            return None
        return proc.wait()

    # -- control
    def ctl(self, *args: str) -> list[str]:
        raise NotImplementedError

    def status_probe(self) -> "StatusProbe":
        raise NotImplementedError

    def _popen(self, argv: list[str]) -> None:
        d = self.daemon
        with open(d.logfile, "ab") as log:
            d.popen_wall, d.popen_mono = time.time(), time.monotonic()
            d.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(self.work),
                                      env=clean_env())


def toml_str(s: str) -> str:
    return json.dumps(s)


class Procguard(System):
    kind = "procguard"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.work}/run/control.sock"

    def resolve(self, argv: tuple[str, ...], p: Program) -> tuple[str, ...]:
        return tuple(a.replace(HELD_FD, "{socket.%s.fd}" % p.held_socket) for a in argv)

    def write_config(self) -> None:
        out = [f'[procguard]\nlogdir = "{self.work}/logs"\nloglevel = "info"\ncontrol = "{self.endpoint}"\n']
        for name, port in self.sockets.items():
            out.append(f'[socket.{name}]\nbind = "tcp://127.0.0.1:{port}"\n')
        for p in self.programs:
            lines = [f"[program.{p.name}]", f"command = {json.dumps(list(self.resolve(p.argv, p)))}",
                     f"autostart = {str(p.autostart).lower()}", f"autorestart = {str(p.autorestart).lower()}",
                     "startsecs = 0", f'stdout_logfile = {toml_str(p.stdout or "NONE")}',
                     'stderr_logfile = "NONE"', f'stopwaitsecs = "{p.stopwaitsecs:g}s"']
            if p.stdout:
                lines.append("stdout_logfile_maxbytes = 0")
            if p.directory:
                lines.append(f"directory = {toml_str(p.directory)}")
            if p.held_socket:
                lines.append(f'sockets = ["{p.held_socket}"]')
            if p.server:
                lines.append(f'server = "{p.server}"')
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.procguard_keys.items()]
            out.append("\n".join(lines) + "\n")
        self.daemon.config.write_text("\n".join(out))

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

    def start(self) -> None:
        self._popen([SUPERVISORD, "-n", "-c", str(self.conf)])

    def ctl(self, *args: str) -> list[str]:
        return [SUPERVISORCTL, "-c", str(self.conf), *args]

    def status_probe(self) -> "StatusProbe":
        return XmlRpcProbe(str(self.sock))


class Circus(System):
    kind = "circus"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.work}/control.sock"

    @property
    def conf(self) -> Path:
        return self.work / "circus.ini"

    def resolve(self, argv: tuple[str, ...], p: Program) -> tuple[str, ...]:
        return tuple(a.replace(HELD_FD, "$(circus.sockets.%s)" % p.held_socket) for a in argv)

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

    def start(self) -> None:
        self._popen([CIRCUSD, str(self.conf)])

    def ctl(self, *args: str) -> list[str]:
        return [CIRCUSCTL, "--endpoint", self.endpoint, "--timeout", str(int(CTL_TIMEOUT_S)), *args]

    def status_probe(self) -> "StatusProbe":
        return ZmqProbe(self.endpoint, procguard=False)


KINDS: dict[str, type[System]] = {"procguard": Procguard, "supervisord": Supervisord, "circus": Circus}


def make(kind: str, bench: Bench, name: str, programs: list[Program], sockets: dict[str, int] | None = None) -> System:
    return KINDS[kind](bench, name, programs, sockets)


# ------------------------------------------------------------------------------- status on the wire


class StatusProbe:
    def status(self) -> tuple[float, int]:
        """One round trip: (ms from sending the encoded request to having the whole reply, entries in it)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class ZmqProbe(StatusProbe):
    """A DEALER kept connected: procguard's and circus's control sockets are both ZeroMQ ROUTERs."""

    def __init__(self, endpoint: str, procguard: bool) -> None:
        self.ctx = zmq.Context()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvtimeo = int(CTL_TIMEOUT_S * 1000)
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self.procguard = procguard

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def _frame(self) -> tuple[str, bytes]:
        rid = uuid.uuid4().hex
        if self.procguard:
            from procguard.protocol import encode_request
            return rid, encode_request("status", {}, rid)
        # circus/client.py make_message + CircusClient.call: one JSON frame, reply carries the same id.
        return rid, json.dumps({"id": rid, "command": "status", "properties": {}}).encode()

    def status(self) -> tuple[float, int]:
        rid, frame = self._frame()
        t0 = time.perf_counter()
        self.sock.send(frame)
        try:
            reply = self.sock.recv()
        except zmq.Again:
            raise BenchError(f"no reply to status from {self.endpoint} within {CTL_TIMEOUT_S}s") from None
        dt = (time.perf_counter() - t0) * 1e3
        msg = json.loads(reply)
        if self.procguard:
            if msg.get("id") != rid or msg.get("ok") is not True or not isinstance(msg.get("result"), list):
                raise BenchError(f"unexpected procguard reply: {reply[:300]!r}")
            return dt, len(msg["result"])
        if msg.get("id") != rid or msg.get("status") != "ok" or not isinstance(msg.get("statuses"), dict):
            raise BenchError(f"unexpected circus reply: {reply[:300]!r}")
        return dt, len(msg["statuses"])


class XmlRpcProbe(StatusProbe):
    """supervisord's XML-RPC over its UNIX socket: supervisor.getAllProcessInfo, as supervisorctl asks."""

    BODY = (b"<?xml version='1.0'?>\n<methodCall>\n<methodName>supervisor.getAllProcessInfo</methodName>\n"
            b"<params>\n</params>\n</methodCall>\n")

    def __init__(self, path: str) -> None:
        self.path = path
        self.request = (b"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(self.BODY)) + self.BODY

    def status(self) -> tuple[float, int]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(CTL_TIMEOUT_S)
        chunks = []
        try:
            t0 = time.perf_counter()
            s.connect(self.path)
            s.sendall(self.request)
            while True:  # HTTP/1.0: the server closes after the reply
                b = s.recv(1 << 16)
                if not b:
                    break
                chunks.append(b)
            dt = (time.perf_counter() - t0) * 1e3
        except TimeoutError:
            raise BenchError(f"no reply from supervisord at {self.path} within {CTL_TIMEOUT_S}s") from None
        finally:
            s.close()
        reply = b"".join(chunks)
        if not reply.startswith(b"HTTP/1.0 200") or b"<fault>" in reply:
            raise BenchError(f"unexpected supervisord reply: {reply[:300]!r}")
        return dt, reply.count(b"<name>group</name>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
