"""Fault injection against the real daemon (issue #20, item 2).

Each test injects one fault and ends the same way: the daemon still serves its control socket, every
record the children wrote is in their files (procguard/testing/world.py), nothing outlives the daemon, and the
fault left a clear line in the daemon's log. The full disk during plain output is
tests/integration/test_output.py::test_disk_full_then_freed_recovers_and_counts_the_gap; here it is
during rotation.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from procguard.testing import ControlClient
from tests.helpers import wait_until
from procguard.testing.world import DOWN, UP, Expect, Spec, World



@pytest.fixture
def world() -> Iterator[Callable[..., World]]:
    """Factory for a World (a real daemon on recorder programs); every one is cleaned up and proven empty."""
    made: list[World] = []

    def make(specs: list[Spec], **kw: object) -> World:
        w = World.create(specs, **kw)  # type: ignore[arg-type]
        made.append(w)
        return w

    yield make
    leaked = {str(w.run.work): w.cleanup() for w in made}
    leaked = {k: v for k, v in leaked.items() if v}
    assert not leaked, f"processes survived their test (killed now): {leaked}"


def daemon_fds(w: World) -> int:
    assert w.run.proc is not None
    return len(os.listdir(f"/proc/{w.run.proc.pid}/fd"))


# ------------------------------------------------------------------------------ child faults


def test_a_child_that_ignores_every_signal_but_kill_is_killed_after_stopwaitsecs(world):
    w = world([Spec("stubborn", ignore_signals=True, worker=True, stopwaitsecs=0.5)])
    w.start()
    w.recording("stubborn")
    w.check()
    [res] = w.ctl.request("stop", {"names": ["stubborn"]}, 60)["result"]
    assert res["state"] == "STOPPED"
    w.check_gone(["stubborn"])
    [ev] = w.run.events("process_state_changed", process="stubborn", new="STOPPED")
    assert ev["reason"].startswith("killed: did not stop within stopwaitsecs") and ev["exit"] == "terminated by SIGKILL"
    w.expect["stubborn"] = Expect(DOWN, "stopped")
    w.check()
    assert w.ctl.request("start", {"names": ["stubborn"]})["ok"]
    w.expect["stubborn"] = Expect(UP, "started")
    w.check()
    w.shutdown()  # the daemon's own shutdown has to escalate to SIGKILL too


def test_a_sigstopped_child_still_stops_gracefully(world):
    # stopwaitsecs is long: a stopped child that never saw its SIGTERM would only go at the SIGKILL.
    w = world([Spec("frozen", worker=True, stopwaitsecs=120)])
    w.start()
    pid = w.recording("frozen")
    w.check()
    os.kill(pid, 19)  # SIGSTOP
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, what="child stopped")
    [res] = w.ctl.request("stop", {"names": ["frozen"]}, 150)["result"]
    assert res["state"] == "STOPPED"
    w.check_gone(["frozen"])
    st = w.status()["frozen"]
    # It ran its SIGTERM handler (exit 0, a last record written): SIGCONT followed the stop signal.
    assert st["exit_status"] == 0, st
    w.expect["frozen"] = Expect(DOWN, "stopped")
    w.check()
    assert w.run.events("process_state_changed", process="frozen", new="STOPPED", exit="exit status 0")
    w.shutdown()


class Silent:
    """A TCP listener that accepts every connection and never answers; counts what is still open."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.conns.append(c)

    def open_now(self) -> int:
        """Connections the peer has not closed yet."""
        still = []
        for c in self.conns:
            c.setblocking(False)
            try:
                while c.recv(65536):  # the request: read and ignore it; b"" is the peer's close
                    pass
            except BlockingIOError:
                still.append(c)
                continue
            except OSError:
                pass
            c.close()
        self.conns = still
        return len(still)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


