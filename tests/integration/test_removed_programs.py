"""A program removed by a reload leaves nothing of its output behind in the daemon (issue #20).

Before, the daemon kept every removed process's output streams (their tails, up to 64 KiB each) and log
files for good: memory that grew with every distinct program name ever removed, and on SIGUSR2 or
`logreopen` it reopened (and recreated) the log files of programs long gone, one descriptor each.
"""

import os
from pathlib import Path

from tests.helpers import prog, wait_until

N = 4


def running(d, names: set[str]) -> None:
    def up() -> bool:
        return {n for n, s in d.status().items() if s["state"] == "RUNNING"} >= names

    wait_until(up, 60, f"{sorted(names)} RUNNING")


def open_paths(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_a_removed_programs_log_files_are_neither_kept_nor_reopened(daemon):
    d = daemon()
    keep = prog("keep", ["sleep", "3600"], startsecs=0)
    gone = "".join(prog(f"gone{i}", ["/bin/sh", "-c", "echo hello; exec sleep 3600"], startsecs=0)
                   for i in range(N))
    d.write_config(keep + gone)
    d.start()
    running(d, {"keep", *(f"gone{i}" for i in range(N))})
    before = d.request("logreopen")
    assert before["ok"], before

    d.write_config(keep)  # a reload removes the N programs
    reply = d.request("reload", {}, 120)
    assert reply["ok"] and sorted(reply["result"]["removed"]) == [f"gone{i}" for i in range(N)], reply
    logs = sorted(p for p in Path(d.work, "logs").iterdir() if p.name.startswith("gone"))
    assert len(logs) == 2 * N, logs  # stdout and stderr of each
    for p in logs:
        p.unlink()  # the operator cleans up after the removal

    after = d.request("logreopen")
    assert after["ok"], after
    assert after["result"]["reopened"] == before["result"]["reopened"] - 2 * N  # only what is still in use
    assert not [p for p in Path(d.work, "logs").iterdir() if p.name.startswith("gone")]  # nothing recreated
    assert not [p for p in open_paths(d.pid) if "/gone" in p]  # no descriptor on a removed program's file
    running(d, {"keep"})


def test_a_changed_program_keeps_its_tail_across_the_reload(daemon):
    """Only removal forgets: a program a reload changes keeps one tail under its name, as before."""
    d = daemon()
    d.write_config(prog("chg", ["/bin/sh", "-c", "echo before-reload; exec sleep 3600"], startsecs=0))
    d.start()
    wait_until(lambda: b"before-reload" in d.ctl_bytes("tail", "chg").stdout, 60, "the first output")
    d.write_config(prog("chg", ["/bin/sh", "-c", "echo after-reload; exec sleep 3601"], startsecs=0))
    reply = d.request("reload", {}, 120)
    assert reply["ok"] and reply["result"]["changed"] == ["chg"], reply
    tail = wait_until(lambda: (lambda out: out if b"after-reload" in out else b"")(d.ctl_bytes("tail", "chg").stdout),
                      60, "the changed program's output")
    assert tail.index(b"before-reload") < tail.index(b"after-reload")
