"""A new image that fails after the exec keeps every program supervised; tcp:// control across it (issue #19).

The daemon runs from a copy of the package (as a pip install puts it), which the test then breaks the way
a release could: an adopt that raises for one process, and a config edited between the pre-flight and
the exec into one the new code refuses, an endpoint that cannot be opened. Before, each left the apps without a supervisor (the new
image exited, their output pipes closed behind them).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.bench_reexec import Clients
from procguardctl.endpoint import ClientSettings
from tests.helpers import DaemonRun, alive, prog, wait_until
from tests.integration.test_reexec import (
    CTL, WRITER, _copy_package, ctl, free_port, set_version, start_installed, status, status_when,
)

# Inserted as the first line of adopt._restore in the copy: a bug of the new code, for one process only.
BROKEN_RESTORE = ("def _restore(proc: Process, saved: SavedProcess) -> None:\n",
                  "def _restore(proc: Process, saved: SavedProcess) -> None:\n"
                  "    if proc.name == 'victim':\n        raise RuntimeError('injected adopt failure')\n")
# Appended to the pre-flight's success path in the copy: the config is edited right after the pre-flight
# passed (a deploy script racing the upgrade), into one the new code refuses.
EDIT_AFTER_PREFLIGHT = ('    print(f"procguard {VERSION} can take over")\n',
                        '    with open(args.config, "a") as f:\n'
                        '        f.write("\\n[program.broken]\\ncommand = \\"true\\"\\nstopwaitsecs = \\"ten\\"\\n")\n'
                        '    print(f"procguard {VERSION} can take over")\n')

# Inserted at the start of the metrics endpoint's start in the copy: its port was taken meanwhile.
METRICS_TAKEN = ('        """Listen; return the address (with the port a port 0 got). Raises OSError."""\n',
                 '        """Listen; return the address (with the port a port 0 got). Raises OSError."""\n'
                 '        raise OSError(98, "Address already in use")\n')


def patch(path: Path, change: tuple[str, str], *, undo: bool = False) -> None:
    old, new = change if not undo else change[::-1]
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found (the code the test breaks moved)"
    path.write_text(text.replace(old, new))


def exit_handled(d: DaemonRun, name: str, before: dict[str, Any]) -> None:
    """Kill the process's pid: the daemon reaps it (no zombie) and restarts it under a new pid."""
    os.kill(before["pid"], signal.SIGKILL)
    after = status_when(d, lambda s: s[name]["state"] == "RUNNING" and s[name]["pid"] != before["pid"],
                        f"{name} restarted after its exit")
    assert alive(after[name]["pid"])
    wait_until(lambda: not alive(before["pid"]), 10, f"{name}'s old pid reaped")