def test_a_health_endpoint_that_accepts_and_never_answers(world):
    silent = Silent()
    try:
        w = world([Spec("web")])
        toml = w.program_toml(w.specs["web"]).rstrip() + (
            '\nready = "startsecs"\n\n[program.web.healthcheck]\ntype = "http"\n'
            f'url = "http://127.0.0.1:{silent.port}/health"\ninterval = "200ms"\ntimeout = "300ms"\nretries = 2\n')
        w.run.write_config(toml)
        w.start()
        first = wait_until(lambda: w.run.events("health_changed", process="web", new="unhealthy"), 30,
                           "unhealthy after timeouts")[0]
        assert "timed out" in first["reason"] or "timeout" in first["reason"], first
        wait_until(lambda: len(w.run.events("process_spawned", process="web")) >= 3, 60, "restarts")
        # Every connection the checker opened was closed by it at its timeout (at most the current one open).
        wait_until(lambda: silent.open_now() <= 1, 10, "checker connections closed")
        assert silent.accepted >= 4
        baseline = min(daemon_fds(w) for _ in range(20))
        wait_until(lambda: len(w.run.events("process_spawned", process="web")) >= 5, 60, "more restarts")
        # Descriptors come back to the baseline (a hung check's socket, a spawn's pipes are transient).
        wait_until(lambda: daemon_fds(w) <= baseline, 10, f"daemon descriptors back to {baseline}")
        w.check()
        w.shutdown()
    finally:
        silent.close()


# ---------------------------------------------------------------------------- resource limits


def test_emfile_fails_spawns_with_a_reason_and_the_daemon_serves_on(world):
    # 40 descriptors: the daemon needs ~16 of its own, each process 2 pipes and 2 log files, a spawn
    # about 9 more while it forks: 4 processes fit, not 15.
    names = [f"p{i:02d}" for i in range(15)]
    w = world([Spec(n) for n in names])
    w.start(launcher=("prlimit", "--nofile=40:40", "--"))
    failed = wait_until(lambda: [e for e in w.run.events("spawn_failed") if "Too many open files" in e["reason"]],
                        30, "a spawn failing with EMFILE")
    assert failed[0]["program"] in names
    w.check()  # the control socket answers (this connection was made before), the rest holds
    backoff = [n for n, s in w.status().items() if s["state"] == "BACKOFF"]
    assert backoff, "with 40 descriptors some program must wait"
    # Free descriptors: stop eleven programs; the other four come up on their next retry.
    stopped = names[:11]
    reply = w.ctl.request("stop", {"names": stopped}, 60)
    assert reply["ok"], reply
    w.check_gone(stopped)
    for n in stopped:
        w.expect[n] = Expect(DOWN, "stopped")
    wait_until(lambda: all(s["state"] == "RUNNING" for n, s in w.status().items() if n not in stopped), 60,
               "the rest RUNNING once descriptors are free")
    w.check()
    r = w.run.ctl("--timeout", "60", "status", timeout=90)  # a new client gets in again
    assert r.returncode == 3 and r.stdout.count("RUNNING") == 4, r  # 3: not all RUNNING (11 stopped)
    w.shutdown()


def test_fork_failing_with_eagain_backs_off_and_recovers(world):
    # RLIMIT_NPROC counts the processes of the target uid: execve after setuid fails with EAGAIN past it.
    user = "games"
    uid = 5
    before = sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)
    names = ["n0", "n1", "n2", "n3", "n4", "n5"]
    w = world([Spec(n, user=user) for n in names])
    w.start(launcher=("prlimit", f"--nproc={before + 2}:{before + 2}", "--"))
    failed = wait_until(lambda: [e for e in w.run.events("spawn_failed") if "temporarily unavailable" in e["reason"]],
                        30, "a spawn failing with EAGAIN")
    assert failed[0]["program"] in names
    w.check()
    st = w.status()
    running = [n for n, s in st.items() if s["state"] == "RUNNING"]
    waiting = [n for n, s in st.items() if s["state"] != "RUNNING"]
    assert running and waiting, st
    assert all("temporarily unavailable" in st[n]["reason"] for n in waiting if st[n]["state"] == "BACKOFF"), st
    reply = w.ctl.request("stop", {"names": running}, 60)
    assert reply["ok"], reply
    for n in running:
        w.expect[n] = Expect(DOWN, "stopped")
    wait_until(lambda: all(s["state"] == "RUNNING" for n, s in w.status().items() if n not in running), 60,
               "the others RUNNING once the uid has room")
    w.check()
    w.shutdown()


# ------------------------------------------------------------------------------ the daemon's log


