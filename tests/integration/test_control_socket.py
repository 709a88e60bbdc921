"""The control socket and procguardctl against a real daemon over the real socket (issue #3)."""

import json
import os
import pwd
import grp
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from procguard.protocol import encode_request
from tests.helpers import CTL, REPO, DaemonRun, free_port, probe, prog, wait_until



def ctl_bg(d: DaemonRun, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(d.ctl_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def columns(out: str) -> dict[str, str]:
    """Parse status output the way supervisorctl scripts do: awk '{print $1, $2}'."""
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def running(d: DaemonRun, *names: str) -> None:
    wait_until(lambda: all(d.status().get(n, {}).get("state") == "RUNNING" for n in names), 20,
               f"{names} RUNNING")


# ---------------------------------------------------------------------------------- commands


def test_status_reads_like_supervisorctl_and_exits_3_when_not_all_running(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0)
                   + prog("worker", probe(d.work, "worker"), startsecs=0, numprocs=2)
                   + prog("manual", probe(d.work, "manual"), autostart=False))
    d.start()
    running(d, "web", "worker:worker_00", "worker:worker_01")
    r = d.ctl("status")
    assert r.returncode == 3, r  # "manual" is STOPPED
    assert columns(r.stdout) == {"web": "RUNNING", "worker:worker_00": "RUNNING", "worker:worker_01": "RUNNING",
                                 "manual": "STOPPED"}
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    pid = d.status()["web"]["pid"]
    assert lines["web"].startswith("web" + " " * 30 + "RUNNING   pid %d, uptime 0:00:" % pid)
    assert lines["manual"].rstrip().endswith("STOPPED   not started")
    assert "\x1b[" not in r.stdout  # no colour when stdout is not a terminal
    r = d.ctl("status", "web", "worker:*")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    r = d.ctl("status", "manual")
    assert r.returncode == 3


def test_status_is_coloured_only_on_a_terminal(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run(d.ctl_argv("status"), stdout=secondary, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, timeout=30, env={k: v for k, v in os.environ.items()
                                                                          if k != "NO_COLOR"})
        os.close(secondary)
        secondary = -1
        out = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert proc.returncode == 0
    assert b"\x1b[32mRUNNING  \x1b[0m" in out, out
    assert "\x1b[" not in d.ctl("status").stdout


def test_status_shows_the_reason_for_backoff_and_fatal(daemon):
    d = daemon()
    # startsecs far above a probe's start-up even on a loaded box (both exit at once, so it costs nothing):
    # a probe slower than startsecs would be RUNNING, then EXITED, not a failed start.
    d.write_config(prog("crashy", probe(d.work, "crashy", mode="exit", code=3), startsecs="10s",
                        backoff_initial="30s")
                   + prog("doomed", probe(d.work, "doomed", mode="exit", code=5), startsecs="10s", startretries=0))
    d.start()
    d.wait_state("crashy", "BACKOFF")
    d.wait_state("doomed", "FATAL")
    r = d.ctl("status")
    assert r.returncode == 3
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "BACKOFF   exited too quickly (exit status 3), retry in " in lines["crashy"]
    assert "FATAL     exited too quickly (exit status 5)" in lines["doomed"]
    assert "gave up after 1 failed starts" in lines["doomed"]


def test_status_long_shows_memory_and_cpu_of_the_process_tree(daemon):
    d = daemon()
    d.write_config(prog("app", probe(d.work, "app", mode="group"), startsecs=0))
    d.start()
    running(d, "app")
    wait_until(lambda: any("worker" in e for e in d.probe_events()), what="the app's worker")
    r = d.ctl("--json", "status", "--long")
    assert r.returncode == 0, r.stderr
    [st] = json.loads(r.stdout)
    assert st["tree_pids"] == 2 and st["rss_bytes"] > 1_000_000 and st["cpu_percent"] >= 0
    r = d.ctl("status", "-l")
    header, line = r.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "STATE", "CPU%", "RSS", "PROCS"]
    assert line.split()[:2] == ["app", "RUNNING"] and "MiB" in line.split()[3] and line.split()[4] == "2"


def test_start_stop_restart_print_supervisorctl_lines(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0)
                   + prog("broken", probe(d.work, "broken", mode="exit", code=4), autostart=False, startsecs="1s",
                          backoff_initial="30s"))
    d.start()
    running(d, "web")
    first = d.status()["web"]["pid"]
    r = d.ctl("restart", "web")
    assert (r.returncode, r.stdout) == (0, "web: stopped\nweb: started\n"), r
    second = d.status()["web"]["pid"]
    assert second != first and d.status()["web"]["state"] == "RUNNING"
    r = d.ctl("stop", "web")
    assert (r.returncode, r.stdout) == (0, "web: stopped\n")
    assert d.status()["web"]["state"] == "STOPPED"
    # supervisorctl's texts and exit codes (issue #14): a stop of a stopped process and a start of a running
    # one are errors in the text only.
    r = d.ctl("stop", "web")
    assert (r.returncode, r.stdout) == (0, "web: ERROR (not running)\n")
    r = d.ctl("start", "web")
    assert (r.returncode, r.stdout) == (0, "web: started\n")
    r = d.ctl("start", "web")
    assert (r.returncode, r.stdout) == (0, "web: ERROR (already started)\n")
    # A failed start exits 7 (supervisorctl's not running); procguard's reason goes to stderr and --json.
    r = d.ctl("start", "broken")
    assert (r.returncode, r.stdout) == (7, "broken: ERROR (abnormal termination)\n")
    assert r.stderr.startswith("procguardctl: broken: exited too quickly (exit status 4), retry in "), r.stderr


