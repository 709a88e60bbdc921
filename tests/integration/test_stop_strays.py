"""STOPPED means every descendant is gone, strays that left the group included (issue #14, item 1).

A real program whose child leaves the process group (setsid) and double-forks; `procguardctl stop`
must not return, nor status say STOPPED, while that grandchild lives.
"""

import json
import signal

import psutil

from tests.helpers import DaemonRun, alive, catches, probe, prog, wait_until


def state_of(d: DaemonRun, name: str) -> str:
    r = d.ctl("--json", "status", name)
    assert r.returncode in (0, 3), r.stderr
    return str(json.loads(r.stdout)[0]["state"])


def escaped_pid(d: DaemonRun, name: str) -> int:
    lines = [line for line in d.probe_events() if line.startswith(f"{name} ") and " escaped " in line]
    assert lines, d.probe_events()
    return int(lines[-1].split()[-1])


def test_stop_returns_only_when_an_escaped_grandchild_is_gone(daemon):
    """Regression for issue #14: the stray scan used to land ~20 ms after STOPPED and was ignored."""
    d = daemon()
    d.write_config(
        # escaped long before the stop: the grandchild is an orphan of the subreaper by then
        prog("early", probe(d.work, "early", mode="double-fork"), startsecs=0, stopwaitsecs=30)
        # escapes at the stop itself: its TERM handler setsid()s and double-forks, then the leader exits
        + prog("late", probe(d.work, "late", mode="escape-on-term"), startsecs=0, stopwaitsecs=30)
    )
    d.start()
    line = wait_until(lambda: [l for l in d.probe_events() if l.startswith("early ") and "grandchild" in l],
                      what="early's grandchild")[0]
    early = int(line.split()[3])
    wait_until(lambda: psutil.Process(early).ppid() == d.proc.pid, what="grandchild reparented to the daemon")
    d.wait_reports("late")
    wait_until(lambda: state_of(d, "late") == "RUNNING", what="late RUNNING")

    for name, grandchild in (("early", early), ("late", None)):
        r = d.ctl("stop", name)
        assert r.returncode == 0, (r.stdout, r.stderr)
        pid = grandchild if grandchild is not None else escaped_pid(d, name)
        assert psutil.Process(d.proc.pid).is_running()
        # Looked at in /proc the moment stop returned: no stopwaitsecs (30 s) had to pass for this.
        assert not alive(pid), f"{name}'s grandchild {pid} outlived `stop`: {psutil.Process(pid).as_dict(['ppid', 'status'])}"
        assert state_of(d, name) == "STOPPED"
        assert d.events("strays_found", process=name)
        found = d.events("strays_found", process=name)[-1]
        assert pid in found["pids"]


def test_restart_starts_the_next_process_only_when_the_escaped_grandchild_is_gone(daemon):
    d = daemon()
    d.write_config(prog("again", probe(d.work, "again", mode="escape-on-term"), startsecs=0, stopwaitsecs=30))
    d.start()
    first = d.wait_reports("again")[0]["pid"]
    # The probe reports before it installs its TERM handler: a restart in between would find nothing to escape.
    wait_until(lambda: catches(first, signal.SIGTERM), what="the probe's TERM handler")
    wait_until(lambda: state_of(d, "again") == "RUNNING", what="again RUNNING")
    r = d.ctl("restart", "again")
    assert r.returncode == 0, (r.stdout, r.stderr)
    grandchild = escaped_pid(d, "again")
    assert not alive(grandchild) and not alive(first)
    second = d.wait_reports("again", count=2)[1]["pid"]
    assert second != first and alive(second)
    # The old grandchild was gone before the next process was spawned.
    stopped = d.events("process_state_changed", process="again", new="STOPPED")
    found = d.events("strays_found", process="again")
    assert stopped and found and grandchild in found[-1]["pids"]
    assert d.events("process_spawned", process="again", pid=second)


def test_a_stray_that_ignores_sigterm_is_killed_after_stopwaitsecs_before_stop_returns(daemon):
    d = daemon()
    d.write_config(prog("stubborn", probe(d.work, "stubborn", mode="double-fork-stubborn"), startsecs=0,
                        stopwaitsecs="500ms"))
    d.start()
    line = wait_until(lambda: [l for l in d.probe_events() if "grandchild" in l], what="the grandchild")[0]
    grandchild = int(line.split()[3])
    wait_until(lambda: psutil.Process(grandchild).ppid() == d.proc.pid, what="grandchild reparented to the daemon")
    r = d.ctl("stop", "stubborn")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert not alive(grandchild)
    st = json.loads(d.ctl("--json", "status", "stubborn").stdout)[0]
    assert st["state"] == "STOPPED" and st["reason"].startswith("killed: did not stop within stopwaitsecs"), st
