"""Deploys and overlapping replaces: the supervisor's side of two generations (docs/deploys.md).

`Deployer` runs `deploy` (one-shot dependencies again, then each service replaced by its next
generation, numprocs rolled a batch at a time) and every other overlapping replace (restart, a reload
that changes the program, health / max_age / max_memory recycles). Each process's replace is a
`replace.Replacement`; this module creates the next generation's `Process`, waits for the outcome under
the program's lock, swaps the next generation into the program's list, and keeps each process's last
outcome for status. It works on the supervisor's registry (program table and locks) and its changes.
"""

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from procguard.config.model import ProcessConfig, ProgramConfig, ProgramType
from procguard.engine.actions import start_procs, stop_procs
from procguard.engine.changes import Changes
from procguard.engine.ordering import Ordering
from procguard.engine.process import Process
from procguard.engine.records import ActionResult, ProcessStatus, ReplaceOutcome, snapshot
from procguard.engine.registry import Registry
from procguard.engine.replace import Replacement
from procguard.engine.states import RESTING_STATES, ProcessState, ReplacePhase, ReplaceTrigger
from procguard.log import get_logger
from procguard.runtime.seam import OSApi

log = get_logger()


def _result(p: Process, ok: bool, message: str, step: ReplacePhase, *, overlapped: bool,
            tried: int | None = None) -> ActionResult:
    """What a deploy (or an overlapping restart) did to process p."""
    return ActionResult(p.name, ok, p.state, message, pid=p.pid, generation=p.generation, step=step,
                        overlapped=overlapped, tried=tried)


