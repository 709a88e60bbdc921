"""`procguardctl reexec`: the daemon execs the installed procguard in place and adopts everything (issue #19).

Real daemon, real children, the real control socket. One daemon per test carries many checks: a re-exec
under way is the expensive part.
"""

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from benchmarks.bench_reexec import Clients
from tests.helpers import REPO, DaemonRun, alive, prog, wait_until
from tests.integration.test_sd_notify import FakeSystemd

CTL = [sys.executable, "-m", "procguardctl"]
PROGRAMS = REPO / "tests" / "programs"
WRITER, FDSERVER, HEALTHSERVER, NOTIFIER = (str(PROGRAMS / f) for f in
                                            ("writer.py", "fdserver.py", "healthserver.py", "notifier.py"))
# Exits the moment its parent (the daemon) has exec'd: /proc/PPID/cmdline then carries the adopt flag.
GAP_CHILD = """
import os, sys, time
ppid = os.getppid()
while b"--adopt-state-fd" not in open(f"/proc/{ppid}/cmdline", "rb").read():
    time.sleep(0.0005)
open(sys.argv[1], "w").write(repr(time.time()))
os._exit(7)
"""


def ctl(d: DaemonRun, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, "-s", d.endpoint, *args], capture_output=True, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


def status(d: DaemonRun) -> dict[str, dict[str, Any]]:
    r = ctl(d, "--json", "status")
    assert r.returncode in (0, 3), r.stderr
    return {s["name"]: s for s in json.loads(r.stdout)}


