"""Ansible's community.general.supervisorctl module drives procguardctl as it drives supervisorctl (issue #14).

One real daemon, one `ansible-playbook` run (Ansible starts slowly: one run per task would take minutes on
a loaded box). A small callback plugin records, after every task, its `changed`/`failed` and a snapshot
of the test's processes read from /proc, so each step's real effect is checked, not procguardctl's word
for it. Every `state` the module has is used on a program, a [group.NAME] and `all`. Hermetic: HOME and
every ANSIBLE_* directory point into tmp_path.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO, DaemonRun, wait_until

PYTHON = sys.executable
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

# A child that logs every SIGHUP (pid and signal) and keeps running; argv[1] marks it for the snapshot.
CHILD = """import os, signal, sys, time
with open(sys.argv[3], "a") as f:
    f.write(f"{os.getpid()}\\n")
def hup(signum, frame):
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()} HUP\\n")
signal.signal(signal.SIGHUP, hup)
while True:
    time.sleep(3600)
"""

# Records each task's outcome with the test's live processes (name -> pids) read from /proc.
CALLBACK = '''
import json, os
from ansible.plugins.callback import CallbackBase


def snapshot():
    marker = "pgmark:" + os.environ["PGSNAP_MARKER"] + ":"
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\\0")
        except OSError:
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if text.startswith(marker):
                found.setdefault(text[len(marker):], []).append(int(entry))
    return found


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "pgsnap"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, failed):
        r = result._result
        row = {"task": result._task.get_name(), "changed": bool(r.get("changed")), "failed": failed,
               "msg": str(r.get("msg", "")), "pids": snapshot()}
        with open(os.environ["PGSNAP_OUT"], "a") as f:
            f.write(json.dumps(row) + "\\n")

    def v2_runner_on_ok(self, result):
        self._record(result, False)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, True)
'''


def child(d: DaemonRun, name: str, **keys: object) -> str:
    argv = [PYTHON, "-c", CHILD, f"pgmark:{d.work}:{name}", str(d.work / "hup.log"), str(d.work / "pids")]
    lines = [f"[program.{name}]", f"command = {json.dumps(argv)}", "startsecs = 0"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n\n"


BASE = ("web", "ga", "gb")  # programs; gb has numprocs = 2


def config(d: DaemonRun, with_extra: bool) -> str:
    text = (child(d, "web") + child(d, "ga") + child(d, "gb", numprocs=2)
            + '[group.grp]\nprograms = ["ga", "gb"]\npriority = 10\n\n')
    if with_extra:
        text += child(d, "extra") + child(d, "x") + '[group.grp2]\nprograms = ["x"]\n\n'
    return text


TASKS: list[tuple[str, dict[str, Any]]] = [
    # present / absent: reread + add / remove, as the module does them.
    ("present program", {"name": "extra", "state": "present"}),
    ("present program again", {"name": "extra", "state": "present"}),
    ("present group", {"name": "grp2:", "state": "present"}),
    ("present all", {"name": "all", "state": "present"}),
    ("absent program", {"name": "extra", "state": "absent", "stop_before_removing": True}),
    ("absent group", {"name": "grp2:", "state": "absent", "stop_before_removing": True}),
    ("absent all", {"name": "all", "state": "absent"}),
    # a program
    ("stopped program", {"name": "web", "state": "stopped"}),
    ("stopped program again", {"name": "web", "state": "stopped"}),
    ("started program", {"name": "web", "state": "started"}),
    ("started program again", {"name": "web", "state": "started"}),
    ("restarted program", {"name": "web", "state": "restarted"}),  # its `update` adds extra and grp2 back
    ("signalled program", {"name": "web", "state": "signalled", "signal": "HUP"}),
    # a group
    ("stopped group", {"name": "grp:", "state": "stopped"}),
    ("started group", {"name": "grp:", "state": "started"}),
    ("restarted group", {"name": "grp:", "state": "restarted"}),
    ("signalled group", {"name": "grp:", "state": "signalled", "signal": "HUP"}),
    # all
    ("stopped all", {"name": "all", "state": "stopped"}),
    ("stopped all again", {"name": "all", "state": "stopped"}),
    ("started all", {"name": "all", "state": "started"}),
    ("restarted all", {"name": "all", "state": "restarted"}),
    ("signalled all", {"name": "all", "state": "signalled", "signal": "HUP"}),
]


def playbook(cfg: Path, ctl: Path) -> str:
    lines = ["- hosts: localhost", "  connection: local", "  gather_facts: false", "  module_defaults:",
             "    community.general.supervisorctl:", f"      config: {json.dumps(str(cfg))}",
             f"      supervisorctl_path: {json.dumps(str(ctl))}", "  tasks:"]
    for name, args in TASKS:
        lines += [f"    - name: {name}", f"      community.general.supervisorctl: {json.dumps(args)}",
                  "      ignore_errors: true"]
    return "\n".join(lines) + "\n"


def run_playbook(d: DaemonRun, tmp_path: Path) -> dict[str, dict[str, Any]]:
    ctl = tmp_path / "procguardctl"
    ctl.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {PYTHON} -m procguardctl \"$@\"\n")
    ctl.chmod(0o755)
    plugins = tmp_path / "callback_plugins"
    plugins.mkdir()
    (plugins / "pgsnap.py").write_text(CALLBACK)
    (tmp_path / "ansible.cfg").write_text("")
    book = tmp_path / "play.yml"
    book.write_text(playbook(d.config, ctl))
    out = tmp_path / "results.jsonl"
    home = tmp_path / "home"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"), "ANSIBLE_HOME": str(home / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_CALLBACK_PLUGINS": str(plugins), "ANSIBLE_CALLBACKS_ENABLED": "pgsnap",
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_PIPELINING": "1",  # the module goes to python on stdin: no temporary files per task
        "PGSNAP_MARKER": str(d.work), "PGSNAP_OUT": str(out),
    }
    r = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", f"ansible_python_interpreter={PYTHON}",
                        str(book)], env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    assert [row["task"] for row in rows] == [name for name, _ in TASKS], r.stdout + r.stderr
    return {row["task"]: row for row in rows}


def alive(row: dict[str, Any], *names: str) -> list[int]:
    """The pids of these programs in a task's /proc snapshot (gb counts 2 processes)."""
    return sorted(pid for name in names for pid in row["pids"].get(name, []))


