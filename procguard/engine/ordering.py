"""Which program goes when: priority levels and depends_on, at start-up, on `start`, in deploys, at shutdown.

Programs without depends_on start by priority level (lowest first): one level together, the next once
each of them is RUNNING (ready) or has failed (BACKOFF, FATAL), so a failing program never blocks boot.
A program with depends_on starts once each dependency is RUNNING or, for a oneshot, completed; a
dependency that gives up blocks it (its status says why). Shutdown goes the other way.
"""

import asyncio
from collections.abc import Iterable

from procguard.config.model import ProgramConfig, ProgramType
from procguard.engine.actions import stop_procs
from procguard.engine.changes import Changes
from procguard.engine.process import Process
from procguard.engine.records import ActionResult
from procguard.engine.registry import Registry
from procguard.engine.states import RESTING_STATES, Hold, ProcessState
from procguard.log import get_logger

log = get_logger()

# Each program brought up once per command: its outcome, (True, "") or (False, why).
Memo = dict[str, "asyncio.Task[tuple[bool, str]]"]

_STUCK = (ProcessState.BACKOFF, ProcessState.FATAL)


class Ordering:
    """Dependency and priority order over the programs of one registry."""

    def __init__(self, registry: Registry, changes: Changes) -> None:
        self._reg = registry
        self._changes = changes

    # ---------------------------------------------------------------------------------- start-up

    async def start_autostart(self, programs: Iterable[ProgramConfig]) -> None:
        """Start every autostart program of `programs`: by dependencies where there are some, else by priority."""
        memo: Memo = {}
        with_deps = [p.name for p in programs if p.autostart and p.depends_on]
        dependents = [asyncio.get_running_loop().create_task(self._bring_up(n, memo)) for n in with_deps]
        levels: dict[tuple[int, int], list[Process]] = {}
        for p in self._reg.processes():
            if p.program.autostart and not p.program.depends_on:
                levels.setdefault(p.program.start_order, []).append(p)

        async def start_level(procs: list[Process]) -> list[ActionResult]:
            for p in procs:
                if p.state in (ProcessState.STOPPED, ProcessState.EXITED):
                    p.start()
            await self._changes.until(procs, lambda p: p.state != ProcessState.STARTING)
            return []

        try:
            for prio in sorted(levels):
                # Under each program's lock, so a reload meanwhile queues behind (and may drop) this start.
                await self._reg.per_program(levels[prio], start_level)
            await asyncio.gather(*dependents)
        finally:
            for task in [*dependents, *memo.values()]:
                task.cancel()

    def is_settled(self) -> bool:
        """Initial start-up is done: every autostart process is RUNNING, EXITED, BACKOFF or FATAL, or
        waits for / is blocked by a dependency (systemd's READY=1 must not wait on a crash loop)."""
        for p in self._reg.processes():
            if not p.program.autostart:
                continue
            if p.state in (ProcessState.STARTING, ProcessState.STOPPING):
                return False
            if p.state == ProcessState.STOPPED and p.hold != Hold.BLOCKED:
                if p.hold != Hold.WAITING:
                    return False
                # Waiting counts as settled only while every dependency it waits on is itself stuck
                # (backing off or given up); one that just came up means this one starts next.
                for dep in p.program.depends_on:
                    if any(d.state not in _STUCK
                           and not (d.state == ProcessState.STOPPED and d.hold in (Hold.BLOCKED, Hold.WAITING))
                           for d in self._reg.get(dep)):
                        return False
        return True

    # ------------------------------------------------------------------------------ dependencies

    async def blocked(self, procs: list[Process]) -> dict[str, str]:
        """Bring up the dependencies of procs' programs; return the programs one of whose failed, and why."""
        memo: Memo = {}
        blocked: dict[str, str] = {}
        for name in dict.fromkeys(p.program.name for p in procs if p.program.depends_on):
            ok, why = await self._dependencies_up(name, memo)
            if not ok:
                blocked[name] = why
        return blocked

    async def dependencies_ready(self, name: str) -> tuple[bool, str]:
        """Bring up every dependency of program `name`; (False, why) when one fails."""
        memo: Memo = {}
        try:
            return await self._dependencies_up(name, memo)
        finally:
            for task in memo.values():
                task.cancel()

    async def _dependencies_up(self, name: str, memo: Memo) -> tuple[bool, str]:
        """Bring up every dependency of `name` (recursively, each once); (True, "") when all are satisfied."""
        deps = self._reg.depends_on(name)
        for dep in deps:
            if dep not in memo:
                memo[dep] = asyncio.get_running_loop().create_task(self._bring_up(dep, memo))
        for p in self._reg.get(name):
            if p.state in RESTING_STATES and deps:
                p.set_reason(Hold.WAITING, f"waiting for {', '.join(deps)}")
        for dep in deps:
            ok, why = await memo[dep]
            if not ok:
                return False, f"dependency {dep} failed: {why}"
        return True, ""

    async def _bring_up(self, name: str, memo: Memo) -> tuple[bool, str]:
        """Start program `name` after its own dependencies; wait until satisfied or given up."""
        ok, why = await self._dependencies_up(name, memo)
        procs = self._reg.get(name)
        if not ok:
            for p in procs:
                if p.state in RESTING_STATES:
                    p.set_reason(Hold.BLOCKED, f"blocked: {why}")
            log.error("program_blocked", program=name, reason=why)
            return False, why

        async def up(ps: list[Process]) -> list[ActionResult]:
            for p in ps:
                if p.state in RESTING_STATES and not p.is_satisfied:
                    p.start()
            # A service in BACKOFF may still come up: wait for RUNNING, or FATAL / a stop.
            await self._changes.until(ps, lambda p: p.is_satisfied or p.has_given_up)
            return []

        if procs:
            await self._reg.per_program(procs, up)
        failed = [p for p in self._reg.get(name) if not p.is_satisfied]
        if failed:
            return False, f"{failed[0].state}: {failed[0].reason}"
        return True, ""

    def dependency_order(self, names: list[str]) -> list[str]:
        """names with every program after the named programs it depends on (transitively); else config order."""
        order: list[str] = []

        def visit(n: str, seen: frozenset[str]) -> None:
            if n in order or n in seen:
                return
            for d in self._reg.depends_on(n):
                visit(d, seen | {n})
            if n in names:
                order.append(n)

        for n in names:
            visit(n, frozenset())
        return order

    def jobs_of(self, name: str) -> list[str]:
        """The one-shot programs `name` depends on (transitively), each after the jobs it depends on."""
        jobs: list[str] = []

        def visit(n: str) -> None:
            for d in self._reg.depends_on(n):
                dep = self._reg.get(d)
                if d not in jobs and dep:
                    visit(d)
                    if dep[0].program.type == ProgramType.ONESHOT and d not in jobs:
                        jobs.append(d)

        visit(name)
        return jobs

    # ---------------------------------------------------------------------------------- shutdown

    async def stop_all(self) -> None:
        """Stop everything: dependents before what they depend on, otherwise reverse priority.

        Each round stops, in parallel, the highest-priority-number programs among those no remaining
        program depends on.
        """
        remaining = dict(self._reg.programs)

        def start_order(name: str) -> tuple[int, int]:
            return remaining[name][0].program.start_order if remaining[name] else (0, 0)

        async def stop(procs: list[Process]) -> list[ActionResult]:
            return await stop_procs(procs, self._changes)

        while remaining:
            needed = {d for procs in remaining.values() for d in procs[0].program.depends_on if procs}
            free = [n for n in remaining if n not in needed] or list(remaining)  # cycles are refused at load
            top = max(start_order(n) for n in free)
            batch = [n for n in free if start_order(n) == top]
            await self._reg.per_program([p for n in batch for p in remaining.pop(n)], stop)


__all__ = ["Ordering"]
