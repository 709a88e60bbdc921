"""Deploys (issue #16): the next generation proves itself ready beside the current one, then takes over.

Real daemon, real control socket, real children (tests/programs/fdserver.py reading a "release" file, as
a server reads its new code), a bounded loopback load of 4 clients.
"""

import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import DaemonRun, prog, wait_until
from tests.integration.test_sockets import CTL, FDSERVER, ctl, free_port, load_across

import subprocess


def release(d: DaemonRun, name: str, mode: str = "ok") -> None:
    """Flip the release the next generation will start with (as a `current` symlink flip would)."""
    tmp = d.work / "release.tmp"
    tmp.write_text(json.dumps({"name": name, "mode": mode}))
    os.replace(tmp, d.work / "release.json")


def web(d: DaemonRun, port: int, ready: str = "healthcheck", **keys: object) -> str:
    text = prog("web", [sys.executable, FDSERVER, "--dir", str(d.work), "--release", str(d.work / "release.json"),
                        "--delay", "0.02", "--abrupt"],
                sockets=["web"], startsecs=0, start_timeout="4s", ready=ready, **keys)
    if ready == "healthcheck":
        text += f'[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:{port}/"\ninterval = "1s"\n\n'
    return f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n' + text


def status(d: DaemonRun, name: str = "web") -> dict:
    r = ctl(d, "--json", "status", name)
    [st] = json.loads(r.stdout)
    return st


def get_any(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_deploy_switches_to_a_ready_next_generation_with_no_failed_request(daemon):
    d = daemon()
    port = free_port()
    release(d, "v1")
    d.write_config(web(d, port))
    d.start()
    d.wait_state("web", "RUNNING")
    old_pid = status(d)["pid"]
    release(d, "v2")
    out: list[subprocess.CompletedProcess[str]] = []

    def deploy() -> None:
        out.append(ctl(d, "deploy", "web"))

    results, errors = load_across(port, deploy, lambda answers, _: sum(a.startswith("v2 ") for a in answers) >= 10)
    assert out[0].returncode == 0, out[0].stdout + out[0].stderr
    assert errors == []  # not one request refused, reset or cut off
    new_pid = status(d)["pid"]
    assert new_pid != old_pid and status(d)["state"] == "RUNNING" and status(d)["generation"] == 2
    # The switch is one step: once one client got v2, v1 answers only what it had taken then (each of the
    # 4 clients has one request outstanding at most), and all answers come from the two pids.
    first_v2 = next(i for i, a in enumerate(results) if a.startswith("v2 "))
    assert all(a == f"v1 {old_pid}\n" for a in results[:first_v2])
    assert sum(a.startswith("v1 ") for a in results[first_v2:]) <= 4, results[first_v2:]
    assert set(results[first_v2:]) <= {f"v1 {old_pid}\n", f"v2 {new_pid}\n"}
    assert all(a == f"v2 {new_pid}\n" for a in results[-10:])
    wait_until(lambda: not _alive(old_pid), what="the previous generation gone")
    last = status(d)["last_deploy"]
    assert last["ok"] and last["step"] == "succeeded" and last["pid"] == new_pid and last["trigger"] == "deploy"
    steps = [e["step"] for e in d.events("deploy_step", process="web")]
    assert steps == ["preparing", "starting", "switching", "stopping"], steps
    assert d.events("deploy_succeeded", process="web", generation=2, pid=new_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def broken_deploy(d: DaemonRun, port: int, mode: str) -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    out: list[subprocess.CompletedProcess[str]] = []

    def deploy() -> None:
        release(d, "v2", mode)
        out.append(ctl(d, "deploy", "web"))

    results, errors = load_across(port, deploy, lambda answers, returned: len(answers) >= returned + 10)
    return out[0], results, errors


def test_a_broken_release_never_goes_live(daemon):
    """Exit at start, health 503, never READY: each deploy fails with the reason, and every request is
    answered 200 by the current generation, which stays RUNNING."""
    d = daemon()
    port = free_port()
    release(d, "v1")
    d.write_config(web(d, port))
    d.start()
    d.wait_state("web", "RUNNING")
    pid = status(d)["pid"]
    for mode, reason in (("exit", "exited before it was ready"), ("status503", "HTTP 503")):
        r, results, errors = broken_deploy(d, port, mode)
        assert r.returncode == 1, r.stdout + r.stderr
        assert reason in r.stdout, r.stdout
        assert errors == [] and set(results) == {f"v1 {pid}\n"}, (errors, set(results))
        st = status(d)
        assert (st["state"], st["pid"], st["generation"], st["next"]) == ("RUNNING", pid, 1, None)
        assert not st["last_deploy"]["ok"] and reason in st["last_deploy"]["reason"]
        next_pid = d.reports("v2")[-1]["pid"]
        wait_until(lambda: not _alive(next_pid), what="the failed next generation gone")
    # The exit release's own last words come back with the failure.
    release(d, "v3", "exit")
    r = ctl(d, "deploy", "web")
    assert r.returncode == 1 and "v3: release is broken" in r.stdout, r.stdout


def test_a_next_generation_that_never_says_ready_is_stopped_at_start_timeout(daemon):
    d = daemon()
    port = free_port()
    release(d, "v1")
    d.write_config(web(d, port, ready="notify"))
    d.start()
    d.wait_state("web", "RUNNING")
    pid = status(d)["pid"]
    r, results, errors = broken_deploy(d, port, "silent")
    assert r.returncode == 1 and "no READY=1" in r.stdout, r.stdout
    # The silent release served 200 on its own socket, but none of the public load reached it.
    assert errors == [] and set(results) == {f"v1 {pid}\n"}
    assert status(d)["pid"] == pid


def test_a_failing_oneshot_stops_the_deploy_before_the_service_is_touched(daemon):
    d = daemon()
    port = free_port()
    release(d, "v1")
    flag = d.work / "migrate-fails"
    migrate = [sys.executable, "-c", f"import os, sys; sys.exit(3 if os.path.exists({str(flag)!r}) else 0)"]
    d.write_config(web(d, port, depends_on=["migrate"]) + prog("migrate", migrate, type="oneshot"))
    d.start()
    d.wait_state("web", "RUNNING")
    pid = status(d)["pid"]
    flag.write_text("")
    release(d, "v2")
    r = ctl(d, "deploy", "web")
    assert r.returncode == 1 and "job migrate failed" in r.stdout, r.stdout
    assert d.reports("v2") == []  # no next generation was even started
    st = status(d)
    assert st["pid"] == pid and st["last_deploy"]["step"] == "jobs"
    # Fixed migration: the deploy runs it again, then replaces the service.
    flag.unlink()
    r = ctl(d, "--json", "deploy", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(d.events("process_spawned", process="migrate")) == 3  # at start, the failed deploy, this one
    assert d.state("migrate") == "EXITED"
    assert json.loads(r.stdout)[0]["generation"] == 2 and status(d)["pid"] != pid
