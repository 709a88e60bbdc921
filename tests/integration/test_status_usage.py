"""`status -l` measures each process tree's CPU over its sampling window from /proc (issue #15)."""

import json
import subprocess
import sys

from tests.helpers import DaemonRun, prog, wait_until

# Bounded: a child that outlived a broken daemon would still end by itself.
BUSY = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass"
IDLE = "import time; time.sleep(120)"


def status_long(d: DaemonRun) -> dict[str, dict]:
    r = subprocess.run([sys.executable, "-m", "procguardctl", "-s", d.endpoint, "--json", "status", "--long"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode in (0, 3), r.stderr
    return {s["name"]: s for s in json.loads(r.stdout)}


def test_status_long_shows_the_cpu_a_busy_process_uses(daemon):
    d = daemon()
    d.write_config(prog("busy", [sys.executable, "-c", BUSY], startsecs=0)
                   + prog("idle", [sys.executable, "-c", IDLE], startsecs=0))
    d.start()
    wait_until(lambda: all(s["state"] == "RUNNING" for s in status_long(d).values()), 20, "both RUNNING")
    # A busy loop gets CPU in every sampling window, however loaded the machine: at least one tick.
    wait_until(lambda: (status_long(d)["busy"]["cpu_percent"] or 0) > 0, 20, "busy's CPU% above 0")
    st = status_long(d)
    assert st["busy"]["tree_pids"] == 1 and st["busy"]["rss_bytes"] > 1_000_000
    assert st["idle"]["tree_pids"] == 1 and st["idle"]["cpu_percent"] is not None
