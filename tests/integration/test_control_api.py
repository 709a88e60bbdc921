"""The in-process control API (Supervisor) with real children: what the control socket will adapt."""

import asyncio
import ctypes
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from procguard.config.load import load_config
from procguard.errors import ConfigError, ControlError
from procguard.engine.states import ProcessState
from procguard.engine.supervisor import Supervisor
from tests.helpers import alive, probe, toml_list
from procguard.daemon import Daemon
from procguard.testing import ControlClient

Body = Callable[[Supervisor, Path], Awaitable[None]]
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)


def run(config_text: Callable[[Path], str], body: Body) -> None:
    """Run `body` against the Supervisor of a real Daemon (procguard.daemon's own wiring) on this loop.

    The daemon serves its control socket; once that answers, `body` runs, then a `shutdown` over the
    socket stops everything the daemon's way, and no child may survive.
    """
    work = Path(tempfile.mkdtemp(prefix="procguard-api-"))
    cfg = work / "procguard.toml"
    endpoint = f"ipc://{work}/control.sock"
    cfg.write_text(f'[procguard]\nlogdir = "{work}/logs"\ncontrol = "{endpoint}"\n' + config_text(work))

    async def main() -> None:
        daemon = Daemon(load_config(cfg))
        running = asyncio.create_task(daemon.run())
        client = ControlClient(endpoint)
        try:
            ready = asyncio.create_task(asyncio.to_thread(client.request, "version", None, 60.0))
            await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
            assert not running.done(), f"the daemon exited with {running.result()}"
            assert (await ready)["ok"]
            try:
                await body(daemon.supervisor, work)
            finally:
                assert (await asyncio.to_thread(client.request, "shutdown", None, 60.0))["ok"]
                assert await running == 0
        finally:
            client.close()
            running.cancel()

    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        set_subreaper(False)  # Daemon.run made this test process a subreaper, as it does the daemon
        pids = [int(x) for x in (work / "pids").read_text().split()] if (work / "pids").exists() else []
        survivors = [p for p in pids if alive(p)]
        for p in survivors:
            os.kill(p, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
        assert not survivors, f"survivors: {survivors}"


def set_subreaper(on: bool) -> None:
    """prctl(PR_SET_CHILD_SUBREAPER, on): see prctl(2)."""
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def prog(name: str, argv: list[str], extra: str = "") -> str:
    startsecs = "" if "startsecs" in extra else "startsecs = 0\n"
    return f"[program.{name}]\ncommand = {toml_list(argv)}\n{startsecs}{extra}\n"


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll on the loop with a deadline (the supervisor keeps running meanwhile)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.01)


def state(sup: Supervisor, name: str) -> Any:
    return sup.status([name])[0]


def test_start_stop_restart_and_status():
    async def body(sup: Supervisor, work: Path) -> None:
        await sup.start_autostart()
        assert [s.state for s in sup.status()] == [ProcessState.RUNNING]
        pid = state(sup, "web").pid
        [res] = await sup.start(["web"])
        assert res.ok and res.message == "already running" and state(sup, "web").pid == pid
        [res] = await sup.stop(["web"])
        assert res.ok and res.state == ProcessState.STOPPED
        assert not alive(pid) and state(sup, "web").pid is None
        [res] = await sup.start(["web"])
        assert res.ok and res.state == ProcessState.RUNNING
        first = state(sup, "web").pid
        stopped, started = await sup.restart(["web"])
        assert [r.message for r in stopped] == ["stopped"] and [r.message for r in started] == ["started"]
        assert state(sup, "web").pid not in (None, first)
        [res] = await sup.stop(["web"])
        [res] = await sup.stop(["web"])
        assert res.ok and res.message == "not running"

    run(lambda w: prog("web", probe(w, "web")), body)


def test_names_resolve_like_supervisorctl():
    async def body(sup: Supervisor, work: Path) -> None:
        names = lambda xs: [p.name for p in sup.resolve(xs)]  # noqa: E731
        assert names(["worker"]) == ["worker:worker_00", "worker:worker_01"]
        assert names(["worker:*"]) == names(["worker"])
        assert names(["worker:worker_01"]) == ["worker:worker_01"]
        assert names(["all"]) == ["web", "worker:worker_00", "worker:worker_01"]
        with pytest.raises(ControlError) as exc:
            sup.resolve(["nope", "worker:worker_07"])
        assert exc.value.code == "no_such_process" and "nope" in exc.value.message and "worker_07" in exc.value.message

    run(lambda w: prog("web", probe(w, "web"), "autostart = false")
        + prog("worker", probe(w, "worker"), "autostart = false\nnumprocs = 2"), body)