def test_ansible_supervisorctl_module_drives_procguardctl(daemon: Any, tmp_path: Path) -> None:
    d: DaemonRun = daemon()
    d.write_config(config(d, with_extra=False))
    d.start()
    wait_until(lambda: len(d.events("process_state_changed", new="RUNNING")) >= 4, what="4 processes RUNNING")
    d.write_config(config(d, with_extra=True))  # extra and grp2 are now in the files, not in use
    res = run_playbook(d, tmp_path)

    def step(task: str, changed: bool) -> dict[str, Any]:
        row = res[task]
        assert not row["failed"] and row["changed"] is changed, (task, row)
        return row

    everything = ("web", "ga", "gb")
    row = step("present program", True)
    assert len(alive(row, "extra")) == 1 and not alive(row, "x")
    step("present program again", False)
    row = step("present group", True)
    assert len(alive(row, "x")) == 1
    step("present all", False)
    row = step("absent program", True)
    assert not alive(row, "extra") and len(alive(row, "x")) == 1
    row = step("absent group", True)
    assert not alive(row, "x")
    # supervisorctl cannot remove `all` either: the module fails and nothing is touched.
    row = res["absent all"]
    assert row["failed"] and "no such process/group: all" in row["msg"], row
    assert len(alive(row, *everything)) == 4

    before = alive(res["absent all"], "web")
    row = step("stopped program", True)
    assert not alive(row, "web") and len(alive(row, "ga", "gb")) == 3
    step("stopped program again", False)
    row = step("started program", True)
    web = alive(row, "web")
    assert len(web) == 1 and web != before
    step("started program again", False)
    row = step("restarted program", True)
    assert len(alive(row, "web")) == 1 and alive(row, "web") != web
    # restarted runs `update` first, which puts the groups reread finds available back into use.
    assert len(alive(row, "extra")) == len(alive(row, "x")) == 1
    web = alive(row, "web")
    row = step("signalled program", True)
    assert alive(row, "web") == web
    signalled = [web]

    row = step("stopped group", True)
    assert not alive(row, "ga", "gb") and alive(row, "web") == web
    row = step("started group", True)
    grp = alive(row, "ga", "gb")
    assert len(grp) == 3
    row = step("restarted group", True)
    assert len(alive(row, "ga", "gb")) == 3 and not set(alive(row, "ga", "gb")) & set(grp)
    assert alive(row, "web") == web
    grp = alive(row, "ga", "gb")
    row = step("signalled group", True)
    assert alive(row, "ga", "gb") == grp
    signalled.append(grp)

    all_names = (*everything, "extra", "x")
    row = step("stopped all", True)
    assert not alive(row, *all_names)
    step("stopped all again", False)
    row = step("started all", True)
    started = alive(row, *all_names)
    assert len(started) == 6
    row = step("restarted all", True)
    assert len(alive(row, *all_names)) == 6 and not set(alive(row, *all_names)) & set(started)
    now = alive(row, *all_names)
    row = step("signalled all", True)
    assert alive(row, *all_names) == now
    signalled.append(now)

    # Each signalled process logged the HUP itself (and only those: the others never got one).
    expected = sorted(pid for pids in signalled for pid in pids)
    hup_log = d.work / "hup.log"

    def hups() -> list[int]:
        got = sorted(int(line.split()[0]) for line in hup_log.read_text().splitlines()) if hup_log.exists() else []
        return got if got == expected else []

    wait_until(hups, what=f"HUP logged by {expected}")
