"""procguard.testing.RealDaemon, the real-daemon harness tests and benchmarks share (issue #15).

It must find what a daemon started even when the daemon could not stop it: otherwise every test's
"nothing survives" check would pass on a leak.
"""

import os
import subprocess
from pathlib import Path

import psutil

from procguard.testing import RealDaemon
from procguard.testing.recorder import start_ticks
from procguard.testing.run import DaemonRun
from procguard.testing.world import World
from tests.helpers import alive, prog, wait_until


def running_pid(d: RealDaemon, name: str) -> int:
    def pid() -> int | None:
        reply = d.request("status", {"names": [name]})
        assert reply["ok"], reply
        [row] = reply["result"]
        return int(row["pid"]) if row["state"] == "RUNNING" else None

    return wait_until(pid, what=f"{name} RUNNING")


def test_real_daemon_serves_its_socket_stops_clean_and_reports_what_survives_a_crash(tmp_path: Path) -> None:
    config = tmp_path / "procguard.toml"
    config.write_text(f'[procguard]\nlogdir = "{tmp_path}/logs"\ncontrol = "ipc://{tmp_path}/control.sock"\n\n'
                      + prog("web", ["sleep", "3600"], startsecs=0))
    d = RealDaemon(config)
    try:
        d.start()
        assert d.endpoint == f"ipc://{tmp_path}/control.sock"  # read from the config
        first = running_pid(d, "web")
        r = d.ctl("pid", "web")
        assert (r.returncode, r.stdout) == (0, f"{first}\n"), r.stderr
        assert d.stop() == 0 and not alive(first)
        assert d.close() == []

        d.start()  # the same daemon again, then killed: it cannot stop its child
        second = running_pid(d, "web")
        assert second != first
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        assert alive(second)
    finally:
        left = d.close()
    assert left == [second] and not alive(second)


def descendants(pid: int) -> list[int]:
    """Every live descendant of pid, walked from /proc/PID/task/*/children."""
    out: list[int] = []
    stack = [pid]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            stack += kids
    return out


def test_a_daemon_that_dies_midway_leaves_none_of_its_processes_behind(tmp_path: Path) -> None:
    """A test that fails midway with its daemon gone (crashed, killed by a timeout) still cleans up (issue #20).

    Each program's leader runs a worker in its own process group, as a pre-fork server does; the log
    names only the leaders. Once the daemon is dead its tree cannot be walked any more (the children
    were reparented): close() finds the workers through the leaders' process groups.
    """
    n = 8
    config = tmp_path / "procguard.toml"
    config.write_text(f'[procguard]\nlogdir = "{tmp_path}/logs"\ncontrol = "ipc://{tmp_path}/control.sock"\n\n'
                      + "".join(prog(f"f{i}", ["/bin/sh", "-c", "sleep 3600 & exec sleep 3601"], startsecs=0)
                                for i in range(n)))
    d = RealDaemon(config)
    family: list[psutil.Process] = []
    try:
        d.start()
        pids = wait_until(lambda: (lambda t: t if len(t) == 2 * n else [])(descendants(d.pid)), 60,
                          f"{n} programs with a worker each")
        family = [psutil.Process(pid) for pid in pids]
        assert d.proc is not None
        d.proc.kill()  # the daemon dies midway; nothing walked its tree before
        d.proc.wait()
        left = d.close()
        still = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        for p in family:  # what close() missed (this test's own scan): the test itself leaves nothing
            if p.is_running():  # is_running() compares the create time: never another process
                p.kill()
    assert not still, f"{len(still)} of {2 * n} outlived close(): {still}"
    assert sorted(left) == sorted(p.pid for p in family)  # and each was reported as a survivor


def test_a_recorded_pid_now_naming_another_process_is_never_killed() -> None:
    """A probe's pid in DIR/pids may be reused by the time of cleanup (pid_max 32768 wraps within minutes
    under load): cleanup must not kill the process that holds it now, however recent (issue #20's soak
    killed ten other tests' processes that way)."""
    run = DaemonRun(prog("one", ["sleep", "3600"], startsecs=0))
    stranger = subprocess.Popen(["sleep", "3600"])  # started after the run: a reused pid looks like this
    try:
        run.start()
        (run.work / "pids").write_text(f"{stranger.pid}\n")  # a probe that ran once had this pid
        left = run.cleanup()
        assert stranger.poll() is None, "cleanup killed a process that was not the daemon's"
        assert stranger.pid not in left and left == []
    finally:
        stranger.kill()
        stranger.wait()
        run.cleanup()


def test_the_world_tells_a_reused_recorder_pid_from_its_recorder() -> None:
    """World.alive(): an owners line's pid is the recorder only with the start time it wrote."""
    w = World.create([])
    stranger = subprocess.Popen(["sleep", "3600"])
    try:
        ticks = start_ticks(stranger.pid)
        assert ticks is not None
        (w.run.work / "owners").write_text(f"r0 {stranger.pid} {ticks - 100}\nr1 {os.getpid()} {start_ticks(os.getpid())}\n")
        assert w.owners() == {"r0": [stranger.pid], "r1": [os.getpid()]}
        assert not w.alive(stranger.pid)  # same pid, another start time: another process
        assert w.alive(os.getpid())
    finally:
        stranger.kill()
        stranger.wait()
        w.cleanup()


def test_two_recorders_that_had_the_same_pid_keep_their_own_record_counts() -> None:
    """pids are reused within a soak (pid_max 32768): a recorder of r3 may get the pid an r5 recorder had.
    Each keeps its own count of records written, so neither looks like lost output. Here each recorder
    is pid 1 of a pid namespace of its own: the same pid, for sure."""
    from procguard.testing.world import PYTHON, RECORDER

    w = World.create([])
    try:
        for name, count in (("r5", 3), ("r3", 12)):
            with open(w.out_path(name), "wb") as out:
                child = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", PYTHON, RECORDER, "--dir",
                                          str(w.run.work), "--name", name, "--tick", "0.01"], stdout=out)
                try:
                    wait_until(lambda n=name, c=count: w.written(n, 1) >= c, 30, f"{name}: {count} records")
                finally:
                    child.kill()  # --kill-child: the recorder (pid 1 of its namespace) goes with it
                    child.wait()
        owners = w.owners()
        assert owners == {"r5": [1], "r3": [1]}, owners
        for name in ("r5", "r3"):
            assert w._record_problems(name, owners[name], final=False) == [], name
    finally:
        w.cleanup()