class Deployer:
    """Overlapping replaces for one Supervisor."""

    def __init__(self, registry: Registry, changes: Changes, ordering: Ordering, osapi: OSApi,
                 new_process: Callable[[ProgramConfig, ProcessConfig], Process],
                 own: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._reg = registry
        self._changes = changes
        self._ordering = ordering
        self._os = osapi
        self._new_process = new_process  # a Process wired to the supervisor (state changes, events)
        self._own = own  # runs a background task the supervisor owns
        self._running: dict[Process, Replacement] = {}  # by current and by next generation
        self.outcomes: dict[str, ReplaceOutcome] = {}  # by process name
        self._closing = False  # the daemon is stopping: no replace begins any more

    # ------------------------------------------------------------------------------ engine glue

    def changed(self, proc: Process, new: ProcessState) -> None:
        """Every state change of every process (Supervisor.on_change) reaches its replace here."""
        r = self._running.get(proc)
        if r is None:
            return
        if proc is r.next:
            r.next_changed(new)
        else:
            r.current_changed(new)

    def _phase(self, r: Replacement) -> None:
        fields = {"program": r.current.program.name, "process": r.current.name, "generation": r.next.generation,
                  "pid": r.next.pid, "previous_pid": r.current.pid, "trigger": str(r.trigger)}
        if r.phase == ReplacePhase.FAILED:
            log.warning("deploy_failed", step=str(r.failed_in), reason=r.reason, **fields)
        elif r.phase == ReplacePhase.SUCCEEDED:
            log.info("deploy_succeeded", **fields)
        else:
            log.info("deploy_step", step=str(r.phase), **fields)

    def annotate(self, st: ProcessStatus, proc: Process, now_m: float, now_w: float) -> ProcessStatus:
        """The status of a process with its next generation (while a replace runs) and last outcome."""
        r = self._running.get(proc)
        nxt = snapshot(r.next, now_m, now_w) if r is not None and not r.done else None
        phase = r.phase if r is not None and not r.done else None
        return st._replace(next=nxt, replace_phase=phase, last_deploy=self.outcomes.get(proc.name))

    def replacing(self) -> set[Process]:
        """The processes whose replace is under way: annotate() adds their next generation to status."""
        return {p for p, r in self._running.items() if not r.done}

    def abort_all(self, reason: str) -> None:
        """The daemon is stopping: give up every replace that has not switched, and begin no other."""
        self._closing = True
        for r in set(self._running.values()):
            r.abort(reason)

    def recycle(self, proc: Process, why: str, trigger: ReplaceTrigger) -> bool:
        """Process.on_replace: a health / max_age / max_memory recycle, replaced in the background."""
        if proc in self._running:
            return True  # a replace is under way already
        self._own(self._recycle(proc, why, trigger))
        return True

    async def _recycle(self, proc: Process, why: str, trigger: ReplaceTrigger) -> None:
        async with self._reg.lock(proc.program.name):
            if proc not in self._reg.get(proc.program.name) or proc.state != ProcessState.RUNNING:
                return
            log.info("process_replacing", program=proc.program.name, process=proc.name, reason=why)
            result = await self.replace(proc, trigger)
        if not result.ok and proc.state == ProcessState.RUNNING:
            # Its next generation could not take over: recycle as before, stop then start in place.
            proc.restart(why, trigger, overlap=False)

    # ----------------------------------------------------------------------------------- replace

    async def replace(self, proc: Process, trigger: ReplaceTrigger, program: ProgramConfig | None = None) -> ActionResult:
        """Replace one RUNNING process by its next generation (with `program`: a reload's new config).

        The caller holds the program's lock. Returns when the next generation serves and the current one
        has stopped, or when the next generation failed and is gone.
        """
        if self._closing:
            return _result(proc, False, "procguard is shutting down", ReplacePhase.PREPARING, overlapped=True)
        program = program or proc.program
        config = next(pc for pc in program.processes if pc.name == proc.name)
        nxt = self._new_process(program, config)
        done = asyncio.Event()

        def on_phase(r: Replacement) -> None:
            self._phase(r)
            if r.done:
                done.set()

        r = Replacement(proc, nxt, self._os, trigger, on_phase)
        self._running[proc] = self._running[nxt] = r
        log.info("deploy_started", program=program.name, process=proc.name, generation=nxt.generation,
                 pid=None, previous_pid=proc.pid, trigger=str(trigger))
        try:
            r.begin()
            await done.wait()
        finally:
            self._running.pop(proc, None)
            self._running.pop(nxt, None)
        ok = r.phase == ReplacePhase.SUCCEEDED
        if ok:
            procs = self._reg.get(program.name)
            if proc in procs:
                procs[procs.index(proc)] = nxt
            self._os.forget(proc)
        self.outcomes[proc.name] = ReplaceOutcome(
            at=time.time(), ok=ok, trigger=trigger, generation=nxt.generation, pid=nxt.pid if ok else r.next.pid,
            step=ReplacePhase.SUCCEEDED if ok else r.failed_in, reason=r.reason)
        serving = nxt if ok else proc
        message = (f"generation {nxt.generation} (pid {nxt.pid}) took over from pid {proc.pid}" if ok
                   else f"generation {nxt.generation} failed while {r.failed_in}: {r.reason}; "
                        f"generation {proc.generation} (pid {proc.pid}) still serves")
        return _result(serving, ok, message, ReplacePhase.SUCCEEDED if ok else r.failed_in, overlapped=True,
                       tried=None if ok else nxt.generation)

    async def replace_procs(self, procs: list[Process], trigger: ReplaceTrigger,
                            program: ProgramConfig | None = None) -> list[ActionResult]:
        """Replace procs (of one program, lock held): overlapping where it can, a batch (roll_batch) at a time,
        each gated on the readiness of the one before; the first failure stops the roll."""
        results: list[ActionResult] = []
        prog = program or (procs[0].program if procs else None)
        if prog is None:
            return results
        running = [p for p in procs if p.state == ProcessState.RUNNING]
        others = [p for p in procs if p not in running]
        if not prog.overlaps or not procs[0].program.overlaps:
            return await self._recreate(procs, trigger)
        batch = max(1, prog.roll_batch)
        for i in range(0, len(running), batch):
            group = running[i:i + batch]
            done = await asyncio.gather(*(self.replace(p, trigger, program) for p in group))
            results.extend(done)
            if not all(r.ok for r in done):
                rest = running[i + batch:]
                results.extend(_result(p, False, "not replaced: the roll stopped at a failure",
                                       ReplacePhase.PREPARING, overlapped=True) for p in rest)
                return results
        if others:
            # Nothing serves there to keep: start them (a deploy also brings up what was down).
            results.extend(await self._recreate(others, trigger))
        return results

    async def _recreate(self, procs: list[Process], trigger: ReplaceTrigger) -> list[ActionResult]:
        """Stop, then start (restart_strategy = "recreate", no held sockets, or nothing running)."""
        await stop_procs(procs, self._changes, drain=True)
        started = await start_procs(procs, self._changes, self._os.monotonic)
        results = []
        for p, r in zip(procs, started):
            ok = p.is_satisfied  # RUNNING, or a one-shot job that completed
            step = ReplacePhase.SUCCEEDED if ok else ReplacePhase.STARTING
            self.outcomes[p.name] = ReplaceOutcome(at=time.time(), ok=ok, trigger=trigger, generation=p.generation,
                                                   pid=p.pid, step=step, reason="" if ok else r.message)
            results.append(_result(p, ok, p.reason if ok and not r.ok else r.message, step, overlapped=False))
        return results

    def abort(self, procs: list[Process], reason: str) -> None:
        """Give up the replaces of procs that have not switched yet (an operator's stop)."""
        for p in procs:
            r = self._running.get(p)
            if r is not None:
                r.abort(reason)

    # ------------------------------------------------------------------------------------ deploy

    async def deploy(self, names: Iterable[str]) -> list[ActionResult]:
        """`procguardctl deploy`: for each named program in dependency order, its one-shot dependencies
        again (the first failure stops the deploy before any service is touched), then its processes
        replaced. Stops at the first program whose next generation failed."""
        wanted: dict[str, list[Process]] = {}
        for p in self._reg.resolve(names):
            wanted.setdefault(p.program.name, []).append(p)
        results: list[ActionResult] = []
        stopped_at: str | None = None
        jobs_run: set[str] = set()  # each one-shot job runs once per deploy
        for name in self._ordering.dependency_order(list(wanted)):
            if stopped_at is not None:
                results.extend(_result(p, False, f"not deployed: {stopped_at}", ReplacePhase.JOBS, overlapped=False)
                               for p in wanted[name])
                continue
            if name in jobs_run:
                results.extend(_result(p, True, f"ran again as a dependency ({p.reason})", ReplacePhase.SUCCEEDED,
                                       overlapped=False) for p in wanted[name])
                continue
            ok, why = await self._jobs_again(name, jobs_run)
            if not ok:
                stopped_at = f"{name}'s {why}"
                results.extend(self._jobs_failed(name, wanted[name], why))
                continue
            async with self._reg.lock(name):
                live = [p for p in self._reg.get(name) if p.name in {w.name for w in wanted[name]}]
                done = await self.replace_procs(live, ReplaceTrigger.DEPLOY)
            results.extend(done)
            if not all(r.ok for r in done):
                stopped_at = f"{name} failed"
            elif wanted[name][0].program.type == ProgramType.ONESHOT:
                jobs_run.add(name)  # named itself, and it ran: its dependents need not run it again
        return results

    def _jobs_failed(self, name: str, procs: list[Process], why: str) -> list[ActionResult]:
        """A job of program `name` failed: nothing of procs is replaced; log and keep the outcome."""
        results = []
        for p in procs:
            log.warning("deploy_failed", program=name, process=p.name, generation=p.generation + 1, pid=p.pid,
                        step=str(ReplacePhase.JOBS), reason=why, trigger=str(ReplaceTrigger.DEPLOY))
            self.outcomes[p.name] = ReplaceOutcome(
                at=time.time(), ok=False, trigger=ReplaceTrigger.DEPLOY, generation=p.generation + 1,
                pid=None, step=ReplacePhase.JOBS, reason=why)
            results.append(_result(p, False, f"{why}; nothing was replaced", ReplacePhase.JOBS, overlapped=False))
        return results

    async def _jobs_again(self, name: str, jobs_run: set[str]) -> tuple[bool, str]:
        """Run `name`'s one-shot dependencies again (transitively, dependencies first; those in jobs_run
        already ran in this deploy), then make sure its other dependencies are up; (False, why) at the
        first that fails."""
        for job in [j for j in self._ordering.jobs_of(name) if j not in jobs_run]:
            async with self._reg.lock(job):
                procs = self._reg.get(job)
                log.info("deploy_step", program=name, step=str(ReplacePhase.JOBS), job=job,
                         trigger=str(ReplaceTrigger.DEPLOY), generation=None, pid=None)
                for p in procs:
                    if p.state in RESTING_STATES or p.state == ProcessState.BACKOFF:
                        p.stop()  # BACKOFF -> STOPPED; a resting one stays
                        p.start()
                await self._changes.until(procs, lambda p: p.is_satisfied or p.has_given_up)
                failed = [p for p in procs if not p.is_satisfied]
                if failed:
                    return False, f"job {job} failed: {failed[0].reason}"
                jobs_run.add(job)
        return await self._ordering.dependencies_ready(name)


__all__ = ["Deployer"]
