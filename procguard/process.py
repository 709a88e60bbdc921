"""One process's state machine: events in, calls on the OS seam out. No I/O here.

States are supervisor's, so scripts that parse `supervisorctl status` keep working:

    STOPPED --start--> STARTING --ready (startsecs up)--> RUNNING
    STARTING --exit / spawn failure--> BACKOFF --delay--> STARTING    (or FATAL once startretries is used up)
    RUNNING --exit--> EXITED --autorestart says so--> STARTING (at once after a stable run, else after a delay)
    STARTING/RUNNING --stop--> STOPPING --leader, group and strays gone--> STOPPED
    BACKOFF --stop--> STOPPED;  EXITED/FATAL --start--> STARTING

Events: `start`, `stop`, `spawned`, `spawn_failed`, `exited`, `child_reaped`, and timers the machine sets
itself through the seam. Every transition is reported to `on_change(process, old, new)`.
"""

import enum
import random
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from procguard.config import AutoRestart, ProcessConfig, ProgramConfig


class ProcessState(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


# States from which a process is not running and no timer will start it by itself.
RESTING_STATES = frozenset({ProcessState.STOPPED, ProcessState.EXITED, ProcessState.FATAL})


class Timer(Protocol):
    def cancel(self) -> None: ...


class OSApi(Protocol):
    """What the state machine needs from the world. `osapi.RealOS` is the real one."""

    def monotonic(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...

    def spawn(self, process: "Process") -> None:
        """Start the child off-loop; later call process.spawned(pid) or process.spawn_failed(reason)."""
        ...

    def send_signal(self, pid: int, sig: int, *, group: bool) -> None:
        """Signal pid (or its process group); a process already gone is not an error."""
        ...

    def is_group_alive(self, pgid: int) -> bool: ...

    def is_alive(self, pid: int) -> bool: ...

    def find_strays(self, process: "Process") -> None:
        """Look (off-loop) for descendants that left the process group; report via process.add_strays."""
        ...


def describe_exit(status: int) -> str:
    """Render a waitstatus-derived exit code as 'exit status 1' or 'terminated by SIGKILL'."""
    if status < 0:
        try:
            return f"terminated by {signal.Signals(-status).name}"
        except ValueError:
            return f"terminated by signal {-status}"
    return f"exit status {status}"


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """A snapshot of one process for status replies."""

    name: str
    program: str
    state: ProcessState
    pid: int | None
    started_at: float | None  # wall clock (time.time()) when RUNNING began or spawn happened
    uptime_s: float | None
    exit_status: int | None
    reason: str
    retry_in_s: float | None
    failures: int


class Process:
    """State machine for one process of a program."""

    def __init__(
        self,
        program: ProgramConfig,
        config: ProcessConfig,
        osapi: OSApi,
        on_change: Callable[["Process", ProcessState, ProcessState], None],
    ) -> None:
        self.program = program
        self.config = config
        self._os = osapi
        self._on_change = on_change
        self.state = ProcessState.STOPPED
        self.pid: int | None = None
        self.spawned_at: float | None = None  # monotonic
        self.exit_status: int | None = None  # os.waitstatus_to_exitcode of the last exit
        self.reason = "not started"
        self.failures = 0  # consecutive quick exits (drive the backoff delay)
        self.failed_starts = 0  # consecutive exits before RUNNING (drive FATAL, as supervisor's backoff)
        self.retry_at: float | None = None  # monotonic, while in BACKOFF
        self.strays: set[int] = set()
        self._leader_alive = False
        self._timer: Timer | None = None
        self._spawn_pending = False
        self._stop_after_spawn = False

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"<Process {self.name} {self.state} pid={self.pid}>"

    # ------------------------------------------------------------------------------------ commands

    def start(self) -> bool:
        """Begin starting; return False if the process is already starting, running or stopping."""
        if self.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING):
            return False
        if self.state in RESTING_STATES:
            # An operator's start is a fresh start: forget earlier failures (supervisor does the same).
            self.failures = 0
            self.failed_starts = 0
        self._cancel_timer()
        self._spawn()
        return True

    def stop(self) -> bool:
        """Begin stopping; return False if there is nothing to stop."""
        if self.state == ProcessState.BACKOFF:
            self._cancel_timer()
            self.reason = "stopped while waiting to retry"
            self._set(ProcessState.STOPPED)
            return True
        if self.state in (ProcessState.EXITED, ProcessState.FATAL):
            # Nothing runs, but the operator said stop: show it (supervisorctl does the same).
            self._set(ProcessState.STOPPED)
            return True
        if self.state not in (ProcessState.STARTING, ProcessState.RUNNING):
            return False
        self._cancel_timer()
        self.reason = "stopped"
        if self._spawn_pending:
            # The pid is not known yet: stop as soon as the spawn reports back.
            self._stop_after_spawn = True
            self._set(ProcessState.STOPPING)
            return True
        self._set(ProcessState.STOPPING)
        self._begin_stop()
        return True

    def _begin_stop(self) -> None:
        self._signal_all(self.program.stopsignal, group=self.program.stopasgroup)
        self._os.find_strays(self)
        self._timer = self._os.call_later(self.program.stopwaitsecs, self._stop_timed_out)
        self._check_stopped()

    def send(self, sig: int) -> bool:
        """Send an arbitrary signal to the running process; False when there is no process."""
        if self.pid is None or not self._leader_alive:
            return False
        self._os.send_signal(self.pid, sig, group=False)
        return True

    # -------------------------------------------------------------------------------------- events

    def spawned(self, pid: int) -> None:
        self._spawn_pending = False
        self.pid = pid
        self._leader_alive = True
        self.spawned_at = self._os.monotonic()
        if self._stop_after_spawn:
            self._stop_after_spawn = False
            self._begin_stop()
            return
        if self.program.startsecs <= 0:
            self._become_running()
        else:
            self._timer = self._os.call_later(self.program.startsecs, self._startsecs_elapsed)

    def spawn_failed(self, reason: str) -> None:
        self._spawn_pending = False
        self.pid = None
        self.reason = f"spawn failed: {reason}"
        if self._stop_after_spawn:
            self._stop_after_spawn = False
            self._set(ProcessState.STOPPED)
            return
        self._failed_start()

    def exited(self, status: int) -> None:
        """The leader was reaped; `status` is os.waitstatus_to_exitcode (negative: killed by signal)."""
        self._leader_alive = False
        self.exit_status = status
        ran_s = self._os.monotonic() - (self.spawned_at or self._os.monotonic())
        what = describe_exit(status)
        if self.state == ProcessState.STOPPING:
            self._check_stopped()
            return
        self._cancel_timer()
        if self.program.killasgroup and self.pid is not None and self._os.is_group_alive(self.pid):
            # The leader died but left workers behind: they would hold its port and block the restart.
            self._os.send_signal(self.pid, signal.SIGKILL, group=True)
        if self.state == ProcessState.STARTING:
            self.reason = f"exited too quickly ({what})"
            self._failed_start()
            return
        # RUNNING -> EXITED, then maybe restart.
        expected = status in self.program.exitcodes
        self.reason = f"{what}{'' if expected else ', not expected'}"
        self._set(ProcessState.EXITED)
        restart = self.program.autorestart == AutoRestart.ALWAYS or (
            self.program.autorestart == AutoRestart.UNEXPECTED and not expected
        )
        if not restart:
            return
        if ran_s >= self.program.backoff_reset:
            # A crash after a long healthy run: restart at once.
            self.failures = 0
            self._spawn()
        else:
            self.failures += 1
            self._backoff()

    def child_reaped(self, pid: int) -> None:
        """Some other child of the daemon was reaped: maybe one of our strays or group members."""
        self.strays.discard(pid)
        if self.state == ProcessState.STOPPING:
            self._check_stopped()

    def add_strays(self, pids: Iterable[int]) -> None:
        """Descendants found outside the process group: signal them too and wait for them."""
        if self.state != ProcessState.STOPPING:
            return
        new = set(pids) - self.strays
        self.strays |= new
        for pid in new:
            self._os.send_signal(pid, self.program.stopsignal, group=False)
        self._check_stopped()

    # ------------------------------------------------------------------------------------- helpers

    def _spawn(self) -> None:
        self.pid = None
        self.retry_at = None
        self.exit_status = None
        self._spawn_pending = True
        self.reason = "starting"
        self._set(ProcessState.STARTING)
        self._os.spawn(self)

    def _become_running(self) -> None:
        self.failed_starts = 0
        self.reason = ""
        self._set(ProcessState.RUNNING)
        # The backoff counter resets only after a stable run (see exited()): a process that dies
        # right after reaching RUNNING is still a crash loop.

    def _startsecs_elapsed(self) -> None:
        self._timer = None
        if self.state == ProcessState.STARTING and self._leader_alive:
            self._become_running()

    def _failed_start(self) -> None:
        self.failures += 1
        self.failed_starts += 1
        limit = self.program.startretries
        if limit is not None and self.failed_starts > limit:
            self.reason = f"{self.reason}; gave up after {self.failed_starts} failed starts (startretries = {limit})"
            self._set(ProcessState.FATAL)
            return
        self._backoff()

    def _backoff(self) -> None:
        delay_s = self.backoff_delay(self.failures)
        self.retry_at = self._os.monotonic() + delay_s
        self._set(ProcessState.BACKOFF)
        self._timer = self._os.call_later(delay_s, self._retry)

    def backoff_delay(self, failures: int) -> float:
        """Exponential from backoff_initial, doubling per consecutive failure, capped at backoff_max.

        Jitter (up to -20%) keeps many programs that failed together (a database blip) from
        retrying in lockstep.
        """
        base = self.program.backoff_initial * 2.0 ** max(0, failures - 1)
        return min(self.program.backoff_max, base) * random.uniform(0.8, 1.0)

    def _retry(self) -> None:
        self._timer = None
        if self.state == ProcessState.BACKOFF:
            self._spawn()

    def _stop_timed_out(self) -> None:
        self._timer = None
        if self.state != ProcessState.STOPPING:
            return
        self.reason = f"killed: did not stop within stopwaitsecs ({self.program.stopwaitsecs}s)"
        self._signal_all(signal.SIGKILL, group=self.program.killasgroup)
        for pid in self.strays:
            self._os.send_signal(pid, signal.SIGKILL, group=False)
        # Keep escalating until everything is gone (a process in D state may take a moment).
        self._timer = self._os.call_later(max(1.0, self.program.stopwaitsecs), self._stop_timed_out)

    def _signal_all(self, sig: int, *, group: bool) -> None:
        if self.pid is None:
            return
        if self._leader_alive or (group and self._os.is_group_alive(self.pid)):
            self._os.send_signal(self.pid, sig, group=group)

    def _check_stopped(self) -> None:
        if self.state != ProcessState.STOPPING or self._leader_alive or self._spawn_pending:
            return
        if self.pid is not None and self.program.stopasgroup and self._os.is_group_alive(self.pid):
            return
        # A stray that is not our child may have been reaped by its own parent: forget it once gone.
        self.strays = {pid for pid in self.strays if self._os.is_alive(pid)}
        if self.strays:
            return
        self._cancel_timer()
        self._set(ProcessState.STOPPED)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, new: ProcessState) -> None:
        old = self.state
        self.state = new
        self._on_change(self, old, new)

    def status(self, now_monotonic: float, now_wall: float) -> ProcessStatus:
        uptime = None
        started = None
        if self.state in (ProcessState.RUNNING, ProcessState.STARTING, ProcessState.STOPPING) and self.spawned_at:
            uptime = now_monotonic - self.spawned_at
            started = now_wall - uptime
        retry_in = None
        if self.state == ProcessState.BACKOFF and self.retry_at is not None:
            retry_in = max(0.0, self.retry_at - now_monotonic)
        return ProcessStatus(
            name=self.name,
            program=self.program.name,
            state=self.state,
            pid=self.pid if self._leader_alive else None,
            started_at=started,
            uptime_s=uptime,
            exit_status=self.exit_status,
            reason=self.reason,
            retry_in_s=retry_in,
            failures=self.failures,
        )


__all__ = ["OSApi", "Process", "ProcessState", "ProcessStatus", "describe_exit"]
