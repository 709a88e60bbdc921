"""Test support shipped with the package: a fake OS seam for the state machine, and program builders.

The fake seam records every call the engine makes and keeps a fake clock, so the state machine's rules
(timers, jitter bounds, escalation) can be pinned exactly; real-process tests remain the evidence.
"""

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from procguard.config.model import AutoRestart, ProcessConfig, ProgramConfig, SocketConfig
from procguard.engine.process import Process
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

