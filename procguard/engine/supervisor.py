"""Own the programs and their processes; the in-process control API the socket layer adapts.

Every command that takes time (start, stop, restart, reload) is a coroutine that returns when done.
Commands on one program queue on that program's lock (registry.py); commands on different programs run
at once. There is no global busy lock.
"""

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import replace
from typing import Any

from procguard.config.diff import diff_configs, diff_groups, process_groups
from procguard.config.load import load_config
from procguard.config.model import Config, ConfigDiff, ProcessConfig, ProgramConfig
from procguard.engine.actions import start_procs, stop_procs
from procguard.engine.changes import Changes
from procguard.engine.deploy import Deployer
from procguard.engine.monitors import monitors
from procguard.engine.ordering import Ordering
from procguard.engine.process import Process
from procguard.engine.records import ActionResult, ProcessStatus, snapshot
from procguard.engine.registry import Registry, in_order
from procguard.engine.states import RESTING_STATES, Health, Hold, ProcessState, ReplaceTrigger
from procguard.errors import ConfigError, ConfigIssue, ControlError
from procguard.io.listeners import SocketError
from procguard.log import get_logger
from procguard.protocol import (
    E_ALREADY_ADDED, E_BAD_SIGNAL, E_NO_SUCH_PROCESS, E_NOT_RUNNING, E_START_FAILED, E_STILL_RUNNING,
)
from procguard.runtime.seam import OSApi, describe_exit

log = get_logger()


