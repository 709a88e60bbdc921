"""supervisorctl's texts on stdout and exit codes, command by command, against a real daemon (issue #14).

Each row: procguardctl's arguments, then the exact stdout (or a pattern) and exit code supervisor 4.3's
supervisorctl gives for the same situation (supervisorctl.py: _startresult, _signalresult, do_status,
do_pid, do_reread/_formatChanges, do_add, do_remove, do_update, LSBInitExitStatuses).
"""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import CTL, DaemonRun, probe, prog, wait_until

Row = tuple[tuple[str, ...], "str | re.Pattern[str]", int]


def check(d: DaemonRun, rows: list[Row], server: bool = True) -> None:
    for args, out, code in rows:
        r = d.ctl(*args) if server else subprocess.run([*CTL, *args], capture_output=True, text=True, timeout=60,
                                                       stdin=subprocess.DEVNULL)
        shown = f"procguardctl {' '.join(args)}: exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
        assert r.returncode == code, shown
        if isinstance(out, str):
            assert r.stdout == out, shown
        else:
            assert out.fullmatch(r.stdout), shown


def programs(d: DaemonRun, *, changed: bool) -> str:
    # supervisord's priorities: the group's orders its members among the others (web at 5 first, then
    # the group at 900), a member's own only inside the group (gb at 1 before ga at 1000).
    text = (prog("web", probe(d.work, "web"), startsecs=0, priority=5)
            + prog("idle", probe(d.work, "idle" if not changed else "idle2"), autostart=False)
            + prog("ga", probe(d.work, "ga"), startsecs=0, priority=1000)
            + prog("gb", probe(d.work, "gb"), startsecs=0, numprocs=2, priority=1)
            + '[group.grp]\nprograms = ["ga", "gb"]\npriority = 900\n\n'
            + prog("job", probe(d.work, "job", mode="exit", code=0), type="oneshot", autostart=False))
    if not changed:
        text += prog("broken", probe(d.work, "broken", mode="exit", code=4), autostart=False, startsecs="1s",
                     backoff_initial="30s")
    else:
        text += prog("later", probe(d.work, "later"), startsecs=0)
    return text


def state(d: DaemonRun, name: str) -> Any:
    r = d.ctl("--json", "status")
    return {s["name"]: s["state"] for s in json.loads(r.stdout)}.get(name)


