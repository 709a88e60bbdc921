"""A plain `status` reply is cached as text per process (#17): its bytes stay those of the dicts it replaced.

The reference is the reply as it was built before the cache: Supervisor.status() (records.snapshot and
the deployer's annotate), handlers' status_dict plus output_dropped_bytes, encode_reply. Both run at one
frozen instant (the fake seam's monotonic clock, time.time patched), in every state status can show, and
again after each change a process can go through, so a stale cache entry would show as a byte difference.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from procguard.config.load import load_config
from procguard.control.follow import Followers
from procguard.control.handlers import Handlers
from procguard.control.statusview import status_dict
from procguard.engine.process import Process
from procguard.engine.records import ProcessStatus, ReplaceOutcome
from procguard.engine.states import Health, Hold, ProcessState, ReplacePhase, ReplaceTrigger
from procguard.engine.supervisor import Supervisor
from procguard.io.output import Output
from procguard.protocol import JSONArray, Request, encode_json, encode_reply
from procguard.testing import FakeOS

CONFIG = """\
[procguard]
logdir = "{d}/logs"
control = "ipc://{d}/control.sock"

[socket.web]
bind = "tcp://127.0.0.1:18000"

[program.web]
command = ["/bin/sleep", "100"]
sockets = ["web"]
startsecs = 0

[program.worker]
command = ["/bin/sleep", "100"]
numprocs = 3
process_name = "worker_{{process_num:02d}}"
startsecs = 1
priority = 5

[program.crash]
command = ["/bin/false"]
startsecs = 1

[program.job]
command = ["/bin/true"]
type = "oneshot"

