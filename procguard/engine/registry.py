"""The programs in use: each program's processes, its lock, and the names commands resolve to processes.

Commands on one program queue on that program's lock; commands on different programs run at once.
There is no global busy lock.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from procguard.engine.process import Process
from procguard.engine.records import ActionResult
from procguard.errors import ControlError
from procguard.protocol import E_NO_SUCH_PROCESS


class Registry:
    """Processes by program name, in the config's priority order, and one lock per program."""

    def __init__(self) -> None:
        self.programs: dict[str, list[Process]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def put(self, name: str, procs: list[Process]) -> None:
        self.programs[name] = procs
        self.lock(name)

    def remove(self, name: str) -> None:
        del self.programs[name]

    def reorder(self, names: Iterable[str]) -> None:
        """Keep exactly `names`, in that order (status lists programs in the config's priority order)."""
        self.programs = {n: self.programs[n] for n in names}

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def get(self, name: str) -> list[Process]:
        return self.programs.get(name, [])

    def depends_on(self, name: str) -> tuple[str, ...]:
        procs = self.programs.get(name)
        return procs[0].program.depends_on if procs else ()

    def processes(self) -> list[Process]:
        return [p for procs in self.programs.values() for p in procs]

    def resolve(self, names: Iterable[str]) -> list[Process]:
        """Map names to processes, in config order; raise ControlError(no_such_process) naming every unknown name.

        Names: "all"; a program ("web": all its processes); a process as status names it ("web",
        "worker:worker_00", "group:web", "group:worker_00"); a group or program with ":*" or ":" (all of
        it); a [group.NAME] alone; "group:program" (that program's processes in the group).
        """
        procs, unknown = self.resolve_known(names)
        if unknown:
            raise ControlError(E_NO_SUCH_PROCESS, f"no such process: {', '.join(unknown)}")
        return procs

    def resolve_known(self, names: Iterable[str]) -> tuple[list[Process], list[str]]:
        """resolve() that returns the unknown names instead of raising, so a command acts on the known ones."""
        names = list(names)
        if not names or "all" in names:
            return self.processes(), []
        out: dict[Process, None] = {}
        unknown = []
        for name in names:
            chosen = self._match(name)
            if not chosen:
                unknown.append(name)
            out.update(dict.fromkeys(chosen))
        return list(out), unknown

    def _match(self, name: str) -> list[Process]:
        prefix, _, rest = name.partition(":")
        in_group = [p for p in self.processes() if p.program.group == prefix]
        procs = in_group or self.programs.get(prefix, [])
        if rest in ("", "*"):
            return procs
        return [p for p in procs if p.name == name or (in_group and p.program.name == rest)]

    async def per_program(
        self, procs: list[Process], action: Callable[[list[Process]], Awaitable[list[ActionResult]]]
    ) -> list[ActionResult]:
        """Run `action` for each program's share of `procs` under that program's lock, programs in parallel."""
        by_prog: dict[str, list[Process]] = {}
        for p in procs:
            by_prog.setdefault(p.program.name, []).append(p)

        async def one(prog: str, ps: list[Process]) -> list[ActionResult]:
            async with self.lock(prog):
                # After waiting for the lock, drop processes a reload removed meanwhile.
                live = [p for p in ps if p in self.programs.get(prog, [])]
                return await action(live)

        results = await asyncio.gather(*(one(k, v) for k, v in by_prog.items()))
        return in_order([r for rs in results for r in rs], procs)


def in_order(results: Iterable[ActionResult], procs: list[Process]) -> list[ActionResult]:
    """results sorted as their processes are in procs (the order the command's names resolved to)."""
    order = {p.name: i for i, p in enumerate(procs)}
    return sorted(results, key=lambda r: order.get(r.name, 0))


__all__ = ["Registry", "in_order"]