def test_names_errors_and_usage_have_their_exit_codes(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    r = d.ctl("start", "nope")
    assert (r.returncode, r.stdout) == (1, "nope: ERROR (no such process)\n")
    r = d.ctl("--json", "start", "nope")
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "no_such_process"
    r = d.ctl("status", "web", "ghost:*")
    assert r.returncode == 4 and r.stdout.splitlines()[0] == "ghost: ERROR (no such group)"
    r = d.ctl("start")  # no names
    assert r.returncode == 2 and "usage" in r.stderr
    r = d.ctl("frobnicate")
    assert r.returncode == 2
    r = d.ctl("signal", "NOTASIG", "web")
    assert (r.returncode, r.stdout) == (1, "web: ERROR (bad signal name)\n")
    assert d.status()["web"]["state"] == "RUNNING"


def test_signal_pid_version_and_json(daemon):
    d = daemon()
    d.write_config(prog("trap", probe(d.work, "trap", mode="trap", signal="USR1"), startsecs=0,
                        autorestart=False)
                   + prog("idle", probe(d.work, "idle"), autostart=False))
    d.start()
    running(d, "trap")
    pid = d.status()["trap"]["pid"]
    r = d.ctl("pid", "trap")
    assert (r.returncode, r.stdout) == (0, f"{pid}\n")
    r = d.ctl("pid", "idle")
    assert (r.returncode, r.stdout) == (7, "0\n")  # supervisorctl: not running
    r = d.ctl("pid")
    assert (r.returncode, r.stdout) == (0, f"{d.proc.pid}\n")
    r = d.ctl("--json", "version")
    assert json.loads(r.stdout) == {"version": "0.1.0", "protocol": 1, "pid": d.proc.pid,
                                       "log_dropped_lines": 0}
    r = d.ctl("signal", "usr1", "trap")
    assert (r.returncode, r.stdout) == (0, "trap: signalled\n")
    wait_until(lambda: f"trap {pid} got SIGUSR1" in d.probe_events(), what="the signal at the child")
    d.wait_state("trap", "EXITED")
    r = d.ctl("--json", "signal", "HUP", "trap")
    assert r.returncode == 7 and json.loads(r.stdout)[0]["ok"] is False


def test_reload_lists_changes_and_a_refused_config_keeps_the_old_one(daemon):
    d = daemon()
    d.write_config(prog("keep", probe(d.work, "keep"), startsecs=0)
                   + prog("change", probe(d.work, "change"), startsecs=0)
                   + prog("drop", probe(d.work, "drop"), startsecs=0))
    d.start()
    running(d, "keep", "change", "drop")
    keep_pid = d.status()["keep"]["pid"]
    d.write_config(prog("keep", probe(d.work, "keep"), startsecs=0)
                   + prog("change", probe(d.work, "change"), startsecs=0, stopwaitsecs="3s")
                   + prog("new", probe(d.work, "new"), startsecs=0))
    r = d.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["change: changed", "drop: removed", "new: added"]
    assert set(d.status()) == {"keep", "change", "new"}
    assert d.status()["keep"]["pid"] == keep_pid
    # A bad file: every problem named, the old config keeps running untouched.
    d.write_config(prog("keep", probe(d.work, "keep"), startsecs="soon", stopsignal="NOPE"))
    r = d.ctl("reload")
    assert r.returncode == 1
    assert "procguard.toml: [program.keep] startsecs" in r.stderr and "stopsignal" in r.stderr
    assert "[bad_config]" in r.stderr
    assert set(d.status()) == {"keep", "change", "new"} and d.status()["keep"]["pid"] == keep_pid
    r = d.ctl("--json", "reload")
    assert json.loads(r.stdout)["error"]["code"] == "bad_config"


def test_shutdown_replies_then_stops_everything(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    pid = d.status()["web"]["pid"]
    r = d.ctl("shutdown")
    assert (r.returncode, r.stdout) == (0, f"procguard (pid {d.proc.pid}) is shutting down\n")
    assert d.proc.wait(30) == 0
    assert not Path(d.endpoint[len("ipc://"):]).exists()
    assert pid in d.recorded_pids() and not d.survivors()
    r = d.ctl("status")
    assert r.returncode == 4 and "no socket there" in r.stderr


def test_endpoint_comes_from_env_then_config(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    env = {**os.environ, "PROCGUARD_CONTROL": d.endpoint}
    r = subprocess.run([*CTL, "status"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("web ")
    r = subprocess.run([*CTL, "-c", str(d.config), "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("web ")
    # -s wins over the environment.
    env["PROCGUARD_CONTROL"] = f"ipc://{d.work}/elsewhere.sock"
    r = subprocess.run(d.ctl_argv("status"), capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0


def test_unreachable_daemon_exits_4_naming_endpoint_and_cause(tmp_path):
    missing = f"ipc://{tmp_path}/none.sock"
    r = subprocess.run([*CTL, "-s", missing, "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and missing in r.stderr and "no socket there" in r.stderr
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # bound, never listening: what a crashed daemon leaves behind
    try:
        r = subprocess.run([*CTL, "-s", f"ipc://{stale}", "status"], capture_output=True, text=True, timeout=30)
    finally:
        s.close()
    assert r.returncode == 4 and "connection refused" in r.stderr and "not running" in r.stderr
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    r = subprocess.run([*CTL, "-s", f"tcp://127.0.0.1:{port}", "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and "needs CURVE keys" in r.stderr


# ------------------------------------------------------------------------------- concurrency


def test_status_answers_while_a_slow_program_stops(daemon):
    d = daemon()
    d.write_config(prog("slow", probe(d.work, "slow", mode="ignore-term"), startsecs=0, stopwaitsecs="4s")
                   + prog("fast", probe(d.work, "fast"), startsecs=0))
    d.start()
    running(d, "slow", "fast")
    stopper = ctl_bg(d, "stop", "slow")
    try:
        d.wait_state("slow", "STOPPING")
        st = d.status()  # answers while the stop waits out stopwaitsecs
        assert st["slow"]["state"] == "STOPPING" and st["fast"]["state"] == "RUNNING"
        r = d.ctl("restart", "fast")  # another program is served meanwhile
        assert r.returncode == 0
        assert stopper.poll() is None and d.state("slow") == "STOPPING"
        out, _ = stopper.communicate(timeout=30)
        assert stopper.returncode == 0 and out == "slow: stopped\n"
    finally:
        if stopper.poll() is None:
            stopper.kill()
            stopper.wait()


def _index(d: DaemonRun, process: str, new: str, nth: int = 1) -> int:
    """Position of the nth transition of `process` to `new` in the daemon's log."""
    seen = 0
    for i, ev in enumerate(d.events("process_state_changed")):
        if ev["process"] == process and ev["new"] == new:
            seen += 1
            if seen == nth:
                return i
    raise AssertionError(f"{process} never went {new} x{nth}: {d.transitions(process)}")


def test_restarts_of_different_programs_overlap(daemon):
    d = daemon()
    d.write_config(prog("a", probe(d.work, "a", mode="ignore-term"), startsecs=0, stopwaitsecs="2s")
                   + prog("b", probe(d.work, "b", mode="ignore-term"), startsecs=0, stopwaitsecs="2s"))
    d.start()
    running(d, "a", "b")
    ra = ctl_bg(d, "restart", "a")
    d.wait_state("a", "STOPPING")
    rb = ctl_bg(d, "restart", "b")
    assert ra.communicate(timeout=30)[0] == "a: stopped\na: started\n"
    assert rb.communicate(timeout=30)[0] == "b: stopped\nb: started\n"
    # b began stopping while a was still waiting out its stopwaitsecs: neither waited for the other.
    assert _index(d, "b", "STOPPING") < _index(d, "a", "STOPPED")


def test_restarts_of_one_program_queue(daemon):
    d = daemon()
    d.write_config(prog("a", probe(d.work, "a", mode="ignore-term"), startsecs=0, stopwaitsecs="1s"))
    d.start()
    running(d, "a")
    first = ctl_bg(d, "restart", "a")
    d.wait_state("a", "STOPPING")
    second = ctl_bg(d, "restart", "a")
    assert first.communicate(timeout=30)[0] == "a: stopped\na: started\n"
    assert second.communicate(timeout=30)[0] == "a: stopped\na: started\n"
    t = d.transitions("a")
    # Two whole cycles one after the other: the second stop began only after the first start finished.
    assert t[-8:] == ["STOPPING", "STOPPED", "STARTING", "RUNNING"] * 2, t


# ----------------------------------------------------------------------------------- security


def test_socket_and_directory_are_private_by_default(daemon):
    d = daemon()
    d.write_config('[procguard]\nlogdir = "logs"\ncontrol = "ipc://run/procguard/control.sock"\n'
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.endpoint = f"ipc://{d.work}/run/procguard/control.sock"
    d.start()
    sock = d.work / "run" / "procguard" / "control.sock"
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    running(d, "web")
    assert d.ctl("status").returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a directory to nobody")
def test_a_socket_directory_owned_by_another_user_is_refused(daemon):
    d = daemon()
    theirs = d.work / "theirs"
    theirs.mkdir()
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)  # nobody could swap our socket for theirs
    d.endpoint = f"ipc://{theirs}/control.sock"
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    [ev] = d.events("control_setup_failed")
    assert f"{theirs}: not a directory owned by root or uid 0" in ev["error"]
    assert not d.reports("web")


def test_a_second_daemon_on_the_same_endpoint_refuses_to_start(daemon):
    first = daemon()
    first.write_config(prog("one", probe(first.work, "one"), startsecs=0))
    first.start()
    running(first, "one")
    second = daemon()
    second.endpoint = first.endpoint
    second.write_config(prog("two", probe(second.work, "two"), startsecs=0))
    second.start(wait=False)
    assert second.proc.wait(30) == 1
    [ev] = second.events("control_setup_failed")
    assert f"another procguard (pid {first.proc.pid}) already serves {first.endpoint}" in ev["error"]
    assert not second.reports("two")  # it refused before starting anything
    assert columns(first.ctl("status").stdout) == {"one": "RUNNING"}  # the first keeps its socket


def _run_as_nobody(argv: list[str], group: str | None = None) -> tuple[int, str]:
    """Run procguardctl as nobody; return (exit code, output).

    A fresh interpreter imports the client as root, then drops to nobody and runs it: the venv may sit
    under /root (0700), where nobody could not even start its python. (Forking pytest itself instead
    deadlocked now and then: a fork of a threaded process may inherit a held lock.)
    """
    nobody = pwd.getpwnam("nobody")
    gid = grp.getgrnam(group).gr_gid if group else nobody.pw_gid
    code = (
        "import os, sys\n"
        "import procguardctl.cli as m, procguardctl.client, zmq, json, base64, locale, gettext\n"
        "m.build_parser().format_help()  # argparse's lazy imports (gettext, locale) while still root\n"
        f"os.setgroups([]); os.setgid({gid}); os.setuid({nobody.pw_uid})\n"
        f"sys.exit(m.main({argv!r}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody")


def _has(user: str, group: str) -> bool:
    try:
        pwd.getpwnam(user)
        grp.getgrnam(group)
        return True
    except KeyError:
        return False


@needs_root
@pytest.mark.skipif(not _has("nobody", "nogroup"), reason="needs the nobody user and nogroup group")
def test_an_unauthorised_uid_is_refused_by_the_socket_and_by_zap(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    code, out = _run_as_nobody(["-s", d.endpoint, "status"])
    assert code == 4 and "permission denied" in out, out  # the 0660 socket keeps nobody out
    # Even with the file opened to everyone, ZAP checks the peer's uid and refuses.
    os.chmod(d.endpoint[len("ipc://"):], 0o666)
    code, out = _run_as_nobody(["-s", d.endpoint, "stop", "web"])
    assert code == 4 and "not authorised" in out, out
    [ev] = d.events("control_peer_refused")
    assert ev["uid"] == pwd.getpwnam("nobody").pw_uid
    assert d.status()["web"]["state"] == "RUNNING"


@needs_root
@pytest.mark.skipif(not _has("nobody", "nogroup"), reason="needs the nobody user and nogroup group")
def test_members_of_control_group_are_admitted(daemon):
    d = daemon()
    d.write_config(f'[procguard]\nlogdir = "logs"\ncontrol = "{d.endpoint}"\ncontrol_group = "nogroup"\n'
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    sock = Path(d.endpoint[len("ipc://"):])
    assert sock.stat().st_gid == grp.getgrnam("nogroup").gr_gid and stat.S_IMODE(sock.stat().st_mode) == 0o660
    code, out = _run_as_nobody(["-s", d.endpoint, "status"], group="nogroup")
    assert code == 0 and out.split()[:2] == ["web", "RUNNING"], out


def test_tcp_without_curve_keys_refuses_to_start(daemon):
    d = daemon()
    d.write_config(f'[procguard]\nlogdir = "logs"\ncontrol = "tcp://127.0.0.1:{free_port()}"\n'
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.start(wait=False)
    assert d.proc.wait(30) == 1
    log = d.logfile.read_text()
    assert "procguard.toml: [procguard] control: tcp://127.0.0.1:" in log and "needs CURVE keys" in log
    assert not d.reports("web")


def test_tcp_with_curve_keys_admits_only_authorised_clients(daemon):
    d = daemon()
    keys = d.work / "keys"
    for name in ("server", "client", "intruder"):
        r = subprocess.run([*CTL, "keygen", str(keys), name], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert stat.S_IMODE((keys / f"{name}.key_secret").stat().st_mode) == 0o600
    (keys / "authorized").mkdir()
    (keys / "authorized" / "client.key").write_bytes((keys / "client.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    d.write_config(f'[procguard]\nlogdir = "logs"\ncontrol = "{endpoint}"\n'
                   '[procguard.curve]\nserver_secret_key = "keys/server.key_secret"\n'
                   'authorized_clients = "keys/authorized"\nclient_secret_key = "keys/client.key_secret"\n\n'
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.endpoint = endpoint
    d.start()
    r = wait_until(lambda: (lambda r: r if r.returncode == 0 else None)(
        subprocess.run([*CTL, "-c", str(d.config), "status"], capture_output=True, text=True, timeout=30)),
        20, "status over CURVE")
    assert r.stdout.split()[:2] == ["web", "RUNNING"]
    r = subprocess.run([*CTL, "-s", endpoint, "--server-key", str(keys / "server.key"),
                        "--client-key", str(keys / "intruder.key_secret"), "stop", "web"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and "not authorised" in r.stderr, r
    assert d.events("control_peer_refused", reason="unknown CURVE key")
    assert statuses_over(d, keys)["web"]["state"] == "RUNNING"


def statuses_over(d: DaemonRun, keys: Path) -> dict[str, dict]:
    r = subprocess.run(d.ctl_argv("--server-key", str(keys / "server.key"),
                        "--client-key", str(keys / "client.key_secret"), "--json", "status"),
                       capture_output=True, text=True, timeout=30)
    return {s["name"]: s for s in json.loads(r.stdout)}


# ---------------------------------------------------------------------------------- bad input


def raw_request(sock: zmq.Socket, frames: list[bytes], timeout_s: float = 15.0) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(int(timeout_s * 1000)), f"no reply to {frames!r:.200}"
    return json.loads(sock.recv())


def test_malformed_messages_get_error_replies_and_the_daemon_serves_on(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(d.endpoint)
    try:
        cases = [
            ([b"not json"], "bad_request"),
            ([b"\xff\xfe"], "bad_request"),
            ([b"[1, 2]"], "bad_request"),
            ([b'{"v": 1, "id": 5, "cmd": "status"}'], "bad_request"),
            ([b'{"v": 2, "id": "x", "cmd": "status"}'], "bad_version"),
            ([b'{"v": 1, "id": "x", "cmd": "exec", "args": {"command": "rm -rf /"}}'], "unknown_command"),
            ([b'{"v": 1, "id": "x", "cmd": "start", "args": {"names": ["web"], "command": "/bin/sh"}}'], "bad_args"),
            ([b'{"v": 1, "id": "x", "cmd": "start", "args": {"names": "web"}}'], "bad_args"),
            ([b'{"v": 1, "id": "x", "cmd": "status", "args": {"long": "yes"}}'], "bad_args"),
            ([b'{"v": 1, "id": "x", "cmd": "signal", "args": {"names": ["web"]}}'], "bad_args"),
            ([b'{"v": 1, "id": "x", "cmd": "signal", "args": {"names": ["web"], "signal": "NOPE"}}'], "bad_signal"),
            ([b'{"v": 1, "id": "x", "cmd": "stop", "args": {"names": ["ghost"]}}'], "no_such_process"),
            ([b"{}", b"{}"], "bad_request"),
            ([b"[" * 100_000], "too_large"),
            ([b'{"v": 1, "id": "x", "cmd": "status", "args": {"names": ["' + b"a" * 70_000 + b'"]}}'], "too_large"),
            ([b"[" * 50_000], "bad_request"),  # deep nesting, under the size limit
        ]
        for frames, code in cases:
            reply = raw_request(sock, frames)
            assert reply["ok"] is False and reply["error"]["code"] == code, (frames[0][:80], reply)
            assert reply["error"]["message"]
        reply = raw_request(sock, [encode_request("status", {}, "after")])
        assert reply["ok"] and reply["id"] == "after" and reply["result"][0]["state"] == "RUNNING"
        # A REQ-style envelope (empty delimiter first) is answered in kind.
        reply_frames = (sock.send_multipart([b"", encode_request("version", {}, "req")]),
                        sock.poll(15000), sock.recv_multipart())[2]
        assert reply_frames[0] == b"" and json.loads(reply_frames[1])["result"]["version"] == "0.1.0"
    finally:
        sock.close()
        ctx.term()
    assert d.events("control_request_rejected")
    assert not d.events("control_command_failed")
    assert d.proc.poll() is None


def test_a_frame_above_the_socket_limit_drops_only_that_peer(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    ctx = zmq.Context()
    try:
        big = ctx.socket(zmq.DEALER)
        big.linger = 0
        big.connect(d.endpoint)
        big.send(b"x" * (2 * 1024 * 1024))
        assert d.status()["web"]["state"] == "RUNNING"
        assert big.poll(500) == 0  # no reply for a frame the socket refused to read
        big.close()
    finally:
        ctx.term()
    assert d.proc.poll() is None and d.ctl("status").returncode == 0


def test_a_client_that_leaves_mid_command_does_not_disturb_the_daemon(daemon):
    d = daemon()
    d.write_config(prog("slow", probe(d.work, "slow", mode="ignore-term"), startsecs=0, stopwaitsecs="1s")
                   + prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "slow", "web")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(d.endpoint)
    sock.send(encode_request("stop", {"names": ["slow"]}, "gone"))
    d.wait_state("slow", "STOPPING")
    sock.close()
    ctx.term()
    d.wait_state("slow", "STOPPED")
    assert d.proc.poll() is None
    assert columns(d.ctl("status").stdout) == {"slow": "STOPPED", "web": "RUNNING"}
    assert not d.events("control_command_failed")


def test_garbage_never_kills_the_daemon(daemon):
    """Hypothesis throws random bytes, random JSON and random requests; every one gets a well-formed reply."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from procguard import protocol

    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    running(d, "web")
    codes = {getattr(protocol, n) for n in dir(protocol) if n.startswith("E_")}
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(d.endpoint)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
    # Read-only commands and names that exist nowhere, so a random request cannot stop the test's program.
    requests = st.fixed_dictionaries({
        "v": st.sampled_from([1, 1, 1, 0, "1", None]),
        "id": st.text(max_size=10) | st.integers(),
        "cmd": st.sampled_from(["status", "pid", "version", "stop", "signal", "start", "bogus", ""]),
        "args": st.dictionaries(st.sampled_from(["names", "long", "signal", "x"]),
                                st.lists(st.sampled_from(["ghost", "", "nope:*"]), max_size=2) | json_values,
                                max_size=3),
    })
    frames = st.one_of(
        st.binary(max_size=300).map(lambda b: [b]),
        json_values.map(lambda v: [json.dumps(v).encode()]),
        requests.map(lambda r: [json.dumps(r).encode()]),
        st.lists(st.binary(min_size=1, max_size=50), min_size=2, max_size=4),
    )
    seen: list[str] = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(frames)
    # Random requests reach these rarely; the explicit examples make sure every run goes that deep.
    @example([b'{"v": 1, "id": "", "cmd": "bogus", "args": {}}'])
    @example([b'{"v": 1, "id": "a", "cmd": "status", "args": {"x": null}}'])
    @example([b'{"v": 1, "id": "a", "cmd": "stop", "args": {"names": ["ghost"]}}'])
    def one(msg: list[bytes]) -> None:
        reply = raw_request(sock, msg)
        assert reply["v"] == 1 and isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert reply["error"]["code"] in codes and reply["error"]["code"] != "internal", reply
            seen.append(reply["error"]["code"])

    try:
        one()
    finally:
        sock.close()
        ctx.term()
    assert {"bad_request", "bad_args", "unknown_command", "no_such_process"} <= set(seen)
    assert d.proc.poll() is None
    st_ = d.status()
    assert list(st_) == ["web"] and st_["web"]["state"] == "RUNNING"
    assert not d.events("control_command_failed")


def test_no_authenticator_means_no_entry(tmp_path):
    """ZAP is fail-open in libzmq unless enforced: with our authenticator gone, the socket admits no one."""
    import asyncio

    from procguard.config.load import load_config
    from procguard.control.server import ControlServer
    from procguard.runtime.realos import RealOS
    from procguard.engine.supervisor import Supervisor

    cfg = tmp_path / "procguard.toml"
    cfg.write_text(f'[procguard]\nlogdir = "{tmp_path}/logs"\ncontrol = "ipc://{tmp_path}/c.sock"\n')
    config = load_config(cfg)

    async def main() -> subprocess.CompletedProcess[str]:
        sup = Supervisor(config, RealOS(asyncio.get_running_loop(), str(tmp_path / "logs")))

        async def no_reload():  # pragma: no cover - never called
            raise AssertionError

        server = ControlServer(config, sup, no_reload, lambda: None)
        server.open()
        server._zap.close(linger=0)  # the authenticator is gone; the ROUTER stays
        server._zap = None
        serving = asyncio.create_task(server._serve())
        try:
            proc = await asyncio.create_subprocess_exec(
                *CTL, "-s", config.control, "--timeout", "3", "status",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            server._close_sockets()

    r = asyncio.run(main())
    assert r.returncode == 4 and r.stdout == "", r
