"""The two moves every command is made of: start processes, stop processes, each until they settle."""

from collections.abc import Callable

from procguard.config.model import ProgramType
from procguard.engine.changes import Changes
from procguard.engine.process import Process
from procguard.engine.records import ActionResult
from procguard.engine.states import RESTING_STATES, ProcessState
from procguard.protocol import E_ALREADY_STARTED, E_NOT_RUNNING, E_START_FAILED


async def start_procs(procs: list[Process], changes: Changes, monotonic: Callable[[], float]) -> list[ActionResult]:
    """Start procs; return once each is RUNNING or has failed (BACKOFF, FATAL), or a job has run."""
    already = {p for p in procs if not p.start() and p.state == ProcessState.RUNNING}
    await changes.until(procs, lambda p: p.state not in (ProcessState.STARTING, ProcessState.STOPPING))
    results = []
    for p in procs:
        if p.state == ProcessState.RUNNING:
            results.append(ActionResult(p.name, True, p.state, "already running" if p in already else "started",
                                        E_ALREADY_STARTED if p in already else None))
        elif p.program.type == ProgramType.ONESHOT and p.is_satisfied:
            results.append(ActionResult(p.name, True, p.state, p.reason))  # a job that ran: started, and done
        else:
            msg = p.reason
            if p.state == ProcessState.BACKOFF and p.retry_at is not None:
                msg += f", retry in {max(0.0, p.retry_at - monotonic()):.0f}s"
            results.append(ActionResult(p.name, False, p.state, msg, E_START_FAILED))
    return results


async def stop_procs(procs: list[Process], changes: Changes, *, drain: bool = False) -> list[ActionResult]:
    """Stop procs; return once each is at rest (drain: a restart's stop, see Process.stop)."""
    was_at_rest = {p for p in procs if p.state in RESTING_STATES}
    for p in procs:
        p.stop(drain=drain)
    await changes.until(procs, lambda p: p.state in RESTING_STATES)
    return [ActionResult(p.name, True, p.state, "not running" if p in was_at_rest else "stopped",
                         E_NOT_RUNNING if p in was_at_rest else None) for p in procs]


__all__ = ["start_procs", "stop_procs"]
