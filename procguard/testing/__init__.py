"""Test support shipped with the package: a fake OS seam for the state machine, program builders, and
a real daemon driven over its real control socket (RealDaemon, for tests and benchmarks alike).

The fake seam records every call the engine makes and keeps a fake clock, so the state machine's rules
(timers, jitter bounds, escalation) can be pinned exactly; real-process tests remain the evidence.
"""

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self, TypeVar

import psutil
import zmq
import zmq.auth

from procguard.config.model import AutoRestart, ProcessConfig, ProgramConfig, SocketConfig
from procguard.engine.process import Process
from procguard.protocol import client_settings_from_config, encode_request
from procguard.runtime.seam import CheckRoute


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeSockets:
    applied: list[tuple[SocketConfig, ...]] = field(default_factory=list)

    def apply(self, configs: tuple[SocketConfig, ...], users: dict[str, int] | None = None) -> None:
        self.applied.append(configs)


@dataclass
class FakeOS:
    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)
    spawned: list[Process] = field(default_factory=list)
    signals: list[tuple[int, int, bool]] = field(default_factory=list)
    groups_alive: set[int] = field(default_factory=set)
    strays_scanned: list[tuple[Process, int | None]] = field(default_factory=list)
    hold_scans: bool = False  # leave scans unanswered until answer_scan() (the real seam answers later)
    drains: list[Callable[[], None]] = field(default_factory=list)
    answered: int = 0
    sockets: FakeSockets = field(default_factory=FakeSockets)
    commands: list[tuple[str, ...]] = field(default_factory=list)  # spawn_command's argv, each run exiting 0
    prepared: list[tuple[Process, Callable[[str | None], None]]] = field(default_factory=list)
    switches: list[tuple[Process, Process, Callable[[], None]]] = field(default_factory=list)
    discarded: list[Process] = field(default_factory=list)
    forgotten: list[Process] = field(default_factory=list)
    retired: list[Process] = field(default_factory=list)
    orphan_drains: list[tuple[Process, int, Callable[[], None]]] = field(default_factory=list)
    tree_rss_bytes: dict[int, int] = field(default_factory=dict)  # tree_rss's answer by pid (absent: gone)

    async def spawn_command(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]":
        self.commands.append(tuple(argv))
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.set_result(0)
        return 10_000 + len(self.commands), done

    async def tree_rss(self, pid: int) -> int | None:
        return self.tree_rss_bytes.get(pid)

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> FakeTimer:
        t = FakeTimer(self.now + delay_s, callback)
        self.timers.append(t)
        return t

    def spawn(self, process: Process) -> None:
        self.spawned.append(process)

    def send_signal(self, pid: int, sig: int, *, group: bool) -> None:
        self.signals.append((pid, sig, group))

    def is_group_alive(self, pgid: int) -> bool:
        return pgid in self.groups_alive

    def is_alive(self, pid: int) -> bool:
        return pid in self.groups_alive

    def find_strays(self, process: Process, *, leader: int | None) -> None:
        self.strays_scanned.append((process, leader))
        if not self.hold_scans:
            process.add_strays([])

    def answer_scan(self, pids: list[int]) -> None:
        """Answer the oldest scan still held."""
        process, _ = self.strays_scanned[self.answered]
        self.answered += 1
        process.add_strays(pids)

    def drain(self, process: Process, done: Callable[[], None]) -> None:
        self.drains.append(done)

    def prepare_next(self, process: Process, done: Callable[[str | None], None]) -> None:
        self.prepared.append((process, done))

    def switch_to_next(self, current: Process, nxt: Process, done: Callable[[], None]) -> None:
        self.switches.append((current, nxt, done))

    def discard_next(self, process: Process) -> None:
        self.discarded.append(process)

    def check_route(self, process: Process) -> CheckRoute | None:
        return None

    def forget(self, process: Process) -> None:
        self.forgotten.append(process)

    def retire(self, process: Process) -> None:
        self.retired.append(process)

    def drain_orphans(self, process: Process, pgid: int, done: Callable[[], None]) -> None:
        self.orphan_drains.append((process, pgid, done))

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in order."""
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.at <= end), key=lambda t: t.at)
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            self.now = t.at
            t.callback()
        self.now = end

    def pending_delay(self) -> float:
        live = [t.at - self.now for t in self.timers if not t.cancelled]
        assert len(live) == 1, live
        return live[0]


def program(**over: object) -> ProgramConfig:
    """A one-process program named web with supervisor's keys set, `over` replacing any field."""
    base = ProgramConfig(
        name="web", source="test.toml",
        processes=(ProcessConfig(name="web", process_num=0, command=("web",), directory=None, environment=(),
                                 stdout_logfile="NONE", stderr_logfile="NONE"),),
        user=None, uid=None, gid=None, extra_groups=None, umask=None, autostart=True,
        autorestart=AutoRestart.UNEXPECTED, exitcodes=(0,), startsecs=1.0, startretries=None,
        stopsignal=int(signal.SIGTERM), stopwaitsecs=10.0, stopasgroup=True, killasgroup=True, priority=999,
        redirect_stderr=False, backoff_initial=1.0, backoff_max=60.0, backoff_reset=10.0,
        stdout_logfile_maxbytes=0, stdout_logfile_backups=0, stdout_logfile_timestamps=False,
        stdout_tail_maxbytes=65536, stderr_logfile_maxbytes=0, stderr_logfile_backups=0,
        stderr_logfile_timestamps=False, stderr_tail_maxbytes=65536,
    )
    return replace(base, **over)  # type: ignore[arg-type]


