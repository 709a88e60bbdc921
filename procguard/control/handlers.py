"""The control commands: one coroutine method per protocol command, named as the command.

`Handlers.table()` maps every command of procguard.protocol.COMMANDS to its method; the server
looks a request's command up there after the protocol checked it. Each method takes the decoded
request and returns the reply's `result` (or a FollowStart for `tail -f` and `events -f`, an AfterReply
for `reexec`), or raises ControlError with a protocol error code.
"""

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from procguard.config.model import ConfigDiff
from procguard.control.follow import MAX_EVENT_FOLLOWERS, MAX_FOLLOWERS, Followed, Followers, FollowStart, b64
from procguard.control.statusview import StatusView
from procguard.engine.records import ActionResult
from procguard.engine.supervisor import Supervisor
from procguard.errors import ControlError
from procguard.io.output import Output
from procguard.log import LogRing
from procguard.log import dropped_lines as log_dropped_lines
from procguard.observe.alerts import AlertManager
from procguard.observe.events import EventBus
from procguard.protocol import (
    E_BAD_ARGS, E_INTERNAL, E_NO_SUCH_PROCESS, PROTOCOL_VERSION, VERSION, JSONArray, Request, encode_json,
)
from procguard.runtime import procfs

Handler = Callable[[Request], Awaitable[Any]]

# The wide status view samples CPU over this window (two /proc passes off the loop, the loop free between).
CPU_SAMPLE_S = 0.2
DEPLOY_OUTPUT_LINES = 20  # a failed deploy's reply carries this many last lines of the process's output
_NO_SAMPLE = {"rss_bytes": None, "cpu_percent": None, "tree_pids": 0}
_NO_USAGE = {"cpu_s": None, "rss_bytes": None, "fds": None, "tree_pids": 0}


def action_dicts(results: Iterable[ActionResult], action: str) -> list[dict[str, Any]]:
    return [{"name": r.name, "action": action, "ok": r.ok, "state": str(r.state), "message": r.message,
             "error": r.error} for r in results]


def unknown_dicts(names: list[str], **fields: Any) -> list[dict[str, Any]]:
    """One entry per name that matched nothing, after the results of the names that did."""
    return [{"name": n, **fields, "error": E_NO_SUCH_PROCESS} for n in names]


def diff_dict(diff: ConfigDiff) -> dict[str, list[str]]:
    return {"added": list(diff.added), "changed": list(diff.changed), "removed": list(diff.removed)}


async def sample_usage(pids: list[int]) -> dict[int, dict[str, Any]]:
    """RSS and CPU% of each pid's process tree, CPU measured over CPU_SAMPLE_S (`status -l`).

    The window is an asyncio sleep between two /proc passes in threads: no thread is held while it runs.
    """
    start = await asyncio.to_thread(procfs.start_sample, pids)
    await asyncio.sleep(CPU_SAMPLE_S)
    sampled = await asyncio.to_thread(procfs.finish_sample, start)
    return {pid: {"rss_bytes": s.rss_bytes, "cpu_percent": s.cpu_percent, "tree_pids": s.pids}
            for pid, s in sampled.items()}


class Detachable(Protocol):
    """The control server as an AfterReply sees it: stop serving, keeping the listener; serve again."""

    def detach(self) -> tuple[int | None, int] | None: ...

    def reattach(self, kept: tuple[int | None, int] | None) -> None: ...


@dataclass(frozen=True, slots=True)
class AfterReply:
    """A result, and what to do once its reply is sent (reexec: exec the next image), given the server."""

    result: dict[str, Any]
    then: Callable[[Detachable], None]


def handler_names() -> frozenset[str]:
    """The commands Handlers answers: its public coroutine methods."""
    return frozenset(name for name, f in vars(Handlers).items()
                     if not name.startswith("_") and inspect.iscoroutinefunction(f))


