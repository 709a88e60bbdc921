"""Own the programs and their processes; the in-process control API the socket layer adapts.

Every command that takes time (start, stop, restart, reload) is a coroutine that returns when done.
Commands on one program queue on that program's lock; commands on different programs run at once.
There is no global busy lock.
"""

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

import structlog

from procguard.config.model import Config, ConfigDiff, ProgramConfig, diff_configs, diff_groups, load_config, process_groups
from procguard.engine.deploy import Deployer
from procguard.errors import ConfigError, ConfigIssue, ControlError
from procguard.protocol import (
    E_ALREADY_ADDED, E_ALREADY_STARTED, E_BAD_SIGNAL, E_NO_SUCH_PROCESS, E_NOT_RUNNING, E_START_FAILED, E_STILL_RUNNING,
)
from procguard.health.check import run_check
from procguard.io.listeners import SocketError
from procguard.engine.process import Process
from procguard.engine.records import ActionResult, ProcessStatus
from procguard.engine.states import RESTING_STATES, Hold, ProcessState, ReplaceTrigger
from procguard.runtime.seam import OSApi, describe_exit

log = structlog.get_logger()



class Supervisor:
    """All programs of one config; the daemon's single source of truth about processes."""

    def __init__(self, config: Config, osapi: OSApi, config_loader: Callable[[str], Config] = load_config) -> None:
        self.config = config
        self._os = osapi
        self._load = config_loader
        self._programs: dict[str, list[Process]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Per-process waiters: a change wakes only those waiting on that process (one shared event
        # made start-up quadratic: 107k wake-ups for 1000 programs, benchmarks/bench_engine.py).
        self._waiters: dict[Process, list[asyncio.Event]] = {}
        self._stopping: set[Process] = set()
        self._reload_lock = asyncio.Lock()
        self._loaded = config  # the config files as last read (reread): what `add` may put into use
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_any_change: Callable[[], None] = lambda: None  # after every state change (systemd STATUS=)
        self._changed: list[asyncio.Future[None]] = []
        self.deployer = Deployer(self)
        for prog in config.programs:
            self._add_program(prog)

    # -------------------------------------------------------------------------------- plumbing

    def _add_program(self, prog: ProgramConfig) -> None:
        procs = [Process(prog, pc, self._os, self._on_change) for pc in prog.processes]
        for p in procs:
            p.on_event = self._on_event
            p.on_replace = self.deployer.recycle
        self._programs[prog.name] = procs
        self._locks.setdefault(prog.name, asyncio.Lock())

    def _on_event(self, proc: Process, event: str, fields: dict[str, object]) -> None:
        """Log a process's event; the log is also the event stream (procguard.observe.events)."""
        level = "warning" if fields.get("new") == "unhealthy" or event == "process_recycled" else "info"
        getattr(log, level)(event, program=proc.program.name, process=proc.name, pid=proc.pid, **fields)

    def process_spawned(self, proc: Process) -> None:
        """A child exists (RealOS.on_spawned): start its health check and resource guard, if any."""
        if proc.program.healthcheck is not None:
            self._own(self._health_loop(proc, proc.pid))
        if proc.program.max_memory is not None:
            self._own(self._memory_loop(proc, proc.pid))

    def _own(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _health_loop(self, proc: Process, pid: int | None) -> None:
        """Check one spawn of a process every interval (sooner while it is not ready yet)."""
        hc = proc.program.healthcheck
        assert hc is not None
        program = proc.program

        def alive() -> bool:
            return proc.pid == pid and proc.state in (ProcessState.STARTING, ProcessState.RUNNING)

        loop = asyncio.get_running_loop()
        # While starting, check soon and then more slowly (0.1, 0.2, 0.4, 0.5 s ...): a server is
        # rarely listening the instant it is spawned. Once running, every `interval` from the start of
        # the previous check (not its end), with a random offset so programs started together are
        # not checked in lock-step.
        starting_delay = 0.1
        first_running = True
        try:
            await asyncio.sleep(min(hc.interval, 0.05))
            while alive():
                began = loop.time()
                result = await run_check(hc, uid=program.uid, gid=program.gid, extra_groups=program.extra_groups,
                                         env=dict(proc.config.environment), cwd=proc.config.directory,
                                         spawner=self._os.spawn_command,
                                         route=self._os.check_route(proc))
                if not alive():  # re-check after the await: it may have been stopped or restarted
                    return
                proc.health_check_s = loop.time() - began  # metrics: procguard_process_health_check_seconds
                if not result.ok:
                    log.debug("health_check_failed", process=proc.name, pid=pid, reason=result.reason)
                proc.health_result(result.ok, result.reason, answered=result.answered)
                if proc.state == ProcessState.RUNNING:
                    delay = hc.interval * (random.uniform(0.5, 1.0) if first_running else 1.0)
                    first_running = False
                else:
                    delay = min(hc.interval, starting_delay)
                    starting_delay = min(0.5, starting_delay * 2)
                await asyncio.sleep(max(0.0, began + delay - loop.time()))
        except Exception:  # task boundary: a checker bug must not go unnoticed, nor kill the daemon
            log.exception("health_loop_failed", process=proc.name)

    async def _memory_loop(self, proc: Process, pid: int | None) -> None:
        """Measure the process tree's RSS off the loop every resource_check_interval; recycle above max_memory."""
        limit = proc.program.max_memory
        assert limit is not None and pid is not None
        try:
            while proc.pid == pid and proc.state in (ProcessState.STARTING, ProcessState.RUNNING):
                rss = await self._os.tree_rss(pid)
                if rss is None or proc.pid != pid:
                    return
                if rss > limit and proc.state == ProcessState.RUNNING:
                    log.warning("process_recycled", program=proc.program.name, process=proc.name, pid=pid,
                                reason="max_memory", rss_bytes=rss, max_memory_bytes=limit)
                    proc.restart(f"max_memory: tree RSS {rss} bytes > {limit}", ReplaceTrigger.MAX_MEMORY)
                    return
                await asyncio.sleep(proc.program.resource_check_interval)
        except Exception:  # task boundary
            log.exception("memory_loop_failed", process=proc.name)

    def _on_change(self, proc: Process, old: ProcessState, new: ProcessState) -> None:
        fields: dict[str, object] = {
            "program": proc.program.name, "process": proc.name, "pid": proc.pid, "old": str(old), "new": str(new),
        }
        if proc.generation > 1:
            fields["generation"] = proc.generation
        if proc.exit_status is not None and new in (ProcessState.EXITED, ProcessState.BACKOFF, ProcessState.FATAL,
                                                     ProcessState.STOPPED):
            fields["exit"] = describe_exit(proc.exit_status)
            fields["exit_status"] = proc.exit_status
        expected = None
        if new == ProcessState.EXITED and proc.exit_status is not None:
            fields["expected"] = expected = proc.exit_status in proc.program.exitcodes
        if new == ProcessState.BACKOFF and proc.retry_at is not None:
            fields["retry_in_s"] = round(proc.retry_at - self._os.monotonic(), 3)
        if proc.reason and new not in (ProcessState.RUNNING, ProcessState.STARTING):
            fields["reason"] = proc.reason
        if new == ProcessState.FATAL:
            log.error("process_state_changed", **fields)
        elif new == ProcessState.BACKOFF or expected is False:
            log.warning("process_state_changed", **fields)
        else:
            log.info("process_state_changed", **fields)
        if new == ProcessState.STOPPING:
            self._stopping.add(proc)
        else:
            self._stopping.discard(proc)
        self.deployer.changed(proc, new)
        for event in self._waiters.pop(proc, ()):
            event.set()
        self.on_any_change()
        changed, self._changed = self._changed, []
        for fut in changed:
            if not fut.done():
                fut.set_result(None)

    async def wait_change(self) -> None:
        """Return after the next state change of any process."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed.append(fut)
        await fut

    def start_settled(self) -> bool:
        """Initial start-up is done: every autostart process is RUNNING, EXITED, BACKOFF or FATAL, or
        waits for / is blocked by a dependency (systemd's READY=1 must not wait on a crash loop)."""
        for p in self.processes():
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
                    if any(d.state not in (ProcessState.BACKOFF, ProcessState.FATAL)
                           and not (d.state == ProcessState.STOPPED and d.hold in (Hold.BLOCKED, Hold.WAITING))
                           for d in self._programs.get(dep, [])):
                        return False
        return True

    def counts(self) -> str:
        """'5 running, 1 backoff': how many processes are in each state, for systemd's STATUS=."""
        by_state: dict[str, int] = {}
        for p in self.processes():
            by_state[str(p.state).lower()] = by_state.get(str(p.state).lower(), 0) + 1
        order = ["running", "starting", "backoff", "stopping", "stopped", "exited", "fatal"]
        return ", ".join(f"{by_state[s]} {s}" for s in order if s in by_state) or "no programs"

    async def _wait(self, procs: list[Process], done: Callable[[Process], bool]) -> None:
        """Return once done(p) holds for every p; each waits only on its own process's changes."""
        for p in procs:
            while not done(p):
                event = asyncio.Event()
                self._waiters.setdefault(p, []).append(event)
                await event.wait()

    def processes(self) -> list[Process]:
        return [p for procs in self._programs.values() for p in procs]

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
        procs = in_group or self._programs.get(prefix, [])
        if rest in ("", "*"):
            return procs
        return [p for p in procs if p.name == name or (in_group and p.program.name == rest)]

    async def _per_program(
        self, procs: list[Process], action: Callable[[list[Process]], Awaitable[list[ActionResult]]]
    ) -> list[ActionResult]:
        """Run `action` for each program's share of `procs` under that program's lock, programs in parallel."""
        by_prog: dict[str, list[Process]] = {}
        for p in procs:
            by_prog.setdefault(p.program.name, []).append(p)

        async def one(prog: str, ps: list[Process]) -> list[ActionResult]:
            async with self._locks[prog]:
                # After waiting for the lock, drop processes a reload removed meanwhile.
                live = [p for p in ps if p in self._programs.get(prog, [])]
                return await action(live)

        results = await asyncio.gather(*(one(k, v) for k, v in by_prog.items()))
        order = {p.name: i for i, p in enumerate(procs)}
        return sorted((r for rs in results for r in rs), key=lambda r: order.get(r.name, 0))

    # ---------------------------------------------------------------------------- control API

    def status(self, names: Iterable[str] = ()) -> list[ProcessStatus]:
        now_m, now_w = self._os.monotonic(), time.time()
        return [self.deployer.annotate(p.status(now_m, now_w), p, now_m, now_w) for p in self.resolve(names)]

    async def deploy(self, names: Iterable[str]) -> list[ActionResult]:
        """Replace programs by their next generation, one-shot dependencies first (deploy.Deployer.deploy)."""
        return await self.deployer.deploy(names)

    async def start(self, names: Iterable[str]) -> list[ActionResult]:
        """Start processes and wait until each is RUNNING or has failed (BACKOFF, FATAL).

        A program's dependencies (depends_on) are brought up first; if one fails, the program is not
        started and its result says which dependency and why.
        """
        procs = self.resolve(names)
        memo: dict[str, asyncio.Task[tuple[bool, str]]] = {}
        blocked: dict[str, str] = {}
        for name in dict.fromkeys(p.program.name for p in procs if p.program.depends_on):
            ok, why = await self._dependencies_up(name, memo)
            if not ok:
                blocked[name] = why
        results = await self._per_program([p for p in procs if p.program.name not in blocked], self._start_procs)
        for p in procs:
            if p.program.name in blocked:
                p.set_reason(Hold.BLOCKED, f"blocked: {blocked[p.program.name]}")
                results.append(ActionResult(p.name, False, p.state, p.reason, E_START_FAILED))
        order = {p.name: i for i, p in enumerate(procs)}
        return sorted(results, key=lambda r: order.get(r.name, 0))

    # ---------------------------------------------------------------------------- dependencies

    @staticmethod
    def _satisfied(p: Process) -> bool:
        """A dependency is satisfied by a RUNNING service or a oneshot that completed."""
        if p.program.type == "oneshot":
            return p.state == ProcessState.EXITED and p.hold == Hold.COMPLETED
        return p.state == ProcessState.RUNNING

    @staticmethod
    def _given_up(p: Process) -> bool:
        """No longer on its way up: FATAL, or at rest without having completed."""
        return p.state == ProcessState.FATAL or (p.state in RESTING_STATES and not Supervisor._satisfied(p))

    async def _dependencies_up(self, name: str, memo: dict[str, "asyncio.Task[tuple[bool, str]]"]) -> tuple[bool, str]:
        """Bring up every dependency of `name` (recursively, each once); (True, "") when all are satisfied."""
        procs = self._programs.get(name, [])
        deps = procs[0].program.depends_on if procs else ()
        for dep in deps:
            if dep not in memo:
                memo[dep] = asyncio.get_running_loop().create_task(self._bring_up(dep, memo))
        for p in procs:
            if p.state in RESTING_STATES and deps:
                p.set_reason(Hold.WAITING, f"waiting for {', '.join(deps)}")
        for dep in deps:
            ok, why = await memo[dep]
            if not ok:
                return False, f"dependency {dep} failed: {why}"
        return True, ""

    async def _bring_up(self, name: str, memo: dict[str, "asyncio.Task[tuple[bool, str]]"]) -> tuple[bool, str]:
        """Start program `name` after its own dependencies; wait until satisfied or given up."""
        ok, why = await self._dependencies_up(name, memo)
        procs = self._programs.get(name, [])
        if not ok:
            for p in procs:
                if p.state in RESTING_STATES:
                    p.set_reason(Hold.BLOCKED, f"blocked: {why}")
            log.error("program_blocked", program=name, reason=why)
            return False, why

        async def up(ps: list[Process]) -> list[ActionResult]:
            for p in ps:
                if p.state in RESTING_STATES and not self._satisfied(p):
                    p.start()
            # A service in BACKOFF may still come up: wait for RUNNING, or FATAL / a stop.
            await self._wait(ps, lambda p: self._satisfied(p) or self._given_up(p))
            return []

        if procs:
            await self._per_program(procs, up)
        procs = self._programs.get(name, [])
        failed = [p for p in procs if not self._satisfied(p)]
        if failed:
            return False, f"{failed[0].state}: {failed[0].reason}"
        return True, ""

    async def stop(self, names: Iterable[str]) -> list[ActionResult]:
        """Stop processes and wait until each is STOPPED (SIGKILL after stopwaitsecs); a replace of one
        under way that has not switched yet is given up first (its next generation stops)."""
        procs = self.resolve(names)
        self.deployer.abort(procs, "stopped by the operator")
        return await self._per_program(procs, self._stop_procs)

    async def restart(self, names: Iterable[str]) -> tuple[list[ActionResult], list[ActionResult]]:
        """Stop, then start, each program's processes under one hold of its lock; a program on held sockets
        is replaced by its next generation instead (restart_strategy, docs/deploys.md).

        Returns the stop results and the start results, each in the order the names resolved to.
        """
        stopped: list[ActionResult] = []

        async def both(procs: list[Process]) -> list[ActionResult]:
            if procs and procs[0].program.overlaps:
                done = await self.deployer.replace_procs(procs, ReplaceTrigger.RESTART)
                return [ActionResult(r.name, r.ok, r.state, r.message)
                        for r in done]
            stopped.extend(await self._stop_procs(procs, drain=True))  # drain_timeout: see Process.stop
            return await self._start_procs(procs)

        procs = self.resolve(names)
        for p in procs:
            self._on_event(p, "process_restarting", {"cause": "restart", "reason": "restart command"})
        started = await self._per_program(procs, both)
        order = {p.name: i for i, p in enumerate(procs)}
        return sorted(stopped, key=lambda r: order.get(r.name, 0)), started

    async def reload_app(self, names: Iterable[str]) -> list[ActionResult]:
        """Reload the app in place where its server can (reload_signal, e.g. gunicorn/uWSGI HUP), else restart.

        A signalled reload returns at once: the server replaces its workers by itself.
        """
        procs = self.resolve(names)
        signalled = [p for p in procs if p.program.reload_signal is not None]
        restarted = [p for p in procs if p.program.reload_signal is None]
        results: list[ActionResult] = []
        for p in signalled:
            assert p.program.reload_signal is not None
            sig = signal.Signals(p.program.reload_signal)
            if p.state == ProcessState.RUNNING and p.send(int(sig)):
                log.info("process_reload_signalled", process=p.name, pid=p.pid, signal=sig.name)
                results.append(ActionResult(p.name, True, p.state, f"reloading (sent {sig.name})"))
            else:
                results.append(ActionResult(p.name, False, p.state, "not running", E_NOT_RUNNING))
        if restarted:
            _, started = await self.restart([p.name for p in restarted])
            results.extend(ActionResult(r.name, r.ok, r.state, "restarted" if r.ok else r.message, r.error)
                           for r in started)
        order = {p.name: i for i, p in enumerate(procs)}
        return sorted(results, key=lambda r: order.get(r.name, 0))

    def signal(self, sig: int | str, names: Iterable[str]) -> list[ActionResult]:
        """Send a signal to each named process's main pid."""
        try:
            signum = signal.Signals[sig if str(sig).startswith("SIG") else f"SIG{sig}"] if isinstance(sig, str) else signal.Signals(sig)
        except (KeyError, ValueError):
            raise ControlError(E_BAD_SIGNAL, f"no such signal: {sig!r}") from None
        results = []
        for p in self.resolve(names):
            sent = p.send(int(signum))
            results.append(ActionResult(p.name, sent, p.state, f"sent {signum.name}" if sent else "not running",
                                        None if sent else E_NOT_RUNNING))
        return results

    async def _start_procs(self, procs: list[Process]) -> list[ActionResult]:
        already = {p for p in procs if not p.start() and p.state == ProcessState.RUNNING}

        def settled(p: Process) -> bool:
            return p.state not in (ProcessState.STARTING, ProcessState.STOPPING)

        await self._wait(procs, settled)
        results = []
        for p in procs:
            if p.state == ProcessState.RUNNING:
                results.append(ActionResult(p.name, True, p.state, "already running" if p in already else "started",
                                            E_ALREADY_STARTED if p in already else None))
            elif p.program.type == "oneshot" and self._satisfied(p):
                results.append(ActionResult(p.name, True, p.state, p.reason))  # a job that ran: started, and done
            else:
                msg = p.reason
                if p.state == ProcessState.BACKOFF and p.retry_at is not None:
                    msg += f", retry in {max(0.0, p.retry_at - self._os.monotonic()):.0f}s"
                results.append(ActionResult(p.name, False, p.state, msg, E_START_FAILED))
        return results

    async def _stop_procs(self, procs: list[Process], *, drain: bool = False) -> list[ActionResult]:
        was_at_rest = {p for p in procs if p.state in RESTING_STATES}
        for p in procs:
            p.stop(drain=drain)
        await self._wait(procs, lambda p: p.state in RESTING_STATES)
        return [ActionResult(p.name, True, p.state, "not running" if p in was_at_rest else "stopped",
                             E_NOT_RUNNING if p in was_at_rest else None) for p in procs]

    async def start_autostart(self) -> None:
        """Start every autostart program: by dependencies where there are some, else by priority.

        Programs without depends_on start by priority level (lowest first): one level together, the
        next once each of them is RUNNING (ready) or has failed (BACKOFF, FATAL), so a failing program
        never blocks boot. A program with depends_on starts once each dependency is RUNNING or, for a
        oneshot, completed; a dependency that gives up blocks it (its status says why).
        """
        memo: dict[str, asyncio.Task[tuple[bool, str]]] = {}
        with_deps = [p.name for p in self.config.programs if p.autostart and p.depends_on]
        dependents = [asyncio.get_running_loop().create_task(self._bring_up(n, memo)) for n in with_deps]
        levels: dict[tuple[int, int], list[Process]] = {}
        for p in self.processes():
            if p.program.autostart and not p.program.depends_on:
                levels.setdefault(p.program.start_order, []).append(p)
        async def start_level(procs: list[Process]) -> list[ActionResult]:
            for p in procs:
                if p.state in (ProcessState.STOPPED, ProcessState.EXITED):
                    p.start()
            await self._wait(procs, lambda p: p.state != ProcessState.STARTING)
            return []

        try:
            for prio in sorted(levels):
                # Under each program's lock, so a reload meanwhile queues behind (and may drop) this start.
                await self._per_program(levels[prio], start_level)
            await asyncio.gather(*dependents)
        finally:
            for task in [*dependents, *memo.values()]:
                task.cancel()

    async def stop_all(self) -> None:
        """Stop everything: dependents before what they depend on, otherwise reverse priority.

        Each round stops, in parallel, the highest-priority-number programs among those no remaining
        program depends on.
        """
        self.deployer.abort_all("procguard is shutting down")
        remaining = dict(self._programs)
        while remaining:
            needed = {d for procs in remaining.values() for d in procs[0].program.depends_on if procs}
            free = [n for n in remaining if n not in needed] or list(remaining)  # cycles are refused at load
            top = max(remaining[n][0].program.start_order if remaining[n] else (0, 0) for n in free)
            batch = [n for n in free if (remaining[n][0].program.start_order if remaining[n] else (0, 0)) == top]
            await self._per_program([p for n in batch for p in remaining.pop(n)], self._stop_procs)
        for task in list(self.tasks):
            task.cancel()

    async def reload(self, path: str | None = None) -> ConfigDiff:
        """Re-read the config and apply the difference; touch only added, changed and removed programs.

        Raises ConfigError (and changes nothing) when the new config is bad.
        """
        async with self._reload_lock:
            new = await self._read(path or self.config.path)
            self._loaded = new
            return await self._apply(new, None)

    async def reread(self) -> ConfigDiff:
        """Read the config files and keep them for `add`; apply nothing (supervisorctl's reread).

        Returns what differs from the programs in use, by process group. Raises ConfigError.
        """
        async with self._reload_lock:
            self._loaded = await self._read(self.config.path)
            return diff_groups(self.config, self._loaded)

    async def update(self, groups: Iterable[str] = ()) -> tuple[ConfigDiff, list[str]]:
        """Re-read the config and apply it to the named process groups only (all when none are named).

        Returns the groups applied (by process group) and the names that are neither in use nor added.
        """
        async with self._reload_lock:
            new = self._loaded = await self._read(self.config.path)
            diff = diff_groups(self.config, new)
            chosen = set(groups) - {"all"}
            if not chosen:
                await self._apply(new, None)
                return diff, []
            known = set(process_groups(self.config)) | set(diff.added)
            await self._apply(new, chosen)
            return (ConfigDiff(*(tuple(g for g in bucket if g in chosen)
                                 for bucket in (diff.added, diff.changed, diff.removed))),
                    [g for g in groups if g not in known])

    async def add(self, group: str) -> str | None:
        """Put a process group that the last reread found into use (autostart programs start).

        Returns None, or why not as a protocol code: E_ALREADY_ADDED, E_NO_SUCH_PROCESS.
        """
        async with self._reload_lock:
            if group in process_groups(self.config):
                return E_ALREADY_ADDED
            if group not in diff_groups(self.config, self._loaded).added:
                return E_NO_SUCH_PROCESS
            await self._apply(self._loaded, {group})
            return None

    async def remove(self, group: str) -> str | None:
        """Take a stopped process group out of use (it stays in the config: reread shows it available).

        Returns None, or why not as a protocol code: E_NO_SUCH_PROCESS, E_STILL_RUNNING.
        """
        async with self._reload_lock:
            members = process_groups(self.config).get(group)
            if members is None:
                return E_NO_SUCH_PROCESS
            if any(p.state not in RESTING_STATES for n in members for p in self._programs.get(n, [])):
                return E_STILL_RUNNING
            without = replace(self.config, programs=tuple(p for p in self.config.programs if p.name not in members))
            await self._apply(without, {group})
            return None

    async def _read(self, path: str) -> Config:
        try:
            return await asyncio.to_thread(self._load, path)
        except ConfigError as exc:
            log.error("config_reload_refused", path=path, errors=[str(i) for i in exc.issues])
            raise

    async def _apply(self, new: Config, only: set[str] | None) -> ConfigDiff:
        """Make the programs in use match `new`, for the process groups in `only` (None: all of them).

        Stops removed and changed programs (draining a changed one, as restart does), starts added and
        changed autostart programs; programs outside `only` keep running as they are. Returns the
        program-level difference applied. Raises ConfigError when the held sockets cannot be bound.
        """
        diff = diff_configs(self.config, new)
        old_by_name = {p.name: p for p in self.config.programs}
        new_by_name = {p.name: p for p in new.programs}
        if only is not None:
            def chosen(name: str) -> bool:
                return any(p is not None and p.process_group in only
                           for p in (old_by_name.get(name), new_by_name.get(name)))

            diff = ConfigDiff(*(tuple(n for n in bucket if chosen(n))
                                for bucket in (diff.added, diff.changed, diff.removed)))
        # The config in force afterwards: the new version of what is applied, the old one of the rest.
        applied = {*diff.added, *diff.changed}
        kept = [p for p in self.config.programs if p.name not in applied and p.name not in diff.removed]
        programs = sorted([*kept, *(new_by_name[n] for n in applied)], key=lambda p: (*p.start_order, p.name))
        result = replace(new, programs=tuple(programs))
        try:
            self._os.sockets.apply(result.sockets, result.socket_users())
        except SocketError as exc:
            issue = ConfigIssue(new.path, None, "socket", str(exc))
            log.error("config_reload_refused", path=new.path, errors=[str(issue)])
            raise ConfigError([issue]) from None
        log.info("config_reloading", added=diff.added, changed=diff.changed, removed=diff.removed)
        # A socket rebound by apply() above is not the one the running generation holds: no overlap then.
        old_socks = {c.name: c for c in self.config.sockets}
        new_socks = {c.name: c for c in result.sockets}

        async def replace_program(name: str) -> None:
            async with self._locks.setdefault(name, asyncio.Lock()):
                old = self._programs.get(name, [])
                if name in applied and self._overlaps_across(old, new_by_name[name]) \
                        and all(old_socks.get(n) == new_socks.get(n) for n in new_by_name[name].sockets):
                    # Replaced by a next generation on the new config (a failed one leaves the old running).
                    await self.deployer.replace_procs(old, ReplaceTrigger.RELOAD, new_by_name[name])
                    return
                if old:
                    # A changed program restarts: like `restart`, it drains first (drain_timeout).
                    await self._stop_procs(old, drain=name in new_by_name)
                    del self._programs[name]
                    for p in old:
                        self._os.forget(p)
                if name in applied:
                    self._add_program(new_by_name[name])
                    if new_by_name[name].autostart:
                        await self._start_procs(self._programs[name])

        await asyncio.gather(*(replace_program(n) for n in (*diff.removed, *diff.changed, *diff.added)))
        # Keep the dict in the new config's priority order for status listings.
        self._programs = {p.name: self._programs[p.name] for p in result.programs}
        self.config = result
        log.info("config_reloaded", added=diff.added, changed=diff.changed, removed=diff.removed)
        return diff

    @staticmethod
    def _overlaps_across(old: list[Process], new: ProgramConfig) -> bool:
        """A reload can replace `old` by next generations of `new`: both overlap, on the same sockets and
        processes, and every old one runs (one that does not is simply started again on the new config)."""
        return bool(old) and old[0].program.overlaps and new.overlaps and old[0].program.sockets == new.sockets \
            and [p.name for p in old] == [pc.name for pc in new.processes] \
            and all(p.state == ProcessState.RUNNING for p in old)

    def child_reaped(self, pid: int) -> None:
        """Tell stopping processes that some child was reaped (a group member or stray may be gone)."""
        for p in list(self._stopping):
            p.child_reaped(pid)
