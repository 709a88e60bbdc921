"""An idle daemon holds only the threads and libraries it needs (issue #17).

Counted from the outside, as an operator would (/proc/PID/task, /proc/PID/maps), not from speed.
"""

import json
import os
import sys
from pathlib import Path

from tests.helpers import probe, prog, wait_until

# The main thread, and pyzmq's two: libzmq's reaper, and the one I/O thread an ipc:// socket needs.
# libzmq starts the reaper with a context's first socket whatever its options (ctx_t::start in src/ctx.cpp),
# and with ZMQ_IO_THREADS = 0 binding ipc:// fails with "No thread available" (EMTHREAD; measured with
# pyzmq 27.3 / libzmq 4.3.5): only inproc:// works without an I/O thread. The spawn pool and the inherit
# writer are gone at idle.
IDLE_THREADS_MAX = 3

# Modules an idle daemon (ipc:// control, no health check, no alert, no --check) must not have imported: each
# costs private memory on a 1 GiB server (#17; benchmarks/RESULTS.md). They load when first needed.
NOT_AT_IDLE = {
    "argparse": "procguard/argv.py reads the usual command lines itself; help and errors import it",
    "procguard.terminal": "argparse's help formatter",
    "procguard.config.describe": "--check only",
    "zmq.auth": "CURVE (tcp://) only",
    "zmq.utils.z85": "CURVE (tcp://) only",
    "procguard.health.http": "imported by a program's first http check",
    "procguard.health.uwsgi": "imported by a program's first uwsgi check",
    "procguard.health.exec": "imported by a program's first exec check",
    "procguard.health.tcp": "imported by a program's first tcp check",
    "procguard.upgrade.adopt": "a re-exec's new image only",
    "procguard.upgrade.handoff": "imported by `procguardctl reexec`",
    "procguard.upgrade.state": "a re-exec only",
    "structlog": "procguard/log.py writes structlog's lines itself; the console format imports it",
    "base64": "tail -f frames are encoded with binascii; upgrade/state.py (a re-exec) imports it",
    "psutil": "trees, strays and status -l are read from /proc (runtime/procfs.py)",
}


def threads(pid: int) -> dict[int, str]:
    """Thread id -> name of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except FileNotFoundError:
            pass  # ended meanwhile
    return out


def mapped(pid: int, fragment: str) -> bool:
    return fragment in Path(f"/proc/{pid}/maps").read_text()


def imported(log: str) -> set[str]:
    """Every module the daemon imported so far, from `python -X importtime`'s lines on its stderr."""
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_idle_daemon_keeps_only_zmq_threads_and_the_modules_it_uses(daemon):
    d = daemon()
    say = [sys.executable, "-c", "import sys, time; print('hello', flush=True); sys.stdin.read(); time.sleep(1e6)"]
    d.write_config("".join(prog(f"p{i}", probe(d.work, f"p{i}"), startsecs=0) for i in range(12))
                   + prog("talker", say, startsecs=0, stdout_logfile="inherit"))
    d.start(env={"PYTHONPROFILEIMPORTTIME": "1"})  # each import's line goes to the log (stderr)
    for i in range(12):
        d.wait_state(f"p{i}", "RUNNING")
    d.wait_state("talker", "RUNNING")
    # 13 spawns ran on the pool (6 workers) and the talker's line went through the inherit writer.
    wait_until(lambda: "hello" in d.logfile.read_text(), what="the talker's line on the daemon's stdout")
    pid = d.proc.pid
    idle = wait_until(lambda: (lambda t: t if len(t) <= IDLE_THREADS_MAX else None)(threads(pid)), timeout=20,
                      what=f"at most {IDLE_THREADS_MAX} threads; now {threads(pid)}")
    assert sorted(name for tid, name in idle.items() if tid != pid) == ["ZMQbg/IO/0", "ZMQbg/Reaper"], idle
    # psutil is never loaded: trees, strays and status -l are read from /proc (runtime/procfs.py).
    assert not mapped(pid, "_psutil_linux")
    modules = imported(d.log_text())
    assert "procguard.daemon" in modules and "procguard.health.check" in modules, sorted(modules)
    assert not {m: why for m, why in NOT_AT_IDLE.items() if m in modules}

    # The pool and the writer come back on demand: a restart spawns again, the new talker is heard.
    r = d.ctl("restart", "talker")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: d.logfile.read_text().count("hello") == 2, what="the restarted talker's line")
    r = d.ctl("--json", "status", "--long")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 13 and all(row["rss_bytes"] > 0 for row in rows), rows
    assert not mapped(pid, "_psutil_linux")
    wait_until(lambda: len(threads(pid)) <= IDLE_THREADS_MAX, timeout=20,
               what=f"back to at most {IDLE_THREADS_MAX} threads; now {threads(pid)}")


def test_a_mass_exit_keeps_the_daemon_log_one_json_event_per_line(daemon):
    """500 children exiting at once overflow asyncio's signal wakeup socket; Python's warning about
    each dropped byte went to stderr in the middle of the log's lines (#17). Every line stays an event,
    and every process still reaches STOPPED (a dropped wakeup loses no exit)."""
    d = daemon()
    n = 500
    d.write_config('[procguard]\nloglevel = "info"\n'
                   f'logdir = "{d.work}/logs"\ncontrol = "{d.endpoint}"\n'
                   + prog("many", ["/bin/sleep", "100000"], startsecs=0, numprocs=n, stdout_logfile="NONE",
                          stderr_logfile="NONE"))
    d.start()
    wait_until(lambda: len(d.events("process_state_changed", new="RUNNING")) == n, timeout=120,
               what=f"{n} RUNNING")
    assert d.stop(timeout=120) == 0
    lines = d.logfile.read_text().splitlines()
    bad = [line for line in lines if not (line.startswith("{") and line.endswith("}"))]
    assert not bad, bad[:5]
    for line in lines:
        json.loads(line)
    assert len(d.events("process_state_changed", new="STOPPED")) == n