def status_when(d: DaemonRun, pred: Callable[[dict[str, dict[str, Any]]], bool], what: str) -> dict[str, Any]:
    def check() -> dict[str, dict[str, Any]] | None:
        s = status(d)
        return s if pred(s) else None

    return wait_until(check, 30, what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def socket_inode(pid: int, fd: int) -> int:
    return os.stat(f"/proc/{pid}/fd/{fd}").st_ino


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                out.add(socket_inode(pid, int(fd)))
        except OSError:
            continue
    return out


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return str(r.read().decode())


def test_reexec_keeps_pids_sockets_output_backoff_health_and_reaps_an_exit_in_the_gap(daemon, tmp_path):
    d: DaemonRun = daemon()
    port, health_port = free_port(), free_port()
    ticks = d.work / "ticker.log"
    gap_marker = d.work / "gap-exit"
    d.write_config(
        f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n'
        + prog("web", [sys.executable, FDSERVER, "--dir", str(d.work), "--name", "web"], startsecs=0, sockets=["web"])
        + prog("ticker", [sys.executable, WRITER, "--dir", str(d.work), "--name", "ticker", "tick"], startsecs=0,
               stdout_logfile=str(ticks), stdout_logfile_maxbytes=0)
        + prog("jticker", [sys.executable, WRITER, "--dir", str(d.work), "--name", "jticker", "tick"], startsecs=0,
               stdout_logfile="inherit")
        + prog("flaky", ["sh", "-c", "exit 1"], startsecs="1s", backoff_initial="40s", backoff_max="40s",
               startretries=5)
        + prog("app", [sys.executable, HEALTHSERVER, "--dir", str(d.work), "--name", "app", "--port", str(health_port)])
        + "[program.app.healthcheck]\n"
        + f'type = "http"\nurl = "http://127.0.0.1:{health_port}/health/"\ninterval = "300ms"\ntimeout = "2s"\n\n'
        + prog("waiter", [sys.executable, NOTIFIER, "--dir", str(d.work), "--name", "waiter"], ready="notify")
        + prog("gap", [sys.executable, "-c", GAP_CHILD, str(gap_marker)], startsecs=0, autorestart=False)
        + prog("job", ["true"], type="oneshot"))
    (d.work / "health").write_text("ok")
    fake_systemd = FakeSystemd(str(tmp_path / "notify.sock"))
    # Read it as systemd does, at once, so that each message's arrival time (READY after RELOADING) is
    # when it was sent (the daemon no longer blocks on a full queue: tests/unit/test_systemd_notifier.py).
    reading = threading.Event()

    def read() -> None:
        while not reading.wait(0.01):
            fake_systemd.poll()

    reader = threading.Thread(target=read)
    reader.start()
    d.start(env={"NOTIFY_SOCKET": fake_systemd.address})
    try:
        # (No READY=1 yet: waiter stays STARTING until told to send its own READY=1.)
        before = status_when(d, lambda s: s["app"]["health"] == "healthy" and s["flaky"]["state"] == "BACKOFF"
                             and s["job"]["completed"]
                             and all(s[n]["state"] == "RUNNING" for n in ("web", "ticker", "jticker", "gap")),
                             "every program up, flaky backing off")
        # A deploy first: its outcome (status' last_deploy) is part of the state too.
        deployed = ctl(d, "deploy", "web")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        before = status_when(d, lambda s: s["web"]["state"] == "RUNNING" and s["web"]["generation"] == 2
                             and s["web"]["last_deploy"] is not None and s["web"]["replace_phase"] is None,
                             "web deployed")
        daemon_pid = d.proc.pid
        web_pid = before["web"]["pid"]
        held = socket_inode(web_pid, 3)
        assert held in socket_inodes(daemon_pid)
        assert get(port) == f"web {web_pid}\n"
        retry_deadline = time.time() + before["flaky"]["retry_in_s"]
        ticks_before = ticks.read_bytes().count(b"\n")
        health_events = len(d.events("health_changed"))

        flood = Clients(d.endpoint, 4, "status")  # every request ends in a reply or an error, never a hang
        try:
            wait_until(lambda: len(flood.replies) >= 4, 30, "the flood answered before the re-exec")
            r = ctl(d, "reexec")
            replies_at_reexec = len(flood.replies)
            assert r.returncode == 0, r.stderr
            assert f"procguard (pid {daemon_pid}) re-executed: " in r.stdout
            wait_until(lambda: len(flood.replies) > replies_at_reexec + 4, 30, "the flood answered after the re-exec")
        finally:
            flood.stop()
        assert flood.hangs == 0 and flood.crashes == [], (flood.hangs, flood.crashes)
        assert len(flood.replies) > 8

        # systemd: the same main pid says RELOADING=1, then READY=1 again.
        reloading = fake_systemd.having("RELOADING", "1")
        assert reloading
        wait_until(lambda: [t for t, _ in fake_systemd.having("READY", "1") if t > reloading[-1][0]], 30,
                   "READY=1 after RELOADING=1")
        assert d.proc.poll() is None and d.proc.pid == daemon_pid
        assert len(d.events("daemon_reexec")) == 1

        after = status(d)
        # Every child is the same process, never signalled; the held socket is the same socket.
        for name in ("web", "ticker", "jticker", "app", "waiter"):
            assert (after[name]["pid"], after[name]["state"]) == (before[name]["pid"], before[name]["state"]), name
            assert abs(after[name]["started_at"] - before[name]["started_at"]) < 0.25, name  # now - uptime, two clock reads
        assert socket_inode(web_pid, 3) == held and held in socket_inodes(daemon_pid)
        assert (after["web"]["generation"], after["web"]["last_deploy"]) == (2, before["web"]["last_deploy"])
        assert get(port) == f"web {web_pid}\n"
        # BACKOFF keeps its schedule and its counters.
        assert after["flaky"]["state"] == "BACKOFF"
        assert (after["flaky"]["failures"], after["flaky"]["restarts"]) == (before["flaky"]["failures"],
                                                                           before["flaky"]["restarts"])
        assert abs(time.time() + after["flaky"]["retry_in_s"] - retry_deadline) < 1.0
        # The health check goes on from where it was: still healthy, no new transition.
        assert after["app"]["health"] == "healthy"
        assert len(d.events("health_changed")) == health_events
        # A one-shot job that completed stays completed (a dependency satisfied), not merely EXITED.
        assert (after["job"]["state"], after["job"]["completed"], after["job"]["reason"]) == \
            ("EXITED", True, before["job"]["reason"])
        # The child that exited while the daemon exec'd was reaped by the new image and handled.
        assert gap_marker.exists()
        assert after["gap"]["state"] == "EXITED" and after["gap"]["exit_status"] == 7, after["gap"]
        assert not psutil.pid_exists(before["gap"]["pid"]), "the gap child is left a zombie"
        # The notify socket is the one the child knows: READY=1 sent now makes it RUNNING.
        assert after["waiter"]["state"] == "STARTING"
        (d.work / "go").write_text("")
        d.wait_state("waiter", "RUNNING", 30)
        # Every byte the writer sent across the exec is in its file, in order, once.
        wait_until(lambda: ticks.read_bytes().count(b"\n") > ticks_before + 20, 30, "ticks after the re-exec")
        assert ctl(d, "stop", "ticker").returncode == 0
        lines = ticks.read_bytes().decode().splitlines()
        assert lines == [f"tick {k}" for k in range(1, len(lines) + 1)]
        tail = json.loads(ctl(d, "--json", "tail", "ticker").stdout)
        assert tail["offset"] == ticks.stat().st_size  # the stream's offset went on across the exec
        # ...and its tail buffer: the bytes from before the exec (saved, or left in the file) are in it.
        data = base64.b64decode(tail["data"])
        assert len(data) == min(ticks.stat().st_size, 64 * 1024) and ticks.read_bytes().endswith(data)
        # The same for output passed to the daemon's own stdout (journal): the new image reads the same pipe.
        assert ctl(d, "stop", "jticker").returncode == 0
        # (The daemon's log shares that file: a tick may land between a log line and its newline.)
        jticks = re.findall(r"tick (\d+)\n", d.logfile.read_text())
        assert len(jticks) > ticks_before and jticks == [str(k) for k in range(1, len(jticks) + 1)]
    finally:
        reading.set()
        reader.join()
        fake_systemd.close()


def _copy_package(dest: Path, version: str) -> Path:
    """A copy of this procguard at dest (as a pip upgrade would put it), with its version string set."""
    for pkg in ("procguard", "procguardctl"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    set_version(dest, version)
    return dest


def set_version(root: Path, version: str) -> None:
    protocol = root / "procguard" / "protocol.py"
    text = protocol.read_text()
    start = text.index('VERSION = "')
    end = text.index('"', start + len('VERSION = "'))
    protocol.write_text(text[:start] + f'VERSION = "{version}' + text[end:])


def start_installed(d: DaemonRun, installed: Path, cwd: Path) -> None:
    """Run d's daemon from the copy at installed (not from this tree: `-m` puts the current directory
    first on the path, so it runs in cwd), until it has started."""
    env = {**os.environ, "PYTHONPATH": str(installed)}
    with open(d.logfile, "ab") as log:
        d.proc = subprocess.Popen([sys.executable, "-m", "procguard", "-c", str(d.config), "--log-format", "json"],
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=str(cwd))
    wait_until(lambda: d.events("daemon_started") or d.proc.poll() is not None, 30, "daemon start")


def test_reexec_refusals_leave_the_daemon_as_it_was_then_a_new_version_takes_over(daemon, tmp_path):
    installed = _copy_package(tmp_path / "site", "0.1.0")
    d: DaemonRun = daemon()
    good = prog("sleeper", [sys.executable, WRITER, "--dir", str(d.work), "--name", "sleeper", "tick"], startsecs=0)
    d.write_config(good)
    start_installed(d, installed, tmp_path)
    before = status_when(d, lambda s: s["sleeper"]["state"] == "RUNNING", "sleeper up")

    def unchanged() -> None:
        assert d.proc.poll() is None
        after = status(d)
        assert after["sleeper"]["pid"] == before["sleeper"]["pid"]
        assert abs(after["sleeper"]["started_at"] - before["sleeper"]["started_at"]) < 0.25
        assert json.loads(ctl(d, "--json", "version").stdout)["version"] == "0.1.0"
        assert not d.events("daemon_reexec")

    # A config the daemon would refuse: the reason names the file, program and key.
    d.write_config(good + "[program.broken]\ncommand = \"true\"\nstopwaitsecs = \"ten\"\n")
    r = ctl(d, "reexec")
    assert r.returncode == 1 and "reexec_refused" in r.stderr and "stopwaitsecs" in r.stderr, r.stderr
    unchanged()
    d.write_config(good)

    # The installed package fails to import: the pre-flight says why, nothing changes.
    daemon_py = installed / "procguard" / "daemon.py"
    daemon_py.write_text(daemon_py.read_text() + "\nimport procguard_no_such_module\n")
    r = ctl(d, "reexec")
    assert r.returncode == 1 and "cannot import procguard.daemon" in r.stderr \
        and "procguard_no_such_module" in r.stderr, r.stderr
    unchanged()

    # Fixed and upgraded: the new version takes over, the state intact.
    daemon_py.write_text(daemon_py.read_text().replace("\nimport procguard_no_such_module\n", ""))
    set_version(installed, "0.1.1")
    r = ctl(d, "reexec")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"procguard (pid {d.proc.pid}) re-executed: 0.1.0 -> 0.1.1"
    assert json.loads(ctl(d, "--json", "version").stdout)["version"] == "0.1.1"
    after = status(d)
    assert (after["sleeper"]["pid"], after["sleeper"]["state"]) == (before["sleeper"]["pid"], "RUNNING")
    assert abs(after["sleeper"]["started_at"] - before["sleeper"]["started_at"]) < 0.25
    assert alive(before["sleeper"]["pid"])


def test_a_second_daemon_still_cannot_take_the_socket_after_a_reexec(daemon):
    d: DaemonRun = daemon()
    d.write_config(prog("idle", [sys.executable, WRITER, "--dir", str(d.work), "--name", "idle", "tick"],
                        startsecs=0, stdout_logfile="NONE"))
    d.start()
    assert ctl(d, "reexec").returncode == 0
    assert d.events("reexec_config_carried") and not d.events("reexec_config_loaded")
    second = subprocess.run([sys.executable, "-m", "procguard", "-c", str(d.config)], capture_output=True,
                            text=True, timeout=60, cwd=str(REPO))
    assert second.returncode == 1 and "already serves" in second.stderr, second.stderr
    assert ctl(d, "status").returncode == 0