def test_failed_start_reports_its_reason():
    async def body(sup: Supervisor, work: Path) -> None:
        [res] = await sup.start(["broken"])
        assert not res.ok and res.state == ProcessState.BACKOFF
        assert "exit status 4" in res.message and "retry in" in res.message

    run(lambda w: prog("broken", probe(w, "broken", mode="exit", code=4), 'autostart = false\nstartsecs = "2s"'), body)


def test_a_slow_stop_does_not_block_other_programs():
    async def body(sup: Supervisor, work: Path) -> None:
        await sup.start_autostart()
        await until(lambda: (work / "pids").exists() and len((work / "pids").read_text().split()) >= 2)
        slow = asyncio.create_task(sup.stop(["slow"]))
        await until(lambda: state(sup, "slow").state == ProcessState.STOPPING)
        # Another program is served while "slow" waits out its stopwaitsecs; status answers at once.
        _, [res] = await sup.restart(["fast"])
        assert res.ok
        assert not slow.done() and state(sup, "slow").state == ProcessState.STOPPING
        [res] = await slow
        assert res.state == ProcessState.STOPPED

    run(lambda w: prog("slow", probe(w, "slow", mode="ignore-term"), 'stopwaitsecs = "3s"')
        + prog("fast", probe(w, "fast")), body)


def test_commands_on_one_program_queue():
    async def body(sup: Supervisor, work: Path) -> None:
        await sup.start_autostart()
        # stop and start issued together run one after the other, in order.
        stop, start = await asyncio.gather(sup.stop(["web"]), sup.start(["web"]))
        assert stop[0].state == ProcessState.STOPPED and start[0].state == ProcessState.RUNNING
        assert state(sup, "web").state == ProcessState.RUNNING

    run(lambda w: prog("web", probe(w, "web")), body)


def test_signal_reaches_the_process():
    async def body(sup: Supervisor, work: Path) -> None:
        await sup.start_autostart()
        await until(lambda: (work / "reports.jsonl").exists())
        [res] = sup.signal("HUP", ["web"])
        assert res.ok
        await until(lambda: (work / "events.log").exists() and "got SIGHUP" in (work / "events.log").read_text())
        with pytest.raises(ControlError) as exc:
            sup.signal("NOPE", ["web"])
        assert exc.value.code == "bad_signal"

    run(lambda w: prog("web", probe(w, "web", mode="trap", signal="HUP"), "autorestart = false"), body)


def test_reload_applies_the_difference_and_refuses_a_bad_config():
    async def body(sup: Supervisor, work: Path) -> None:
        await sup.start_autostart()
        keep_pid = state(sup, "keep").pid
        cfg = Path(sup.config.path)
        good = cfg.read_text()
        cfg.write_text(good + prog("added", probe(work, "added")))
        diff = await sup.reload()
        assert diff.added == ("added",) and diff.changed == () and diff.removed == ()
        assert state(sup, "added").state == ProcessState.RUNNING and state(sup, "keep").pid == keep_pid
        cfg.write_text(good + '[program.added]\ncommand = "x"\nstartsecs = "soon"\n')
        with pytest.raises(ConfigError) as exc:
            await sup.reload()
        assert "[program.added] startsecs" in str(exc.value)
        assert state(sup, "added").state == ProcessState.RUNNING  # old config still in force

    run(lambda w: prog("keep", probe(w, "keep")), body)


def test_spawn_failures_are_failed_starts_never_a_crash():
    async def body(sup: Supervisor, work: Path) -> None:
        [res] = await sup.start(["noexec"])
        assert not res.ok and "Permission denied" in res.message and "not-executable" in res.message
        # EMFILE: use up every descriptor the process may open, then try to start.
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, hard))
        hogs = []
        try:
            while True:
                try:
                    hogs.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            [res] = await sup.start(["web"])
        finally:
            for fd in hogs:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not res.ok and "Too many open files" in res.message
        # Descriptors are back: the retry after backoff succeeds by itself.
        await until(lambda: state(sup, "web").state == ProcessState.RUNNING)

    def config(w: Path) -> str:
        target = w / "not-executable"
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o644)
        return (prog("noexec", [str(target)], 'autostart = false\nbackoff_initial = "10s"')
                + prog("web", probe(w, "web"), 'autostart = false\nbackoff_initial = "100ms"'))

    run(config, body)
