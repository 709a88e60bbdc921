"""procguard as PID 1 of a new PID namespace, as in a container (issue #7).

`unshare --pid --fork --mount-proc python -m procguard ...` makes the daemon PID 1 of a fresh namespace
with its own /proc, as Docker and Kubernetes do. The test stays outside: it sees the namespace's
processes under their host pids, finds the daemon as the child of the `unshare` process, signals it
there, and talks to its control socket, a file in a temp directory both sides see (only the pid and
mount namespaces are new).
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import psutil
import pytest

from tests.helpers import REPO, DaemonRun, probe, prog, wait_until

UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")
PROCGUARDCTL = str(Path(sys.executable).parent / "procguardctl")

# A program whose process double-forks a grandchild that leaves its session and outlives its parent:
# an orphan, reparented to PID 1. The grandchild tells its (namespace) pid, waits until the test opens
# the fifo `release`, then exits: PID 1 must reap it or it stays a zombie.
ORPHAN_MAKER = r"""
import os, sys, time
d = sys.argv[1]
middle = os.fork()
if middle == 0:
    os.setsid()
    if os.fork() == 0:
        with open(os.path.join(d, "orphan.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.path.join(d, "orphan.tmp"), os.path.join(d, "orphan.pid"))
        with open(os.path.join(d, "release")) as f:
            f.read()
        os._exit(0)
    os._exit(0)
os.waitpid(middle, 0)
if len(sys.argv) > 2:  # run from outside any program (nsenter): leave the orphan behind and go
    sys.exit(0)
while True:
    time.sleep(3600)
"""


def namespace_pid(host_pid: int) -> int | None:
    """The pid a process has in its innermost PID namespace (the last NSpid field, proc(5))."""
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def unshare_problem() -> str | None:
    """Why this machine cannot run a daemon as PID 1 of a new namespace, or None when it can."""
    if os.geteuid() != 0:
        return "needs root: unshare --pid --mount-proc needs CAP_SYS_ADMIN (CI runs this as root)"
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    try:
        r = subprocess.run([UNSHARE, "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare --pid --fork --mount-proc cannot run: {exc}"
    if r.returncode != 0 or r.stdout.strip() != "1":
        return (f"unshare --pid --fork --mount-proc does not work here (exit {r.returncode}, "
                f"pid {r.stdout.strip()!r}): {r.stderr.strip()}")
    return None


class Pid1Run(DaemonRun):
    """A real daemon as PID 1 of a new PID namespace; `daemon_pid` is its pid on the host.

    Cleanup kills only pids this run recorded on the host (the probe's own `pids` file holds namespace
    pids, which mean nothing out here).
    """

    ctl_command = (PROCGUARDCTL,)  # the installed entry point, as a container's exec probe runs it

    logged_pids_are_ours = False  # the daemon logs (and probes record) pids of its own namespace

    def __init__(self, config_text: str = "") -> None:
        super().__init__(config_text)
        self.daemon_pid: int | None = None
        self.helpers: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str, wait: bool = True, env: dict[str, str] | None = None,
              launcher: tuple[str, ...] = (), timeout: float = 20.0) -> Self:
        assert UNSHARE is not None and not launcher
        super().start(*extra, wait=False, env=env, launcher=(UNSHARE, "--pid", "--fork", "--mount-proc"))
        assert self.proc is not None
        proc, unshare = self.proc, psutil.Process(self.proc.pid)

        def daemon() -> int | None:
            try:
                children = unshare.children()
            except psutil.NoSuchProcess:
                return None
            return children[0].pid if children else None

        found = wait_until(lambda: daemon() or proc.poll() is not None, 20, "the daemon's host pid")
        if proc.poll() is None:
            self.daemon_pid = int(found)
            self.track(self.daemon_pid)
        if wait:
            self.wait_ready(timeout)
        return self

    def tree(self) -> list[psutil.Process]:
        """Every process in the namespace but PID 1 (host view); each one is recorded for cleanup."""
        assert self.daemon_pid is not None
        try:
            procs = psutil.Process(self.daemon_pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.track(*(p.pid for p in procs))
        return procs

    def zombies(self) -> list[int]:
        """Children of PID 1 (host view) that exited and were not reaped."""
        assert self.daemon_pid is not None
        out = []
        try:
            children = psutil.Process(self.daemon_pid).children()
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    out.append(child.pid)
            except psutil.NoSuchProcess:
                pass
        return out

    def host_pid_of(self, ns_pid: int) -> int | None:
        for p in self.tree():
            if namespace_pid(p.pid) == ns_pid:
                return p.pid
        return None

    def stop(self, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
        """Signal PID 1 through its host pid (unshare itself ignores TERM), then wait for unshare."""
        assert self.proc is not None and self.daemon_pid is not None
        if self.proc.poll() is None and self.daemon_pid in self.survivors():
            os.kill(self.daemon_pid, sig)
        return self.proc.wait(timeout)

    def cleanup(self) -> list[int]:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout=60)
            except subprocess.TimeoutExpired:
                # SIGKILL to a namespace's PID 1 kills every process in it (pid_namespaces(7)).
                if self.daemon_pid is not None and self.daemon_pid in self.survivors():
                    os.kill(self.daemon_pid, signal.SIGKILL)
                self.proc.wait(30)
        for helper in self.helpers:
            if helper.poll() is None:
                helper.kill()
            helper.wait(30)
        return super().cleanup()


@pytest.fixture
def pid1() -> Iterator[Callable[[str], Pid1Run]]:
    """Factory for daemons as PID 1; each is stopped and everything it ran proven gone at teardown."""
    problem = unshare_problem()
    if problem:
        pytest.skip(problem)
    runs: list[Pid1Run] = []

    def make(config_text: str = "") -> Pid1Run:
        run = Pid1Run(config_text)
        runs.append(run)
        return run

    yield make
    survivors = {str(r.work): r.cleanup() for r in runs}
    leaked = {k: v for k, v in survivors.items() if v}
    assert not leaked, f"processes survived their test (killed now): {leaked}"


def release_orphan(d: Pid1Run) -> None:
    """Open the fifo for writing (once the orphan reads it) and close it: the orphan reads EOF and exits."""
    fifo = d.work / "release"

    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            return None

    fd = wait_until(opened, 20, "the orphan to open its fifo")
    assert fd is not None
    os.close(fd)


def wait_orphan(d: Pid1Run) -> int:
    """The orphan's host pid, once it has been reparented to PID 1."""
    ns_pid = int(wait_until(lambda: (d.work / "orphan.pid").exists() and (d.work / "orphan.pid").read_text(),
                            20, "the orphan's pid"))
    host = wait_until(lambda: d.host_pid_of(ns_pid), 20, f"namespace pid {ns_pid} on the host")
    assert host is not None and d.daemon_pid is not None
    wait_until(lambda: psutil.Process(host).ppid() == d.daemon_pid, 20, "the orphan reparented to PID 1")
    return host


def assert_reaped(d: Pid1Run, host_pid: int) -> None:
    created = d.started[host_pid]

    def status() -> str:
        try:
            p = psutil.Process(host_pid)
            return "gone" if p.create_time() != created else p.status()
        except psutil.NoSuchProcess:
            return "gone"

    # A zombie keeps its pid until its parent, PID 1, wait()s for it.
    try:
        wait_until(lambda: status() == "gone", 20, f"orphan {host_pid} reaped")
    except AssertionError:
        raise AssertionError(f"orphan {host_pid} not reaped by PID 1: it is {status()}; "
                             f"zombie children of PID 1: {d.zombies()}") from None
    assert d.zombies() == []


def test_daemon_is_pid_1_and_reaps_orphans_of_its_programs(pid1):
    d = pid1()
    os.mkfifo(d.work / "release")
    d.write_config(prog("maker", [sys.executable, "-c", ORPHAN_MAKER, str(d.work)], startsecs=0))
    d.start()
    started = d.events("daemon_started")[0]
    assert started["pid"] == 1 and started["subreaper"] is True
    d.wait_state("maker", "RUNNING", timeout=20)

    orphan = wait_orphan(d)
    assert namespace_pid(d.daemon_pid) == 1
    release_orphan(d)
    assert_reaped(d, orphan)
    d.wait_state("maker", "RUNNING")  # the program itself is untouched
    assert d.transitions("maker") == ["STARTING", "RUNNING"]


@pytest.mark.skipif(NSENTER is None, reason="nsenter (util-linux) is not installed")
def test_daemon_reaps_orphans_that_no_program_started(pid1):
    # As `kubectl exec` does: a process entered into the namespace from outside leaves an orphan, whose
    # reaper is the namespace's PID 1 (no subreaper ancestor inside the namespace).
    d = pid1()
    os.mkfifo(d.work / "release")
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    d.wait_state("web", "RUNNING", timeout=20)
    assert NSENTER is not None and d.daemon_pid is not None
    helper = subprocess.Popen([NSENTER, "--target", str(d.daemon_pid), "--pid", "--",
                               sys.executable, "-c", ORPHAN_MAKER, str(d.work), "leave"],
                              stdin=subprocess.DEVNULL, cwd=str(REPO))
    d.helpers.append(helper)
    assert helper.wait(30) == 0
    orphan = wait_orphan(d)
    release_orphan(d)
    assert_reaped(d, orphan)
    assert d.state("web") == "RUNNING"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_to_pid_1_stops_everything_and_exits_0(pid1, sig):
    d = pid1()
    d.write_config(
        prog("web", probe(d.work, "web", mode="trap", signal="TERM"), startsecs=0)
        + prog("workers", probe(d.work, "workers", mode="group"), startsecs=0)
        + prog("daemonizer", probe(d.work, "daemonizer", mode="double-fork"), startsecs=0)
    )
    d.start()
    for name in ("web", "workers", "daemonizer"):
        d.wait_state(name, "RUNNING", timeout=20)
    # web, workers + its worker, daemonizer + its detached grandchild (+ the unreaped middle child).
    wait_until(lambda: len(d.probe_events()) >= 2, 20, "the worker and the grandchild")
    wait_until(lambda: len(d.tree()) >= 5, 20, "every process of the namespace")
    before = list(d.started)

    assert d.stop(timeout=60, sig=sig) == 0  # unshare exits with PID 1's status
    assert d.events("shutdown_requested", signal=signal.Signals(sig).name)
    assert d.events("daemon_stopped")
    for name in ("web", "workers", "daemonizer"):
        assert d.state(name) == "STOPPED"
    # Stopped gracefully by procguard (web's handler ran), not killed by the namespace's teardown.
    assert any("got SIGTERM" in line for line in d.probe_events())
    assert not [e for e in d.events("orphans_signalled") if e.get("signal") == "SIGKILL"]
    assert d.survivors() == [], f"left running: {d.survivors()} of {before}"


def test_sighup_to_pid_1_reloads_the_config(pid1):
    d = pid1()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    d.wait_state("web", "RUNNING", timeout=20)
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0) + prog("added", probe(d.work, "added"), startsecs=0))
    assert d.daemon_pid is not None
    os.kill(d.daemon_pid, signal.SIGHUP)
    d.wait_state("added", "RUNNING", timeout=20)
    assert d.events("config_reloaded")
    assert d.transitions("web") == ["STARTING", "RUNNING"]