def test_a_new_image_that_fails_after_the_exec_keeps_every_program_supervised(daemon, tmp_path):
    installed = _copy_package(tmp_path / "site", "0.1.0")
    d: DaemonRun = daemon()
    good = (f'[procguard]\nlogdir = "{d.work}/logs"\ncontrol = "{d.endpoint}"\nmetrics = "127.0.0.1:0"\n\n'
            + "".join(prog(name, [sys.executable, WRITER, "--dir", str(d.work), "--name", name, "tick"], startsecs=0,
                           stdout_logfile="NONE") for name in ("victim", "bystander")))
    d.write_config(good)
    start_installed(d, installed, tmp_path)
    before = status_when(d, lambda s: all(s[n]["state"] == "RUNNING" for n in ("victim", "bystander")), "both up")

    def reexec_into(version: str) -> None:
        """Re-exec into the copy as broken now: the same daemon answers, with the same children."""
        set_version(installed, version)
        r = ctl(d, "reexec")
        assert r.returncode == 0, r.stderr
        assert d.proc.poll() is None, d.logfile.read_text()[-3000:]
        assert json.loads(ctl(d, "--json", "version").stdout)["version"] == version
        now = status(d)
        for name in ("victim", "bystander"):
            assert (now[name]["pid"], now[name]["state"]) == (before[name]["pid"], "RUNNING"), now[name]
            assert alive(now[name]["pid"])

    # 1. The new code's adopt raises for one process: logged with its traceback, the process adopted
    #    without its saved state, the others as usual; every pid kept, the daemon answers.
    adopt_py = installed / "procguard" / "upgrade" / "adopt.py"
    patch(adopt_py, BROKEN_RESTORE)
    reexec_into("0.1.1")
    failed = d.events("reexec_restore_failed")
    assert [ev["process"] for ev in failed] == ["victim"]
    assert "injected adopt failure" in failed[0]["exception"]
    exit_handled(d, "victim", before["victim"])
    before = status(d)

    # 2. The config is edited between the pre-flight and the exec into one the new code refuses: the new
    #    image keeps the config in force (the pre-flight's) instead of exiting; a reload then says why.
    patch(adopt_py, BROKEN_RESTORE, undo=True)
    preflight_py = installed / "procguard" / "upgrade" / "preflight.py"
    patch(preflight_py, EDIT_AFTER_PREFLIGHT)
    reexec_into("0.1.2")
    kept = d.events("reexec_config_kept")
    assert len(kept) == 1 and any("stopwaitsecs" in p for p in kept[0]["problems"]), kept
    assert "broken" not in status(d)
    reload = ctl(d, "reload")
    assert reload.returncode != 0 and "stopwaitsecs" in reload.stderr, reload.stderr
    exit_handled(d, "bystander", before["bystander"])
    before = status(d)

    # 3. An endpoint the new image cannot open (the metrics port taken during the exec): logged, and the
    #    daemon serves on without it instead of exiting.
    patch(preflight_py, EDIT_AFTER_PREFLIGHT, undo=True)
    d.write_config(good)
    patch(installed / "procguard" / "observe" / "metrics_server.py", METRICS_TAKEN)
    reexec_into("0.1.3")
    assert [ev.get("action") for ev in d.events("metrics_setup_failed")] == \
        ["serving on without it: the programs were adopted"]
    exit_handled(d, "victim", before["victim"])


def tcp_listeners(port: int) -> set[int]:
    """Inodes of the sockets listening on 127.0.0.1:port (/proc/net/tcp: state 0A is LISTEN)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            out.add(int(fields[9]))
    return out


def test_a_tcp_control_socket_is_the_same_listener_across_a_reexec(daemon):
    """tcp:// (CURVE): the listener is handed over as ipc:// is, so the port is never unbound; clients
    connecting meanwhile wait in its backlog and get their replies from the new image."""
    d: DaemonRun = daemon()
    keys = d.work / "keys"
    for name in ("server", "client"):
        r = subprocess.run([*CTL, "keygen", str(keys), name], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
    (keys / "authorized").mkdir()
    (keys / "authorized" / "client.key").write_bytes((keys / "client.key").read_bytes())
    port = free_port()
    d.endpoint = f"tcp://127.0.0.1:{port}"
    d.write_config(f'[procguard]\nlogdir = "logs"\ncontrol = "{d.endpoint}"\n'
                   '[procguard.curve]\nserver_secret_key = "keys/server.key_secret"\n'
                   'authorized_clients = "keys/authorized"\nclient_secret_key = "keys/client.key_secret"\n\n'
                   + prog("idle", [sys.executable, WRITER, "--dir", str(d.work), "--name", "idle", "tick"],
                          startsecs=0, stdout_logfile="NONE"))
    d.start(wait=False)
    settings = ClientSettings(d.endpoint, str(keys / "server.key"), str(keys / "client.key_secret"))

    def ctl_c(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CTL, "-c", str(d.config), *args], capture_output=True, text=True, timeout=120)

    before = wait_until(lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(
        ctl_c("--json", "status")), 30, "status over CURVE")
    listener = tcp_listeners(port)
    assert len(listener) == 1
    flood = Clients(settings, 3, "status")
    try:
        wait_until(lambda: len(flood.replies) >= 3, 30, "the flood answered before the re-exec")
        r = ctl_c("reexec")
        assert r.returncode == 0, r.stderr
        at_reexec = len(flood.replies)
        wait_until(lambda: len(flood.replies) > at_reexec + 3, 30, "the flood answered after the re-exec")
    finally:
        flood.stop()
    assert flood.hangs == 0 and flood.crashes == [], (flood.hangs, flood.crashes)
    assert tcp_listeners(port) == listener  # the same socket: never unbound
    after = json.loads(ctl_c("--json", "status").stdout)
    assert [(s["name"], s["pid"], s["state"]) for s in after] == [(s["name"], s["pid"], s["state"]) for s in before]
    assert d.events("reexec_config_carried")