def test_journald_vanishing_under_log_format_journal(world):
    """The daemon's stderr is a stream socket to journald (as systemd gives it); journald goes away."""
    w = world([Spec("app"), Spec("other", worker=True)])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got = bytearray()
    reading = threading.Event()
    reading.set()

    def journald() -> None:
        ours.settimeout(0.05)
        while reading.is_set():
            try:
                chunk = ours.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            got.extend(chunk)

    reader = threading.Thread(target=journald, daemon=True)
    reader.start()
    try:
        w.run.proc = subprocess.Popen(
            [sys.executable, "-m", "procguard", "-c", str(w.run.config), "--log-format", "journal"],
            stdout=theirs, stderr=theirs, stdin=subprocess.DEVNULL)
        theirs.close()
        wait_until(lambda: b"<6>daemon_ready" in got, 30, "daemon ready in the journal stream")
        w.ctl = ControlClient(w.run.endpoint)
        w.recording("app")
        reading.clear()
        reader.join()
        ours.close()  # journald is gone: every later write to stderr fails with EPIPE
        # Log-heavy work after it vanished: restarts, a crash, a reload.
        assert w.ctl.request("restart", {"names": ["app"]}, 60)["ok"]
        os.kill(w.recording("other"), 9)
        assert w.ctl.request("reload", {}, 60)["ok"]
        assert w.run.proc.poll() is None, "the daemon died when journald went away"
        wait_until(lambda: w.status()["other"]["state"] == "RUNNING", 30, "other back")
        assert w.ctl.request("restart", {"names": ["other"]}, 60)["ok"]
        st = w.status()
        assert st["app"]["state"] == st["other"]["state"] == "RUNNING"
        # The records of both programs are intact (procguard/testing/world.py; its log checks need a JSON log).
        for name in ("app", "other"):
            assert not w._record_problems(name, w.owners().get(name, []), final=False) or wait_until(
                lambda n=name: not w._record_problems(n, w.owners().get(n, []), final=False), 20, "records")
        reply = w.ctl.request("version", {})
        assert reply["ok"] and reply["result"].get("log_dropped_lines", 0) > 0, reply
        w.ctl.close()
        w.ctl = None
        assert w.run.stop(timeout=60) == 0
        left = [p for ps in w.owners().values() for p in ps if psutil.pid_exists(p) and
                psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert not left
    finally:
        reading.clear()
        ours.close()


# ----------------------------------------------------------------------------- control socket


def test_the_control_sockets_directory_removed(world):
    w = world([Spec("app", worker=True)])
    w.run.endpoint = f"ipc://{w.run.work}/run/control.sock"
    w.write_config()
    w.start()
    w.recording("app")
    w.check()
    import shutil
    shutil.rmtree(w.run.work / "run")
    r = w.run.ctl("--timeout", "10", "status", timeout=40)
    assert r.returncode == 4 and "no socket there" in r.stderr, r  # a clear reason, not a hang
    w.run.signal(1)  # SIGHUP: reload, and re-create the socket
    [ev] = wait_until(lambda: w.run.events("control_socket_restored"), 30, "control socket restored")
    assert ev["endpoint"] == w.run.endpoint
    r = w.run.ctl("--timeout", "60", "status", timeout=90)
    assert r.returncode == 0 and "RUNNING" in r.stdout, r
    assert oct((w.run.work / "run").stat().st_mode & 0o777) == oct(0o750)
    assert oct((w.run.work / "run" / "control.sock").stat().st_mode & 0o777) == oct(0o660)
    w.ctl.close()
    w.ctl = ControlClient(w.run.endpoint)
    w.check()
    # One daemon per socket still holds: a second one refuses the restored endpoint.
    second = subprocess.run([sys.executable, "-m", "procguard", "-c", str(w.run.config)], capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode == 1 and "already serves" in second.stderr + second.stdout
    w.shutdown()


# ------------------------------------------------------------------------------------ scale


def sleepers_toml(n: int, **keys: str) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    return "".join(f'[program.s{i:04d}]\ncommand = ["/bin/sleep", "3600"]\nstartsecs = 0\n'
                   f'stdout_logfile = "NONE"\nstderr_logfile = "NONE"\n{extra}\n' for i in range(n))


def test_2000_programs_in_one_config(daemon):
    d = daemon()
    d.write_config(sleepers_toml(2000))
    d.start()
    pids: dict[str, int] = {}

    def all_running() -> bool:
        r = d.ctl("--json", "status", timeout=120)
        st = json.loads(r.stdout)
        pids.clear()
        pids.update({s["name"]: s["pid"] for s in st if s["state"] == "RUNNING"})
        return len(st) == 2000 and len(pids) == 2000

    wait_until(all_running, 180, "2000 programs RUNNING")
    for name, pid in pids.items():
        assert os.getpgid(pid) == pid and psutil.Process(pid).ppid() == d.proc.pid, name
    # A reload that changes one program touches only that one.
    d.write_config(sleepers_toml(2000).replace('[program.s0007]\ncommand = ["/bin/sleep", "3600"]',
                                               '[program.s0007]\ncommand = ["/bin/sleep", "3601"]'))
    r = d.ctl("--json", "reload", timeout=180)
    assert r.returncode == 0 and json.loads(r.stdout) == {"added": [], "changed": ["s0007"], "removed": []}, r
    before = dict(pids)
    wait_until(all_running, 60, "2000 programs RUNNING after the reload")
    assert {n for n in pids if pids[n] != before[n]} == {"s0007"}
    assert not psutil.pid_exists(before["s0007"]) or psutil.Process(before["s0007"]).status() == psutil.STATUS_ZOMBIE
    assert d.stop(timeout=180) == 0
    left = [p for p in pids.values() if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"{len(left)} of 2000 outlived the daemon"
    assert d.events("daemon_stopped") and not [e for e in d.events() if "exception" in e]


def test_a_config_file_of_10_mb(world):
    w = world([Spec("app", worker=True)])
    env = ", ".join(f'V{j:03d} = "{"v" * 60}"' for j in range(72))
    padding = "".join(f'[program.idle{i:04d}]\ncommand = ["/bin/sleep", "1"]\nautostart = false\n'
                      f'environment = {{ {env} }}\n# {"-" * 200}\n\n' for i in range(2000))
    body = "".join(w.program_toml(s) for s in w.specs.values()) + padding
    w.run.write_config(body)
    assert w.run.config.stat().st_size > 10 * 2**20
    check = subprocess.run([sys.executable, "-m", "procguard", "-c", str(w.run.config), "--check"], capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert check.returncode == 0 and "config OK" in check.stdout, check.stderr[-2000:]
    w.start()
    w.specs.update({f"idle{i:04d}": Spec(f"idle{i:04d}", autostart=False) for i in range(2000)})
    for i in range(2000):
        w.expect[f"idle{i:04d}"] = Expect(DOWN, "autostart = false")
    w.recording("app")
    # Reload the 10 MB file (one program changed) while another client keeps asking for status: the
    # parse runs off the event loop, so every status is answered meanwhile.
    w.run.write_config(body.replace('[program.idle0003]\ncommand = ["/bin/sleep", "1"]',
                                    '[program.idle0003]\ncommand = ["/bin/sleep", "2"]'))
    answered = []
    done = threading.Event()

    def poll_status() -> None:
        c = ControlClient(w.run.endpoint)
        try:
            while not done.is_set():
                answered.append(c.request("status", {"names": ["app"]}, 30)["result"][0]["state"])
        finally:
            c.close()

    t = threading.Thread(target=poll_status)
    t.start()
    try:
        wait_until(lambda: answered, 60, "the polling client connected")
        before = len(answered)
        reply = w.ctl.request("reload", {}, 300)
        during = len(answered) - before
    finally:
        done.set()
        t.join()
    assert reply["ok"] and reply["result"] == {"added": [], "changed": ["idle0003"], "removed": []}, reply
    assert during >= 1 and set(answered) == {"RUNNING"}, (during, set(answered))
    [ev] = w.run.events("config_reloaded")
    assert ev["changed"] == ["idle0003"]
    w.check(timeout_s=60)
    w.shutdown()


# ------------------------------------------------------------------------------------- disk


def test_a_full_disk_during_rotation_drops_counted_bytes_and_recovers(world):
    """The disk fills while the log rotates through its backups; freeing space ends the episode.

    Every byte the child wrote is accounted for: in the files, in backups the test deleted to free
    space, or counted as dropped by the daemon, and nothing else.
    """
    w = world([Spec("app", tick=0.0002)], maxbytes=100_000)
    disk = w.run.work / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        out = disk / "app.log"
        w.run.write_config(w.program_toml(w.specs["app"]).replace(str(w.out_path("app")), str(out)))
        w.start()
        [failed] = wait_until(lambda: w.run.events("log_write_failed", path=str(out)), 120, "the disk full")
        assert "No space left" in failed["error"]
        assert Path(f"{out}.1").exists(), "the disk should fill after rotations"
        assert w.ctl.request("status")["ok"] and w.status()["app"]["state"] == "RUNNING"
        # Free space: delete the oldest backups, as an operator would.
        deleted = 0
        backups = sorted(disk.glob("app.log.*"), key=lambda p: -int(p.suffix[1:]))
        for p in backups[:2]:
            deleted_data = p.read_bytes()
            deleted += len(deleted_data)
            p.unlink()
        [ev] = wait_until(lambda: w.run.events("log_write_recovered", path=str(out)), 30, "recovery")
        assert ev["dropped_bytes"] > 0
        wait_until(lambda: len(list(disk.glob("app.log.*"))) >= len(backups) - 1, 60, "rotating again")
        [res] = w.ctl.request("stop", {"names": ["app"]}, 60)["result"]
        assert res["state"] == "STOPPED"
        dropped = w.status()["app"]["output_dropped_bytes"]
        assert dropped >= ev["dropped_bytes"]
        files = [*sorted(disk.glob("app.log.*"), key=lambda p: -int(p.suffix[1:])), out]
        data = b"".join(p.read_bytes() for p in files)
        [pid] = w.owners()["app"]
        from procguard.testing.recorder import record
        written = sum(len(record(pid, s)) for s in range(w.written("app", pid) + 1))
        assert len(data) + deleted + dropped == written, (len(data), deleted, dropped, written)
        # What is in the files is in order: whole records with increasing numbers, gaps only at drops.
        import re
        seqs = [int(m.group(1)) for m in re.finditer(rb"R %d (\d+) [0-9a-f]{8} x*\n" % pid, data)]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert seqs[-1] == w.written("app", pid)  # the last record, written at the stop, is there
        w.run.stop(timeout=60)
    finally:
        if w.run.proc is not None and w.run.proc.poll() is None:
            w.run.stop(timeout=60)
        subprocess.run(["umount", str(disk)], check=False)


# ------------------------------------------------------------------------------------ clock


class WallClock:
    """Set CLOCK_REALTIME relative to the real time, and always put it back (it is the machine's clock)."""

    def __init__(self) -> None:
        self.wall0 = time.time()
        self.mono0 = time.monotonic()

    def real(self) -> float:
        return self.wall0 + (time.monotonic() - self.mono0)

    def shift(self, offset_s: float) -> None:
        time.clock_settime(time.CLOCK_REALTIME, self.real() + offset_s)

    def restore(self) -> None:
        time.clock_settime(time.CLOCK_REALTIME, self.real())


def test_the_wall_clock_jumping_an_hour_forward_and_back(world):
    """Timers (startsecs, backoff, stopwaitsecs, health intervals) run on the monotonic clock."""
    w = world([Spec("app", autorestart="true"), Spec("stubborn", ignore_signals=True, stopwaitsecs=1.0),
               Spec("checked", health=True)])
    w.start()
    for n in w.specs:
        w.recording(n)
    w.check()
    try:
        time.clock_settime(time.CLOCK_REALTIME, time.time())
    except PermissionError as exc:
        pytest.skip(f"cannot set the wall clock here: {exc}")
    clock = WallClock()
    try:
        for offset in (3600.0, -3600.0):
            clock.shift(offset)
            st = w.status()
            assert all(s["uptime_s"] is not None and 0 <= s["uptime_s"] < 600 for s in st.values()), st
            # A crash backs off by its monotonic delay (<= backoff_max 0.5 s), not an hour, and comes back.
            old = w.recording("app")
            (w.run.work / "cmd" / str(old)).write_text("exit 1")
            wait_until(lambda: (lambda s: s["state"] == "RUNNING" and s["pid"] != old)(w.status()["app"]), 30,
                       f"app back after a crash, clock {offset:+.0f}s")
            # stopwaitsecs ends in the SIGKILL (the reason says so), not an hour later.
            assert w.ctl.request("stop", {"names": ["stubborn"]}, 30)["result"][0]["state"] == "STOPPED"
            assert w.ctl.request("start", {"names": ["stubborn"]}, 30)["ok"]
            # Health checks go on every interval: the count of checks grows.
            pid = w.status()["checked"]["pid"]
            mark = w.run.work / "unhealthy-checked"
            mark.touch()
            wait_until(lambda: w.status()["checked"]["pid"] != pid, 30, "an unhealthy restart")
            mark.unlink()
            clock.restore()
            w.check()
    finally:
        clock.restore()
    killed = w.run.events("process_state_changed", process="stubborn", new="STOPPED")
    assert len(killed) == 2 and all(e["reason"].startswith("killed: did not stop within stopwaitsecs") for e in killed)
    w.shutdown()