def test_bad_config_as_pid_1_exits_1(pid1):
    d = pid1()
    d.write_config('[program.web]\ncommand = "sleep 60"\nstopwaitsecs = "ten"\n')
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 1
    assert "stopwaitsecs" in d.logfile.read_text()


def test_control_socket_works_from_outside_the_namespace_as_a_probe(pid1):
    d = pid1()
    d.write_config(
        prog("web", probe(d.work, "web"), startsecs=0)
        + prog("manual", probe(d.work, "manual"), autostart=False)
    )
    d.start()
    d.wait_state("web", "RUNNING", timeout=20)
    mode = stat.S_IMODE(os.stat(d.work / "control.sock").st_mode)
    assert mode == 0o660

    # Readiness probe: the serving programs are RUNNING -> 0.
    web = d.ctl("status", "web")
    assert web.returncode == 0, web.stdout + web.stderr
    assert web.stdout.split()[:2] == ["web", "RUNNING"]
    # Some process not RUNNING (manual is STOPPED) -> 3: usable as an exec probe.
    everything = d.ctl("status")
    assert everything.returncode == 3, everything.stdout + everything.stderr
    # The daemon answers with its own view: PID 1.
    pid = d.ctl("--json", "pid")
    assert pid.returncode == 0, pid.stderr
    assert json.loads(pid.stdout) == {"pid": 1}

    assert d.stop() == 0
    # Daemon gone -> 4 (a liveness probe fails).
    gone = d.ctl("status", timeout=30)
    assert gone.returncode == 4, gone.stdout + gone.stderr
