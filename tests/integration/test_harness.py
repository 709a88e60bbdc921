"""procguard.testing.RealDaemon, the real-daemon harness tests and benchmarks share (issue #15).

It must find what a daemon started even when the daemon could not stop it: otherwise every test's
"nothing survives" check would pass on a leak.
"""

from pathlib import Path

import psutil

from procguard.testing import RealDaemon
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
