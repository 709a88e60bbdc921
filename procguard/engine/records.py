"""The frozen records the engine hands out: status snapshots, replace outcomes, command results."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from procguard.engine.states import Health, Hold, ProcessState, ReplacePhase, ReplaceTrigger

if TYPE_CHECKING:
    from procguard.engine.process import Process


@dataclass(frozen=True, slots=True)
class ReplaceOutcome:
    """How the last replace of one process by its next generation ended (status: last_deploy)."""

    at: float  # wall clock (time.time()) when it ended
    ok: bool
    trigger: ReplaceTrigger
    generation: int  # the next generation's number
    pid: int | None  # the next generation's pid
    step: ReplacePhase  # SUCCEEDED, or the phase it failed in
    reason: str  # why it failed ("" when ok)


class ProcessStatus(NamedTuple):
    """A snapshot of one process for status replies.

    A NamedTuple, not a frozen dataclass: status builds one per process per request, and a frozen
    dataclass's __init__ (object.__setattr__ per field) cost 3x as much (1000 processes, #17).
    """

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
    health: Health | None = None  # None: no check
    health_reason: str = ""  # the last failed check's reason
    status_text: str = ""  # the last STATUS= the process sent on its NOTIFY_SOCKET
    autostart: bool = True
    priority: int = 999
    restarts: int = 0  # spawns procguard began by itself (see Process.restarts)
    generation: int = 1
    next: "ProcessStatus | None" = None  # the next generation while a replace runs
    replace_phase: ReplacePhase | None = None
    last_deploy: ReplaceOutcome | None = None
    completed: bool = False  # a one-shot job that exited as expected: done, not down


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What one command (start, stop, restart, deploy, signal) did to one process."""

    name: str
    ok: bool
    state: ProcessState
    message: str
    # What the outcome was when it was not a plain success, as a protocol error code (E_ALREADY_STARTED,
    # E_NOT_RUNNING, E_START_FAILED): clients map it to their texts and exit codes, never the message.
    error: str | None = None
    # A replace (deploy, an overlapping restart) also says how it went:
    pid: int | None = None
    generation: int = 1
    step: ReplacePhase | None = None  # SUCCEEDED, or where it stopped; None: no replace was tried
    overlapped: bool = False  # False: stopped, then started (restart_strategy = "recreate", or no held sockets)
    tried: int | None = None  # the next generation that failed (its own output is the reply's `output`)


# States in which status shows an uptime (from the spawn), and those in which it shows the health.
UP_STATES = frozenset({ProcessState.RUNNING, ProcessState.STARTING, ProcessState.STOPPING})
CHECKED_STATES = frozenset({ProcessState.STARTING, ProcessState.RUNNING})


def shown_spawn(proc: "Process") -> float | None:
    """The spawn time status counts uptime and started_at from (monotonic), None if it shows none."""
    return proc.spawned_at if proc.state in UP_STATES and proc.spawned_at else None


def shown_retry(proc: "Process") -> float | None:
    """When the next try is due (monotonic) if status shows a retry_in_s: in BACKOFF only."""
    return proc.retry_at if proc.state == ProcessState.BACKOFF else None


def snapshot(proc: "Process", now_monotonic: float, now_wall: float) -> ProcessStatus:
    """proc as status shows it now (uptime and started_at from its spawn, retry_in_s while in BACKOFF)."""
    uptime = None
    started = None
    spawned_at = shown_spawn(proc)
    if spawned_at is not None:
        uptime = now_monotonic - spawned_at
        started = now_wall - uptime
    retry_in = None
    retry_at = shown_retry(proc)
    if retry_at is not None:
        retry_in = max(0.0, retry_at - now_monotonic)
    return ProcessStatus(
        name=proc.name,
        program=proc.program.name,
        state=proc.state,
        pid=proc.live_pid,
        started_at=started,
        uptime_s=uptime,
        exit_status=proc.exit_status,
        reason=proc.reason,
        retry_in_s=retry_in,
        failures=proc.failures,
        health=proc.health if proc.state in CHECKED_STATES else None,
        health_reason=proc.health_reason,
        status_text=proc.status_text,
        autostart=proc.program.autostart,
        priority=proc.program.priority,
        restarts=proc.restarts,
        generation=proc.generation,
        completed=proc.state == ProcessState.EXITED and proc.hold == Hold.COMPLETED,
    )


def status_key(proc: "Process") -> tuple[object, ...]:
    """Everything snapshot() reads of proc: equal keys, equal snapshots at the same instant.

    Status replies cache each process's encoded object under this key (control/statusview.py): a field
    added to ProcessStatus must be read here too (tests/unit/test_status_view.py checks the two lists).
    """
    return (proc.state, proc.live_pid, proc.spawned_at, proc.retry_at, proc.exit_status, proc.reason,
            proc.failures, proc.health, proc.health_reason, proc.status_text, proc.restarts, proc.generation,
            proc.hold, proc.program, proc.config)


__all__ = ["ActionResult", "CHECKED_STATES", "ProcessStatus", "ReplaceOutcome", "UP_STATES", "shown_retry",
           "shown_spawn", "snapshot", "status_key"]
