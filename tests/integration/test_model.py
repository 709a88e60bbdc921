"""A model-based test of the real daemon (issue #20, item 1).

Hypothesis drives a real `procguard` over its real control socket with any sequence of: start, stop,
restart, signal through the daemon, SIGKILL/SIGSTOP/SIGCONT of a child or its worker, a chosen exit
code, a failing health check, programs added, changed and removed (written config + `reload`, or
SIGHUP), SIGUSR2, logrotate, and several procguardctl clients at once. After every step
procguard/testing/world.py checks the real system (/proc, the output files, the control socket, the log).

CI runs a bounded number of examples. The long run:

    PROCGUARD_MODEL_EXAMPLES=500 python -m pytest tests/integration/test_model.py
    python -m benchmarks model --examples 500

Every failure Hypothesis found and shrank is a plain regression test at the end of this file.
"""

import os
import signal
import subprocess
import threading

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.helpers import wait_until
from procguard.testing.world import DOWN, HEALTH_MARK, UP, Expect, Spec, World

# CI: bounded (about a minute on a loaded 2-core box); the long run sets these (benchmarks/proof.py).
EXAMPLES = int(os.environ.get("PROCGUARD_MODEL_EXAMPLES", "12"))
STEPS = int(os.environ.get("PROCGUARD_MODEL_STEPS", "12"))
NAMES = ("a", "b", "c", "d")


def specs(name: str) -> st.SearchStrategy[Spec]:
    return st.builds(
        Spec, name=st.just(name), user=st.sampled_from(["root", "nobody"]),
        umask=st.sampled_from([0o022, 0o077, 0o002]), cwd=st.sampled_from(["a", "b"]), worker=st.booleans(),
        health=st.booleans(), autostart=st.booleans(), autorestart=st.sampled_from(["true", "unexpected"]),
    )


@st.composite
def program_sets(draw: st.DrawFn) -> list[Spec]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    return [draw(specs(n)) for n in names]