class Handlers:
    """What each control command does, on one Supervisor and the daemon's output, events, alerts and log."""

    def __init__(self, supervisor: Supervisor, reload: Callable[[], Awaitable[ConfigDiff]],
                 request_shutdown: Callable[[], None], followers: Followers, output: Output | None = None,
                 events: EventBus | None = None, alerts: AlertManager | None = None,
                 mainlog: LogRing | None = None, reexec: Callable[[], Awaitable[AfterReply]] | None = None) -> None:
        self._sup = supervisor
        self._followers = followers
        self._reload = reload
        self._request_shutdown = request_shutdown
        self._output = output
        self._events = events
        self._alerts = alerts
        self._mainlog = mainlog
        self._reexec = reexec  # the daemon's re-exec (upgrade/handoff.py)
        self._view = StatusView(supervisor, output)

    def table(self) -> dict[str, Handler]:
        """Each command's method, by the command's name (the server's dispatch table)."""
        handlers: dict[str, Handler] = {name: getattr(self, name) for name in handler_names()}
        return handlers

    # ------------------------------------------------------------------------- named processes
    # A request naming known and unknown processes acts on the known ones and reports each unknown
    # name as an entry of its own (supervisorctl does the same); all unknown is no_such_process.

    def _known(self, req: Request) -> tuple[list[str], list[str]]:
        """The names to act on and the unknown ones; every name unknown is a no_such_process error."""
        names: list[str] = req.args.get("names", [])
        procs, unknown = self._sup.resolve_known(names)
        if unknown and not procs:
            raise ControlError(E_NO_SUCH_PROCESS, f"no such process: {', '.join(unknown)}")
        return (names if not unknown else [p.name for p in procs]), unknown

    @staticmethod
    def _not_acted(req: Request, unknown: list[str]) -> list[dict[str, Any]]:
        return unknown_dicts(unknown, action=req.cmd, ok=False, state=None, message="no such process")

    async def start(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        return action_dicts(await self._sup.start(names), "start") + self._not_acted(req, unknown)

    async def stop(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        return action_dicts(await self._sup.stop(names), "stop") + self._not_acted(req, unknown)

    async def restart(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        stopped, started = await self._sup.restart(names)
        return action_dicts(stopped, "stop") + action_dicts(started, "start") + self._not_acted(req, unknown)

    async def deploy(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        return [self._deploy_dict(r) for r in await self._sup.deploy(names)] + self._not_acted(req, unknown)

    async def reload_app(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        return action_dicts(await self._sup.reload_app(names), "reload_app") + self._not_acted(req, unknown)

    async def signal(self, req: Request) -> list[dict[str, Any]]:
        names, unknown = self._known(req)
        return action_dicts(self._sup.signal(req.args["signal"], names), "signal") + self._not_acted(req, unknown)

    async def status(self, req: Request) -> list[dict[str, Any]] | JSONArray:
        names, unknown = self._known(req) if req.args.get("names") else ([], [])
        procs = self._sup.resolve(names)
        if not req.args.get("long") and not req.args.get("usage"):
            items = self._view.items(procs, keep=not names)
            return JSONArray(items + [encode_json(d).encode() for d in unknown_dicts(unknown)])
        statuses = self._view.dicts(procs)
        pids = [s["pid"] for s in statuses if s["pid"]]
        if req.args.get("long"):
            sampled = await sample_usage(pids)
            for s in statuses:
                s.update(sampled.get(s["pid"], _NO_SAMPLE))
        elif req.args.get("usage"):  # procguardctl top: one /proc pass, no sampling window (CPU% from deltas)
            trees = await asyncio.to_thread(procfs.tree_usage, pids)
            for s in statuses:
                t = trees.get(s["pid"])
                s.update({"cpu_s": t.cpu_s, "rss_bytes": t.rss_bytes, "fds": t.fds, "tree_pids": t.pids} if t
                         else _NO_USAGE)
        return statuses + unknown_dicts(unknown)

    async def pid(self, req: Request) -> Any:
        if not req.args.get("names"):
            return {"pid": os.getpid()}
        names, unknown = self._known(req)
        return [{"name": s.name, "pid": s.pid} for s in self._sup.status(names)] + unknown_dicts(unknown, pid=None)

    def _deploy_dict(self, r: ActionResult) -> dict[str, Any]:
        out: dict[str, Any] = {"name": r.name, "action": "deploy", "ok": r.ok, "state": str(r.state),
                               "message": r.message, "pid": r.pid, "generation": r.generation, "step": str(r.step),
                               "overlapped": r.overlapped}
        if not r.ok and self._output is not None:
            out["output"] = self._last_words(r)
        return out

    def _last_words(self, r: ActionResult) -> list[str]:
        """The next generation's own tail (the current generation writes into the same streams meanwhile);
        else, stopped then started, the process's."""
        assert self._output is not None
        own = None if r.tried is None else self._output.generation_output(r.name, r.tried, DEPLOY_OUTPUT_LINES)
        if own is not None:
            return own
        proc = self._sup.resolve([r.name])[0]
        lines: list[str] = []
        for stream in self._output.streams_of(proc.program, proc.config):
            if stream is not None:
                lines += stream.tail().decode(errors="replace").splitlines()[-DEPLOY_OUTPUT_LINES:]
        return lines[-DEPLOY_OUTPUT_LINES:]

    # ---------------------------------------------------------------------------- the config

    async def reload(self, req: Request) -> dict[str, list[str]]:
        return diff_dict(await self._reload())

    async def reread(self, req: Request) -> dict[str, list[str]]:
        return diff_dict(await self._sup.reread())

    async def update(self, req: Request) -> dict[str, list[str]]:
        diff, unknown = await self._sup.update(req.args.get("names", []))
        return {**diff_dict(diff), "unknown": unknown}

    async def add(self, req: Request) -> list[dict[str, Any]]:
        return [await self._change(req, name, self._sup.add) for name in req.args["names"]]

    async def remove(self, req: Request) -> list[dict[str, Any]]:
        return [await self._change(req, name, self._sup.remove) for name in req.args["names"]]

    @staticmethod
    async def _change(req: Request, name: str, change: Callable[[str], Awaitable[str | None]]) -> dict[str, Any]:
        error = await change(name)
        return {"name": name, "action": req.cmd, "ok": error is None, "error": error}

    # ----------------------------------------------------------------------------- the daemon

    async def version(self, req: Request) -> dict[str, Any]:
        return {"version": VERSION, "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                "log_dropped_lines": log_dropped_lines()}

    async def shutdown(self, req: Request) -> dict[str, Any]:
        # Reply first; the daemon's main loop then stops every program as on SIGTERM.
        asyncio.get_running_loop().call_soon(self._request_shutdown)
        return {"shutting_down": True, "pid": os.getpid()}

    async def reexec(self, req: Request) -> AfterReply:
        if self._reexec is None:
            raise ControlError(E_INTERNAL, "this daemon cannot re-exec")
        return await self._reexec()

    async def alert_test(self, req: Request) -> dict[str, Any]:
        if self._alerts is None:
            raise ControlError(E_BAD_ARGS, "this daemon sends no alerts")
        return await self._alerts.test(req.args["name"])

    async def logreopen(self, req: Request) -> dict[str, Any]:
        return {"reopened": self._require_output().reopen()}

    async def logrotate(self, req: Request) -> dict[str, Any]:
        names = req.args.get("names", [])
        return {"rotated": self._require_output().rotate(p.name for p in self._sup.resolve(names))}

    def _require_output(self) -> Output:
        if self._output is None:
            raise ControlError(E_INTERNAL, "this daemon captures no output")
        return self._output

    # --------------------------------------------------------------------- tails and events

    async def tail(self, req: Request) -> dict[str, Any] | FollowStart:
        name, which = req.args["name"], req.args.get("stream", "stdout")
        procs = self._sup.resolve([name])
        if len(procs) != 1 or name == "all":
            raise ControlError(E_BAD_ARGS, f"tail takes one process; {name} is {len(procs)}: "
                                           + ", ".join(p.name for p in procs[:5]))
        proc = procs[0]
        if which == "stderr" and proc.program.redirect_stderr:
            raise ControlError(E_BAD_ARGS, f"{proc.name} has redirect_stderr = true: its stderr is in stdout")
        stream = self._require_output().streams_of(proc.program, proc.config)[0 if which == "stdout" else 1]
        assert stream is not None
        first = {"name": proc.name, "stream": which, "data": b64(stream.tail()),
                 "offset": stream.offset, "dropped_bytes": stream.dropped}
        return self._followed(req, first, stream, f"{proc.name} {which}")

    async def maintail(self, req: Request) -> dict[str, Any] | FollowStart:
        """The daemon's own newest log lines (LogRing), and with follow every new one, as tail -f does."""
        if self._mainlog is None:
            raise ControlError(E_INTERNAL, "this daemon keeps no log lines")
        first = {"name": "procguard", "data": b64(self._mainlog.tail()), "offset": self._mainlog.offset}
        return self._followed(req, first, self._mainlog, "the daemon's log")

    @staticmethod
    def _followed(req: Request, first: dict[str, Any], stream: Followed, what: str) -> dict[str, Any] | FollowStart:
        if not req.args.get("follow"):
            return first
        if len(stream.followers) >= MAX_FOLLOWERS:
            raise ControlError(E_BAD_ARGS, f"{what} already has {MAX_FOLLOWERS} followers")
        return FollowStart(first, stream, req.id)

    async def events(self, req: Request) -> dict[str, Any] | FollowStart:
        if self._events is None:
            raise ControlError(E_INTERNAL, "this daemon publishes no events")
        names: list[str] = req.args.get("names", [])
        recent = self._events.recent(names, req.args.get("limit"))
        first = {"events": [e.to_wire() for e in recent]}
        if not req.args.get("follow"):
            return first
        if self._followers.of_events() >= MAX_EVENT_FOLLOWERS:
            raise ControlError(E_BAD_ARGS, f"the event stream already has {MAX_EVENT_FOLLOWERS} followers")
        return FollowStart(first, None, req.id, tuple(names), recent[-1].seq if recent else 0)