def make(**over: object) -> tuple[Process, FakeOS, list[tuple[str, str]]]:
    fos = FakeOS()  # Process() takes an OSApi: mypy --strict proves FakeOS is the whole seam
    seen: list[tuple[str, str]] = []
    prog = program(**over)
    p = Process(prog, prog.processes[0], fos, lambda proc, old, new: seen.append((str(old), str(new))))
    return p, fos, seen


# ------------------------------------------------------------------------------------ a real daemon
# Below: a real `python -m procguard -c CONFIG` over its real control socket, for tests and benchmarks
# alike. No pytest here: benchmarks import this module.

CHECKOUT = Path(__file__).resolve().parents[2]  # `python -m procguard` run from here finds this tree
CTL: tuple[str, ...] = (sys.executable, "-m", "procguardctl")

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 10.0, what: str = "condition",
               interval_s: float = 0.02) -> T:
    """Poll `pred` until it returns something truthy; that value.

    Raises AssertionError naming `what` and the last value seen once `timeout` seconds have passed.
    """
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval_s)
        last = pred()
    return last


def alive(pid: int) -> bool:
    """True when pid runs and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _process_groups() -> list[tuple[int, int]]:
    """(pid, process group id) of every process /proc shows."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        out.append((int(entry.name), int(fields[2])))
    return out