class Supervisor:
    """All programs of one config; the daemon's single source of truth about processes."""

    def __init__(self, config: Config, osapi: OSApi, config_loader: Callable[[str], Config] = load_config) -> None:
        self.config = config
        self._os = osapi
        self._load = config_loader
        self._reg = Registry()
        self.changes = Changes()  # every state change: waiters and listeners (systemd STATUS=)
        self.ordering = Ordering(self._reg, self.changes)
        self._stopping: set[Process] = set()
        self._reload_lock = asyncio.Lock()
        self._loaded = config  # the config files as last read (reread): what `add` may put into use
        self.tasks: set[asyncio.Task[None]] = set()
        self.deployer = Deployer(self._reg, self.changes, self.ordering, osapi, self._new_process, self._own)
        for prog in config.programs:
            self._add_program(prog)

    # -------------------------------------------------------------------------------- plumbing

    def _new_process(self, prog: ProgramConfig, config: ProcessConfig) -> Process:
        return Process(prog, config, self._os, self._on_change, on_event=self._on_event,
                       on_replace=self.deployer.recycle)

    def _add_program(self, prog: ProgramConfig) -> None:
        self._reg.put(prog.name, [self._new_process(prog, pc) for pc in prog.processes])

    def _on_event(self, proc: Process, event: str, fields: dict[str, object]) -> None:
        """Log a process's event; the log is also the event stream (procguard.observe.events)."""
        level = "warning" if fields.get("new") == Health.UNHEALTHY or event == "process_recycled" else "info"
        getattr(log, level)(event, program=proc.program.name, process=proc.name, pid=proc.pid, **fields)

    def process_spawned(self, proc: Process) -> None:
        """A child exists (RealOS.on_spawned): start its health check and resource guard, if any."""
        for loop in monitors(proc, self._os):
            self._own(loop)

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        self.changes.changed(proc)

    async def wait_change(self) -> None:
        """Return after the next state change of any process."""
        await self.changes.next()

    def start_settled(self) -> bool:
        """Initial start-up is done (ordering.Ordering.is_settled)."""
        return self.ordering.is_settled()

    def counts(self) -> str:
        """'5 running, 1 backoff': how many processes are in each state, for systemd's STATUS=."""
        by_state: dict[str, int] = {}
        for p in self.processes():
            by_state[str(p.state).lower()] = by_state.get(str(p.state).lower(), 0) + 1
        order = ["running", "starting", "backoff", "stopping", "stopped", "exited", "fatal"]
        return ", ".join(f"{by_state[s]} {s}" for s in order if s in by_state) or "no programs"

    def processes(self) -> list[Process]:
        return self._reg.processes()

    def resolve(self, names: Iterable[str]) -> list[Process]:
        """Map names to processes (registry.Registry.resolve); raise ControlError(no_such_process)."""
        return self._reg.resolve(names)

    def resolve_known(self, names: Iterable[str]) -> tuple[list[Process], list[str]]:
        """resolve() that returns the unknown names instead of raising, so a command acts on the known ones."""
        return self._reg.resolve_known(names)

    # ---------------------------------------------------------------------------- control API

    def now(self) -> tuple[float, float]:
        """The (monotonic, wall) clock readings status computes uptimes and retry delays from."""
        return self._os.monotonic(), time.time()

    def status(self, names: Iterable[str] = ()) -> list[ProcessStatus]:
        now_m, now_w = self.now()
        return [self.deployer.annotate(snapshot(p, now_m, now_w), p, now_m, now_w) for p in self.resolve(names)]

    async def deploy(self, names: Iterable[str]) -> list[ActionResult]:
        """Replace programs by their next generation, one-shot dependencies first (deploy.Deployer.deploy)."""
        return await self.deployer.deploy(names)

    async def start(self, names: Iterable[str]) -> list[ActionResult]:
        """Start processes and wait until each is RUNNING or has failed (BACKOFF, FATAL).

        A program's dependencies (depends_on) are brought up first; if one fails, the program is not
        started and its result says which dependency and why.
        """
        procs = self.resolve(names)
        blocked = await self.ordering.blocked(procs)
        results = await self._reg.per_program([p for p in procs if p.program.name not in blocked], self._start_procs)
        for p in procs:
            if p.program.name in blocked:
                p.set_reason(Hold.BLOCKED, f"blocked: {blocked[p.program.name]}")
                results.append(ActionResult(p.name, False, p.state, p.reason, E_START_FAILED))
        return in_order(results, procs)

    async def stop(self, names: Iterable[str]) -> list[ActionResult]:
        """Stop processes and wait until each is STOPPED (SIGKILL after stopwaitsecs); a replace of one
        under way that has not switched yet is given up first (its next generation stops)."""
        procs = self.resolve(names)
        self.deployer.abort(procs, "stopped by the operator")
        return await self._reg.per_program(procs, self._stop_procs)

    async def restart(self, names: Iterable[str]) -> tuple[list[ActionResult], list[ActionResult]]:
        """Stop, then start, each program's processes under one hold of its lock; a program on held sockets
        is replaced by its next generation instead (restart_strategy, docs/deploys.md).

        Returns the stop results and the start results, each in the order the names resolved to.
        """
        stopped: list[ActionResult] = []

        async def both(procs: list[Process]) -> list[ActionResult]:
            if procs and procs[0].program.overlaps:
                return await self.deployer.replace_procs(procs, ReplaceTrigger.RESTART)
            stopped.extend(await self._stop_procs(procs, drain=True))  # drain_timeout: see Process.stop
            return await self._start_procs(procs)

        procs = self.resolve(names)
        for p in procs:
            self._on_event(p, "process_restarting", {"cause": "restart", "reason": "restart command"})
        started = await self._reg.per_program(procs, both)
        return in_order(stopped, procs), started

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
        return in_order(results, procs)

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
        return await start_procs(procs, self.changes, self._os.monotonic)

    async def _stop_procs(self, procs: list[Process], *, drain: bool = False) -> list[ActionResult]:
        return await stop_procs(procs, self.changes, drain=drain)

    async def start_autostart(self) -> None:
        """Start every autostart program: by dependencies where there are some, else by priority (ordering.py)."""
        await self.ordering.start_autostart(self.config.programs)

    async def stop_all(self) -> None:
        """Stop everything: dependents before what they depend on, otherwise reverse priority (ordering.py)."""
        self.deployer.abort_all("procguard is shutting down")
        await self.ordering.stop_all()
        for task in list(self.tasks):
            task.cancel()

    # ---------------------------------------------------------------------------------- reload

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
            return _keep(diff, lambda g: g in chosen), [g for g in groups if g not in known]

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
            if any(p.state not in RESTING_STATES for n in members for p in self._reg.get(n)):
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
        new_by_name = {p.name: p for p in new.programs}
        if only is not None:
            in_use = {p.name: p for p in self.config.programs}
            diff = _keep(diff, lambda name: any(p is not None and p.process_group in only
                                                for p in (in_use.get(name), new_by_name.get(name))))
        # The config in force afterwards: the new version of what is applied, the old one of the rest.
        applied = {*diff.added, *diff.changed}
        kept = [p for p in self.config.programs if p.name not in applied and p.name not in diff.removed]
        programs = sorted([*kept, *(new_by_name[n] for n in applied)], key=lambda p: (*p.start_order, p.name))
        result = replace(new, programs=tuple(programs))
        self._bind_sockets(result, new.path)
        log.info("config_reloading", added=diff.added, changed=diff.changed, removed=diff.removed)
        # A socket rebound by _bind_sockets() is not the one the running generation holds: no overlap then.
        old_socks = {c.name: c for c in self.config.sockets}
        new_socks = {c.name: c for c in result.sockets}
        kept_sockets = {n for n, c in new_socks.items() if old_socks.get(n) == c}
        await asyncio.gather(*(self._replace_program(n, new_by_name.get(n) if n in applied else None,
                                                     n in new_by_name, kept_sockets)
                               for n in (*diff.removed, *diff.changed, *diff.added)))
        self._reg.reorder(p.name for p in result.programs)  # status lists programs in priority order
        self.config = result
        log.info("config_reloaded", added=diff.added, changed=diff.changed, removed=diff.removed)
        return diff

    def _bind_sockets(self, config: Config, path: str) -> None:
        """Bind the held sockets of `config`; raise ConfigError (and change nothing) when one cannot be."""
        try:
            self._os.sockets.apply(config.sockets, config.socket_users())
        except SocketError as exc:
            issue = ConfigIssue(path, None, "socket", str(exc))
            log.error("config_reload_refused", path=path, errors=[str(issue)])
            raise ConfigError([issue]) from None

    async def _replace_program(self, name: str, new: ProgramConfig | None, in_new: bool,
                               kept_sockets: set[str]) -> None:
        """Put program `name` on its new config (new; None: take it out of use), under its lock.

        in_new: the new config still has it (a changed program drains first, as restart does).
        kept_sockets: the held sockets the reload left as they were (an overlap needs its own kept).
        """
        async with self._reg.lock(name):
            old = self._reg.get(name)
            if new is not None and self._overlaps_across(old, new) and all(n in kept_sockets for n in new.sockets):
                # Replaced by a next generation on the new config (a failed one leaves the old running).
                await self.deployer.replace_procs(old, ReplaceTrigger.RELOAD, new)
                return
            if old:
                # A changed program restarts: like `restart`, it drains first (drain_timeout).
                await self._stop_procs(old, drain=in_new)
                self._reg.remove(name)
                for p in old:
                    self._os.forget(p)
                    if not in_new:  # removed for good: a changed program keeps its tails under its name
                        self._os.retire(p)
            if new is not None:
                self._add_program(new)
                if new.autostart:
                    await self._start_procs(self._reg.get(name))

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


def _keep(diff: ConfigDiff, wanted: Callable[[str], bool]) -> ConfigDiff:
    """diff with only the names wanted(name) holds for."""
    return ConfigDiff(*(tuple(n for n in bucket if wanted(n)) for bucket in (diff.added, diff.changed, diff.removed)))


__all__ = ["Supervisor"]
