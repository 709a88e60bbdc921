"""What supervisor's keys decide once a process exited: is it restarted, after how long, when does it give up.

Pure decisions on a program's config and a process's counters (no state, no I/O); `process.Process`
asks them and makes the transitions.
"""

import random

from procguard.config.model import AutoRestart, ProgramConfig, ProgramType
from procguard.engine.states import ExitReason, ProcessState


def exit_reason(program: ProgramConfig, state: ProcessState, status: int) -> ExitReason:
    """How an exit in `state` counts (metrics and top); status: os.waitstatus_to_exitcode."""
    if state == ProcessState.STOPPING:
        return ExitReason.STOPPED
    if state == ProcessState.STARTING and not (program.type == ProgramType.ONESHOT and status in program.exitcodes):
        return ExitReason.EARLY
    if status in program.exitcodes:
        return ExitReason.EXPECTED
    return ExitReason.SIGNAL if status < 0 else ExitReason.UNEXPECTED


def will_restart(program: ProgramConfig, expected: bool, *, trial: bool, retiring: bool) -> bool:
    """After an exit while RUNNING: does autorestart start it again? Never a trial (its exit ends its
    replace) nor a retiring generation (a newer one serves)."""
    restart = program.autorestart == AutoRestart.ALWAYS or (
        program.autorestart == AutoRestart.UNEXPECTED and not expected
    )
    return restart and not trial and not retiring


def start_limit(program: ProgramConfig, *, trial: bool) -> int | None:
    """How many failed starts in a row may be retried (None: no limit). A job that failed stays failed (and
    blocks its dependents) unless startretries says; a next generation that failed ends its replace (the
    current one keeps serving)."""
    if (program.startretries is None and program.type == ProgramType.ONESHOT) or trial:
        return 0
    return program.startretries


def backoff_delay(program: ProgramConfig, failures: int) -> float:
    """Exponential from backoff_initial, doubling per consecutive failure, capped at backoff_max.

    Jitter (up to -20%) keeps many programs that failed together (a database blip) from
    retrying in lockstep.
    """
    base = program.backoff_initial * 2.0 ** max(0, failures - 1)
    return min(program.backoff_max, base) * random.uniform(0.8, 1.0)


__all__ = ["backoff_delay", "exit_reason", "start_limit", "will_restart"]