def free_port() -> int:
    """A free loopback TCP port below the ephemeral range.

    A port from bind(0) is an ephemeral one: before the daemon binds it, an outgoing connection (a
    health check, a client) may take it as its local port, and the daemon's bind then fails.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class ControlClient:
    """A DEALER on a daemon's control socket: one request, then its reply, within a deadline.

    Connecting does not wait for the daemon: a DEALER queues requests for a peer it has not reached
    yet (zmq_connect(3)), so a request sent before the daemon binds is answered once it does. A tcp://
    endpoint needs the server's public key file and a client secret key file (CURVE).
    """

    def __init__(self, endpoint: str, server_key_file: str | None = None, client_key_file: str | None = None) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.reconnect_ivl = 10  # ms: the socket file appears once the daemon binds
        if endpoint.startswith("tcp://"):
            assert server_key_file and client_key_file, f"{endpoint}: CURVE needs a server and a client key"
            self.sock.curve_serverkey = zmq.auth.load_certificate(server_key_file)[0]
            public, secret = zmq.auth.load_certificate(client_key_file)
            assert secret is not None, f"{client_key_file}: no secret key"
            self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.connect(endpoint)
        self.endpoint = endpoint
        self._n = 0

    def send(self, cmd: str, args: Mapping[str, Any] | None = None) -> str:
        """Send one request; its id."""
        self._n += 1
        rid = f"t{self._n}"
        self.sock.send(encode_request(cmd, dict(args or {}), rid))
        return rid

    def reply(self, rid: str, timeout: float) -> dict[str, Any] | None:
        """The reply to request `rid` if it comes within `timeout` seconds (others are dropped), else None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                return None
            reply: dict[str, Any] = json.loads(self.sock.recv())
            if reply.get("id") == rid:
                return reply
        return None

    def request(self, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Send one command; its reply. Raises AssertionError if none comes within `timeout` seconds."""
        reply = self.reply(self.send(cmd, args), timeout)
        if reply is None:
            raise AssertionError(f"no reply to {cmd} {args} from {self.endpoint} within {timeout}s")
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)
        self._ctx.term()


class RealDaemon:
    """A real `python -m procguard -c CONFIG`, logging JSON lines into `logfile`.

    `start()` returns once the control socket answers a request; `request()` speaks the protocol on
    that socket, `ctl()` runs the real procguardctl against it. Every process the daemon is seen to
    start (its `process_spawned` events, its descendants whenever `track()` runs, and always just
    before the stop) is remembered with its start time, so `close()` can stop the daemon, then find
    and kill whatever it started that survived (pid reuse ruled out), and report those pids.
    """

    ctl_command: tuple[str, ...] = CTL  # how ctl() runs procguardctl
    # False when the daemon runs in another pid namespace: the pids its log names are not ours to track.
    logged_pids_are_ours = True

    def __init__(self, config: Path, *, logfile: Path | None = None, endpoint: str = "",
                 cwd: Path = CHECKOUT) -> None:
        self.config = config
        self.logfile = logfile if logfile is not None else config.with_suffix(".log")
        self.endpoint = endpoint  # "" until start() reads it from the config
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: dict[int, float] = {}  # pid -> create time, of everything seen started
        self._born = 0.0  # the daemon's create time: whatever it started was created after it
        self._client: ControlClient | None = None
        self._events: list[dict[str, Any]] = []  # the log's events up to byte _log_read
        self._log_read = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, *extra: str, wait: bool = True, env: Mapping[str, str] | None = None,
              launcher: Sequence[str] = (), timeout: float = 60.0) -> Self:
        """Run the daemon (under `launcher`'s argv, if any); with `wait`, until its socket answers.

        `env` is the daemon's whole environment (None: this process's). Raises AssertionError with the
        log if the daemon exits before it answers.
        """
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                [*launcher, sys.executable, "-m", "procguard", "-c", str(self.config), "--log-format", "json",
                 *extra],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(self.cwd),
                env=dict(env) if env is not None else None,
            )
        try:
            self._born = psutil.Process(self.proc.pid).create_time()
        except psutil.NoSuchProcess:  # it exited already: what it started (if anything) is in its log
            self._born = time.time() - 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the control socket answers a `version` request."""
        proc = self.proc
        assert proc is not None, "not started"
        client = self.client()
        rid = client.send("version")

        def answered() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode} before it answered:\n{self.log_text()}")
            return client.reply(rid, 0.05) is not None

        try:
            wait_until(answered, timeout, f"the control socket {self.endpoint} to answer", interval_s=0)
        finally:
            self.disconnect()  # the daemon sees no client of ours between requests

    # ---------------------------------------------------------------------------- control socket
    def client(self) -> ControlClient:
        """This daemon's ControlClient (connected on first use, kept until disconnect())."""
        if self._client is None:
            if not self.endpoint:
                self.endpoint = client_settings_from_config(str(self.config)).endpoint
            keys: tuple[str | None, str | None] = (None, None)
            if self.endpoint.startswith("tcp://"):  # the CURVE keys the config names for procguardctl
                settings = client_settings_from_config(str(self.config))
                keys = (settings.server_public_key_file, settings.client_secret_key_file)
            self._client = ControlClient(self.endpoint, *keys)
        return self._client

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def request(self, cmd: str, args: Mapping[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """Send one command on the control socket; its reply (AssertionError if none within `timeout`)."""
        return self.client().request(cmd, args, timeout)

    def ctl_argv(self, *args: str) -> list[str]:
        """The argv of procguardctl talking to this daemon."""
        return [*self.ctl_command, "-s", self.endpoint, *args]

    def ctl(self, *args: str, timeout: float = 120.0,
            env: Mapping[str, str] | None = None) -> "subprocess.CompletedProcess[str]":
        """Run procguardctl against this daemon; the finished process (stdout, stderr as text)."""
        return subprocess.run(self.ctl_argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None)

    def ctl_bytes(self, *args: str, timeout: float = 120.0) -> "subprocess.CompletedProcess[bytes]":
        """ctl(), with stdout and stderr as bytes."""
        return subprocess.run(self.ctl_argv(*args), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    # ---------------------------------------------------------------------------------- observing
    def log_text(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The daemon's log events named `name` (all without one) whose fields equal `match`."""
        return [ev for ev in self._read_events() if (name is None or ev.get("event") == name)
                and all(ev.get(k) == v for k, v in match.items())]

    def _read_events(self) -> list[dict[str, Any]]:
        """Every JSON event in the log so far; each call parses only the lines completed since the last
        (tests poll the log every few ms, and a debug log grows to megabytes)."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(self._log_read)
                chunk = f.read()
        except FileNotFoundError:
            return self._events
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits for its end
        self._log_read += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue  # not an event (a traceback on stderr)
            if isinstance(ev, dict):
                self._events.append(ev)
        return self._events

    def track(self, *pids: int) -> list[int]:
        """Remember `pids`, every pid the log says was spawned and every live descendant; all pids known."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                kids = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            pids = (*pids, *(k.pid for k in kids))
        spawned = (e.get("pid") for e in self.events("process_spawned")) if self.logged_pids_are_ours else ()
        for pid in (*pids, *(p for p in spawned if isinstance(p, int))):
            if pid not in self.started:
                try:
                    self.started[pid] = psutil.Process(pid).create_time()
                except psutil.NoSuchProcess:
                    pass
        return list(self.started)

    def track_groups(self) -> list[int]:
        """Also track every live process in a group led by a pid tracked so far; all pids known.

        The daemon starts each child in its own process group (pgid = the child's pid), so a child's
        workers are found here even once the daemon is gone and can no longer be walked from
        (they were reparented) and the log never named them. Only groups whose leader still runs as
        the very process tracked count (pids are reused within minutes where pid_max is 32768: a
        group id once ours may now be another test's), and only members created after the daemon.
        """
        ours = {os.getpid(), os.getpgrp()}
        groups = {pid for pid in self.started if pid not in ours and self._runs_as_tracked(pid)}
        members = [pid for pid, pgid in _process_groups() if pgid in groups and pid not in self.started]
        for pid in members:
            try:
                created = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                continue
            if created >= self._born:
                self.started[pid] = created
        return list(self.started)

    def _runs_as_tracked(self, pid: int) -> bool:
        """Is pid alive and the very process tracked (not a reuse of its pid)?"""
        try:
            return bool(psutil.Process(pid).create_time() == self.started[pid])
        except psutil.NoSuchProcess:
            return False

    def survivors(self) -> list[int]:
        """Pids this daemon started (as far as track() saw) that still run."""
        out = []
        for pid, created in self.started.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    # ------------------------------------------------------------------------------------ stopping
    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0, sig: int | None = None) -> int:
        """Send `sig` (default TERM: stop everything) unless it has exited; its exit code once it has."""
        assert self.proc is not None, "not started"
        self.track()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if sig is None else sig)
        return self.proc.wait(timeout)

    def close(self) -> list[int]:
        """Stop the daemon (SIGKILL after 30 s), then kill what it started that survived; those pids.

        Also when a test failed midway or the daemon died: the daemon is frozen (SIGSTOP) before it is
        killed, so the walk of its tree from /proc is complete (a stopped process forks nothing); after
        its exit the log is read again (spawns since the last look), and the process groups of what it
        started are searched (workers it never logged, reparented once it died).
        """
        self.track()  # also when it has already exited: its log still names what it spawned
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGSTOP)
                self.track()
                self.proc.kill()
                self.proc.wait()
        self.track()
        self.disconnect()
        left: list[int] = []
        for _ in range(3):  # a worker that forked between a look and its kill is found by the next look
            self.track_groups()
            found = [pid for pid in self.survivors() if pid not in left]
            if not found:
                break
            left += found
            killed = []
            for pid in found:
                try:
                    p = psutil.Process(pid)
                    p.kill()
                    killed.append(p)
                except psutil.NoSuchProcess:
                    pass
            try:
                psutil.wait_procs(killed, timeout=10)  # gone (or a zombie awaiting its parent) when we return
            except OSError:  # psutil's pidfd_open on a pid already gone (seen: ENOENT at a soak's end)
                pass
        return left