[program.idle]
command = ["/bin/sleep", "100"]
autostart = false
"""

WALL = [1_764_000_000.123456]  # time.time() as the test sets it


def reference(sup: Supervisor, output: Output | None, rid: str, names: list[str] = []) -> bytes:
    """The reply as status built it before the cache (f053f8f's handlers.status)."""
    statuses = [status_dict(s) for s in sup.status(names)]
    if output is not None:
        for st in statuses:
            st["output_dropped_bytes"] = output.dropped(st["name"])
    return encode_reply(rid, statuses)


class World:
    def __init__(self, sup: Supervisor, fos: FakeOS, output: Output | None) -> None:
        self.sup, self.fos, self.output = sup, fos, output
        self.handlers = Handlers(sup, _never, lambda: None, Followers(None), output)
        self.requests = 0

    def proc(self, name: str) -> Process:
        [p] = self.sup.resolve([name])
        return p

    async def reply(self, **args: Any) -> bytes:
        self.requests += 1
        rid = f"r{self.requests}"
        result = await self.handlers.status(Request(rid, "status", args))
        return encode_reply(rid, result)

    async def check(self, what: str, names: list[str] = []) -> bytes:
        """The cached reply equals the reference, at a new instant each time (so the clock is filled in)."""
        self.fos.advance(0.25)
        WALL[0] += 0.37
        rid = f"r{self.requests + 1}"
        got = await self.reply(**({"names": names} if names else {}))
        assert got == reference(self.sup, self.output, rid, names), what
        return got


async def _never() -> Any:
    raise AssertionError("not called")


def run(test: Callable[[World], Awaitable[None]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        with_output: bool = True) -> None:
    (tmp_path / "procguard.toml").write_text(CONFIG.format(d=tmp_path))
    monkeypatch.setattr(time, "time", lambda: WALL[0])

    async def main() -> None:
        fos = FakeOS()
        sup = Supervisor(load_config(tmp_path / "procguard.toml"), fos)
        output = Output(asyncio.get_running_loop(), str(tmp_path / "logs")) if with_output else None
        w = World(sup, fos, output)
        for i, p in enumerate(sup.processes()):
            if output is not None:
                output.streams_of(p.program, p.config)
            if p.program.autostart:
                p.start()
                p.spawned(1000 + i)
        await test(w)

    asyncio.run(main())


async def every_state(w: World) -> None:
    """RUNNING, STARTING, BACKOFF, EXITED (completed), STOPPED, FATAL, and odd texts, all in one reply."""
    await w.check("fresh: STARTING and RUNNING")
    w.fos.advance(1.5)
    w.proc("crash").exited(1 << 8)  # a quick exit: BACKOFF, with a retry_in_s
    w.proc("job").exited(0)  # a one-shot that did its job: EXITED, completed
    assert w.proc("crash").state == ProcessState.BACKOFF
    assert w.proc("job").state == ProcessState.EXITED and w.proc("job").hold == Hold.COMPLETED
    await w.check("BACKOFF and a completed job")
    web = w.proc("web")
    web.health, web.health_reason = Health.UNHEALTHY, 'GET / -> 503 "busy" ünïcode \\ </script>'
    web.status_text = '"started_at":null,"uptime_s":null "retry_in_s":null'  # the cut markers, as a value
    await w.check("health and texts")
    w.proc("worker:worker_01").stop()
    await w.check("STOPPING")
    w.proc("worker:worker_01").child_reaped(1002)
    w.proc("worker:worker_01").exited(0)
    await w.check("STOPPED after a stop")
    w.sup.deployer.outcomes["web"] = ReplaceOutcome(at=WALL[0], ok=False, trigger=ReplaceTrigger.DEPLOY,
                                                     generation=2, pid=4242, step=ReplacePhase.STARTING,
                                                     reason="exited 3")
    await w.check("a last deploy")
    w.proc("idle").start()
    w.proc("idle").spawn_failed("no such file")
    await w.check("a failed spawn")
    await w.check("only two names, cache kept", names=["web", "crash"])
    await w.check("all again after a names request")


def test_status_bytes_equal_the_dict_reply_in_every_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(every_state, tmp_path, monkeypatch)


def test_status_bytes_equal_the_dict_reply_without_output_capture(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run(every_state, tmp_path, monkeypatch, with_output=False)


async def each_change(w: World) -> None:
    """Every field the reply shows, changed between two requests: the cached text must follow."""
    w.fos.advance(1.5)
    await w.check("all RUNNING")
    web, worker = w.proc("web"), w.proc("worker:worker_00")
    changes: list[tuple[str, Callable[[], None]]] = [
        ("reason", lambda: setattr(web, "reason", "poked")),
        ("hold", lambda: web.set_reason(Hold.COMPLETED, "poked")),
        ("failures", lambda: setattr(web, "failures", 7)),
        ("restarts", lambda: setattr(web, "restarts", 3)),
        ("health", lambda: setattr(web, "health", Health.HEALTHY)),
        ("health_reason", lambda: setattr(web, "health_reason", "slow")),
        ("status_text", lambda: setattr(web, "status_text", "serving 12 requests")),
        ("generation", lambda: setattr(web, "generation", 4)),
        ("exit_status", lambda: setattr(web, "exit_status", -9)),
        ("program (priority, autostart)", lambda: setattr(worker, "program",
                                                          replace(worker.program, priority=1, autostart=False))),
        ("last_deploy", lambda: w.sup.deployer.outcomes.__setitem__("worker:worker_00", ReplaceOutcome(
            at=1.5, ok=True, trigger=ReplaceTrigger.RESTART, generation=2, pid=9, step=ReplacePhase.SUCCEEDED,
            reason="")))]
    if w.output is not None:
        stream = w.output.stream("web", "stdout")
        assert stream is not None
        changes.append(("output_dropped_bytes", lambda: setattr(stream, "dropped", stream.dropped + 4096)))
    for what, change in changes:
        before = await w.check(f"before {what}")
        change()
        assert await w.check(f"after {what}") != before, what
    web.exited(-9)  # the leader is gone: pid null, no uptime; autorestart brings a BACKOFF or a restart
    await w.check("after an exit")


def test_a_cached_status_follows_every_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(each_change, tmp_path, monkeypatch)


async def during_a_replace(w: World) -> None:
    """A replace under way shows `next` (with its own clock) and `replace_phase`; after it, neither."""
    w.fos.advance(1.5)
    await w.check("before the replace")
    web = w.proc("web")
    task = asyncio.create_task(w.sup.deployer.replace(web, ReplaceTrigger.DEPLOY))
    await asyncio.sleep(0)
    assert w.sup.deployer.replacing() == {web, w.fos.prepared[0][0]}
    await w.check("preparing the next generation")
    w.fos.prepared[0][1](None)
    nxt = w.fos.spawned[-1]
    nxt.spawned(5000)
    shown = await w.check("next generation STARTING")
    assert b'"next":{"generation":2' in shown
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await w.check("after the replace ended")


def test_status_bytes_equal_the_dict_reply_during_a_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(during_a_replace, tmp_path, monkeypatch)


async def unknown_names(w: World) -> None:
    rid = f"r{w.requests + 1}"
    got = await w.reply(names=["web", "nope"])
    known = [status_dict(s) | {"output_dropped_bytes": 0} for s in w.sup.status(["web"])]
    assert got == encode_reply(rid, known + [{"name": "nope", "error": "no_such_process"}])


def test_status_lists_unknown_names_after_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(unknown_names, tmp_path, monkeypatch)


def test_the_cache_key_reads_every_field_status_shows() -> None:
    """A field added to ProcessStatus must be added to records.status_key (or be the clock or a replace's)."""
    clock = {"started_at", "uptime_s", "retry_in_s"}
    annotated = {"next", "replace_phase", "last_deploy"}  # the deployer's: replacing() and outcomes in the key
    keyed = {"name", "program", "autostart", "priority",  # proc.config, proc.program
             "state", "pid", "exit_status", "reason", "failures", "health", "health_reason", "status_text",
             "restarts", "generation", "completed"}
    assert set(ProcessStatus._fields) == clock | annotated | keyed


@pytest.mark.parametrize("rid", ["abc", None, 'q"uote\u00e9'])
@pytest.mark.parametrize("result", [[], [{"a": 1.5, "b": None, "c": "\u00fc\"\\"}], [1, [2, {"x": True}], "z"]])
def test_a_result_given_as_encoded_items_gives_the_same_reply_bytes(rid: str | None, result: list[Any]) -> None:
    items = JSONArray(encode_json(item).encode() for item in result)
    assert encode_reply(rid, items) == encode_reply(rid, result)
    assert items == [encode_json(item).encode() for item in result]  # left as it was given