class DaemonModel(RuleBasedStateMachine):
    """The model: which programs exist (World.specs) and what each may show (World.expect)."""

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None

    @initialize(programs=program_sets())
    def boot(self, programs: list[Spec]) -> None:
        self.world = World.create(programs)
        self.world.start()

    # --------------------------------------------------------------------------- helpers
    @property
    def w(self) -> World:
        assert self.world is not None
        return self.world

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.w.specs)), label="program")

    def has_programs(self) -> bool:
        return self.world is not None and bool(self.world.specs)

    def command(self, cmd: str, names: list[str], deadline_s: float = 60.0, **args: object) -> dict:
        reply = self.w.ctl.request(cmd, {"names": names, **args}, deadline_s)  # type: ignore[union-attr]
        assert reply["ok"], reply
        return reply

    def pid_of(self, name: str) -> int | None:
        return self.w.status()[name]["pid"]

    # ----------------------------------------------------------------------------- rules
    @precondition(has_programs)
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        name = self.pick(data)
        self.command("start", [name])
        self.w.expect[name] = Expect(UP, "started")

    @precondition(has_programs)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        name = self.pick(data)
        [res] = self.command("stop", [name])["result"]
        assert res["state"] == "STOPPED", res
        self.w.check_gone([name])  # when stop returns, the leader, its group and strays are gone
        self.w.expect[name] = Expect(DOWN, "stopped")

    @precondition(has_programs)
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        name = self.pick(data)
        self.command("restart", [name])
        self.w.expect[name] = Expect(UP, "restarted")

    @precondition(has_programs)
    @rule(data=st.data(), sig=st.sampled_from(["HUP", "USR1", "INT", "TERM"]))
    def signal_through_daemon(self, data: st.DataObject, sig: str) -> None:
        name = self.pick(data)
        self.command("signal", [name], signal=sig)

    @precondition(has_programs)
    @rule(data=st.data(), sig=st.sampled_from([signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT]),
          worker=st.booleans())
    def signal_child(self, data: st.DataObject, sig: signal.Signals, worker: bool) -> None:
        name = self.pick(data)
        pid = self.pid_of(name)
        if pid is None:
            return
        if worker:
            kids = _workers(self.w, name, pid)
            if not kids:
                return
            pid = kids[-1]
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    @precondition(has_programs)
    @rule(data=st.data(), code=st.sampled_from([0, 1, 3]))
    def exit_with(self, data: st.DataObject, code: int) -> None:
        name = self.pick(data)
        pid = self.pid_of(name)
        if pid is not None:
            (self.w.run.work / "cmd" / str(pid)).write_text(f"exit {code}")

    @precondition(has_programs)
    @rule(data=st.data())
    def toggle_health(self, data: st.DataObject) -> None:
        name = self.pick(data)
        mark = self.w.run.work / f"{HEALTH_MARK}{name}"
        if mark.exists():
            mark.unlink()
        else:
            mark.touch()

    @rule(data=st.data(), via=st.sampled_from(["reload", "SIGHUP"]))
    def change_config(self, data: st.DataObject, via: str) -> None:
        w = self.w
        action = data.draw(st.sampled_from(["add", "remove", "change"]), label="action")
        before = dict(w.specs)
        if action == "add":
            free = [n for n in NAMES if n not in w.specs]
            if not free:
                return
            new = data.draw(specs(data.draw(st.sampled_from(free), label="name")), label="spec")
            w.specs[new.name] = new
        elif action == "remove" and w.specs:
            del w.specs[self.pick(data)]
        elif action == "change" and w.specs:
            name = self.pick(data)
            w.specs[name] = data.draw(specs(name), label="spec")
        w.write_config()
        if via == "reload":
            reply = w.ctl.request("reload", {}, 90.0)  # type: ignore[union-attr]
            assert reply["ok"], reply
        else:
            done = len(w.run.events("config_reloaded"))
            w.run.signal(signal.SIGHUP)
            wait_until(lambda: len(w.run.events("config_reloaded")) > done, 90, "SIGHUP reload")
        removed = [n for n in before if n not in w.specs]
        changed = [n for n in w.specs if n in before and before[n] != w.specs[n]]
        added = [n for n in w.specs if n not in before]
        w.check_gone(removed)
        w.removed |= set(removed)
        for n in removed:
            w.expect.pop(n, None)
        for n in changed + added:
            w.expect[n] = Expect(UP if w.specs[n].autostart else DOWN, f"{'changed' if n in changed else 'added'} by reload")

    @precondition(has_programs)
    @rule()
    def usr2(self) -> None:
        done = len(self.w.run.events("logs_reopened"))
        self.w.run.signal(signal.SIGUSR2)
        wait_until(lambda: len(self.w.run.events("logs_reopened")) > done, 30, "SIGUSR2 reopen")

    @precondition(has_programs)
    @rule(data=st.data())
    def logrotate(self, data: st.DataObject) -> None:
        self.w.ctl.request("logrotate", {"names": [self.pick(data)]}, 30.0)  # type: ignore[union-attr]

    @precondition(has_programs)
    @rule(data=st.data(), n=st.integers(2, 4))
    def clients_at_once(self, data: st.DataObject, n: int) -> None:
        """Several procguardctl clients at once: each answered within its deadline, none disturbs another."""
        verbs = data.draw(st.lists(st.sampled_from(["status", "start", "restart", "pid", "version"]),
                                   min_size=n, max_size=n), label="verbs")
        jobs = []
        for verb in verbs:
            args = [verb]
            if verb in ("start", "restart"):
                name = self.pick(data)
                args.append(name)
                self.w.expect[name] = Expect(UP, f"{verb} from a concurrent client")
            jobs.append(args)
        results: list[subprocess.CompletedProcess[bytes] | BaseException] = [None] * len(jobs)  # type: ignore[list-item]

        def go(i: int) -> None:
            try:
                results[i] = subprocess.run(self.w.run.ctl_argv("--timeout", "90", *jobs[i]),
                                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
            except BaseException as exc:  # noqa: BLE001 - reported below, in the test's thread
                results[i] = exc

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for job, r in zip(jobs, results):
            assert isinstance(r, subprocess.CompletedProcess), f"{job}: {r!r}"
            # 0 ok, 1 a start that failed (a failing health check), 3 status: not all RUNNING.
            assert r.returncode in (0, 1, 3), (job, r.returncode, r.stderr)
            assert r.returncode != 1 or job[0] in ("start", "restart"), (job, r.stderr)

    @precondition(has_programs)
    @rule(data=st.data())
    def deploy(self, data: st.DataObject) -> None:
        name = self.pick(data)
        self.command("deploy", [name], deadline_s=120.0)
        self.w.expect[name] = Expect(UP, "deployed")

    # ------------------------------------------------------------------------- invariants
    @invariant()
    def consistent(self) -> None:
        if self.world is not None and self.world.ctl is not None:
            self.world.check()

    def teardown(self) -> None:
        if self.world is None:
            return
        try:
            self.world.shutdown()
        finally:
            left = self.world.cleanup()
            assert not left, f"processes survived (killed now): {left}"


def _workers(w: World, name: str, leader: int) -> list[int]:
    out = []
    for pid in w.owners().get(name, []):
        try:
            if pid != leader and os.getpgid(pid) == leader:
                out.append(pid)
        except ProcessLookupError:
            pass
    return out


DaemonModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=list(HealthCheck), derandomize=os.environ.get("PROCGUARD_MODEL_SEED") is None,
)
TestDaemonModel = DaemonModel.TestCase