def test_supervisorctl_texts_and_exit_codes(daemon: Any) -> None:
    d: DaemonRun = daemon()
    d.write_config(programs(d, changed=False))
    d.start()
    wait_until(lambda: all(state(d, n) == "RUNNING" for n in ("web", "grp:ga", "grp:gb_00", "grp:gb_01")),
               20, "web and grp RUNNING")
    spawned = [e["process"] for e in d.events("process_spawned")]
    assert spawned[0] == "web" and set(spawned[1:3]) == {"grp:gb_00", "grp:gb_01"} and spawned[3] == "grp:ga", spawned
    number = re.compile(r"[1-9]\d*\n")
    check(d, [
        # status: unknown names first (4), then the table; a stopped process makes it 3.
        (("status", "web", "nope"), re.compile(r"nope: ERROR \(no such process\)\nweb +RUNNING +pid \d+.*\n"), 4),
        (("status", "nope"), "nope: ERROR (no such process)\n", 4),
        (("status", "ghost:*"), "ghost: ERROR (no such group)\n", 4),
        (("status", "idle"), re.compile(r"idle +STOPPED.*\n"), 3),
        (("status", "grp:ga"), re.compile(r"grp:ga +RUNNING +pid \d+.*\n"), 0),
        # start
        (("start", "web"), "web: ERROR (already started)\n", 0),
        (("start", "nope"), "nope: ERROR (no such process)\n", 1),
        (("start", "ghost:*"), "ghost: ERROR (no such group)\n", 2),
        (("start", "broken"), "broken: ERROR (abnormal termination)\n", 7),
        (("start", "job"), "job: started\n", 0),  # a oneshot that ran and succeeded
        (("status", "job"), re.compile(r"job +EXITED +completed.*\n"), 0),
        # stop
        (("stop", "idle"), "idle: ERROR (not running)\n", 0),
        (("stop", "nope"), "nope: ERROR (no such process)\n", 1),
        # signal; `signal WINCH` as one argument (Ansible sends it so); WINCH leaves the probe running.
        (("signal", "HUP", "idle"), "idle: ERROR (not running)\n", 7),
        (("signal", "BOGUS", "web"), "web: ERROR (bad signal name)\n", 1),
        (("signal WINCH", "web"), "web: signalled\n", 0),
        # A known and an unknown name: the known one is acted on, both are reported.
        (("signal", "WINCH", "web", "nope"), "web: signalled\nnope: ERROR (no such process)\n", 1),
        (("stop", "web", "nope"), "web: stopped\nnope: ERROR (no such process)\n", 1),
        (("status", "web"), re.compile(r"web +STOPPED.*\n"), 3),
        (("start", "web", "nope"), "web: started\nnope: ERROR (no such process)\n", 1),
        # pid
        (("pid", "web"), number, 0),
        (("pid", "idle"), "0\n", 7),
        (("pid", "nope"), "No such process nope\n", 1),
        (("pid",), f"{d.proc.pid}\n" if d.proc else "", 0),
        # groups: GROUP:* and GROUP:PROCESS
        (("stop", "grp:*"), "grp:gb_00: stopped\ngrp:gb_01: stopped\ngrp:ga: stopped\n", 0),
        (("start", "grp:"), "grp:gb_00: started\ngrp:gb_01: started\ngrp:ga: started\n", 0),
        (("restart", "grp:gb_01"), "grp:gb_01: stopped\ngrp:gb_01: started\n", 0),
        (("signal", "WINCH", "grp:gb_00", "grp:ga"), "grp:gb_00: signalled\ngrp:ga: signalled\n", 0),
        (("tail", "grp:gb_00"), "", 0),  # the probe writes nothing on stdout
        (("pid", "grp:ga"), number, 0),
        # help
        (("help",), re.compile(r"\ndefault commands \(type help <topic>\):\n=+\n(.*\n)+"), 0),
        (("help", "start"), re.compile(r"usage: procguardctl start (.*\n)+"), 0),
        (("help", "frobnicate"), "*** No help on frobnicate\n", 0),
        # reread / add / remove / update without changes
        (("reread",), "No config updates to processes\n", 0),
        (("add", "web"), "ERROR: process group already active\n", 0),
        (("add", "nope"), "ERROR: no such process/group: nope\n", 1),
        (("remove", "web"), "ERROR: process/group still running: web\n", 1),
        (("update", "nope"), "ERROR: no such group: nope\n", 1),
    ])
    # -u/-p are accepted and ignored (with a note); -s unix:///path; -c together with -s.
    r = d.ctl("-u", "admin", "-p", "secret", "status", "web")
    assert r.returncode == 0 and "-u/-p ignored" in r.stderr, r
    check(d, [(("-s", "unix://" + d.endpoint[len("ipc://"):], "-c", str(d.config), "status", "web"),
               re.compile(r"web +RUNNING.*\n"), 0),
              (("-c", str(d.config), "pid", "web"), number, 0)], server=False)
    # --json keeps procguard's own wording, with the outcome's code.
    r = d.ctl("--json", "stop", "idle")
    assert r.returncode == 0 and json.loads(r.stdout) == [
        {"name": "idle", "action": "stop", "ok": True, "state": "STOPPED", "message": "not running",
         "error": "not_running"}], r

    # The config files change: reread only reports; add, update and remove apply.
    d.write_config(programs(d, changed=True))
    check(d, [
        (("reread",), "broken: disappeared\nidle: changed\nlater: available\n", 0),
        (("status", "later"), "later: ERROR (no such process)\n", 4),  # reread applied nothing
        (("add", "later"), "later: added process group\n", 0),
        (("status", "later"), re.compile(r"later +RUNNING.*\n"), 0),
        (("update", "idle"), "idle: stopped\nidle: updated process group\n", 0),
        (("reread",), "broken: disappeared\n", 0),
        (("update",), "broken: stopped\nbroken: removed process group\n", 0),
        (("reread",), "No config updates to processes\n", 0),
        (("stop", "web"), "web: stopped\n", 0),
        (("remove", "web"), "web: removed process group\n", 0),
        (("status", "web"), "web: ERROR (no such process)\n", 4),
        (("reread",), "web: available\n", 0),
        (("add", "web"), "web: added process group\n", 0),
        (("status", "web"), re.compile(r"web +RUNNING.*\n"), 0),
    ])
    # The changed program runs its new command line (from the file) once started.
    check(d, [(("start", "idle"), "idle: started\n", 0)])
    wait_until(lambda: d.reports("idle2"), what="idle's new command line")


def test_maintail_serves_and_follows_the_daemons_own_log(daemon: Any, tmp_path: Path) -> None:
    d: DaemonRun = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    wait_until(lambda: state(d, "web") == "RUNNING", what="web RUNNING")
    r = d.ctl("maintail")  # supervisorctl's default: the last 1600 bytes
    assert r.returncode == 0 and 0 < len(r.stdout.encode()) <= 1600 and r.stdout.endswith("\n"), r
    r = d.ctl("maintail", "-100000")
    assert r.returncode == 0, r
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    # Every line from the start on (the log goes to a file here; it would be the same under journald), the
    # last one being this very request.
    assert {"control_listening", "daemon_started"} <= set(events) and events[-1] == "control_request", events
    r = d.ctl("maintail", "-40")
    assert r.returncode == 0 and len(r.stdout.encode()) == 40, r
    # -f: lines logged after it began are pushed to it, as tail -f pushes a program's output.
    out = tmp_path / "maintail.out"
    with open(out, "w") as f:
        follower = subprocess.Popen(d.ctl_argv("maintail", "-f"), stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: out.read_text().strip(), what="maintail -f's first lines")
        assert d.ctl("restart", "web").returncode == 0
        wait_until(lambda: '"new": "RUNNING"' in out.read_text().split('"new": "STOPPED"', 1)[-1]
                   and '"new": "STOPPED"' in out.read_text(), what="web's restart in maintail -f")
    finally:
        follower.send_signal(2)
        follower.wait(20)
    assert follower.returncode == 0
