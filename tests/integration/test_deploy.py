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

from tests.helpers import DaemonRun, free_port, prog, wait_until
from tests.integration.test_sockets import FDSERVER, load_across

import subprocess


def release(d: DaemonRun, name: str, mode: str = "ok") -> None:
    """Flip the release the next generation will start with (as a `current` symlink flip would)."""
    tmp = d.work / "release.tmp"
    tmp.write_text(json.dumps({"name": name, "mode": mode}))
    os.replace(tmp, d.work / "release.json")


def web(d: DaemonRun, port: int, ready: str = "healthcheck", abrupt: bool = True, workers: int = 0,
        delay: float = 0.02, access_log: bool = False, start_timeout: str = "5s", **keys: object) -> str:
    """The test server on a held socket. abrupt: it cuts off the request in hand on TERM (as daphne does),
    so only a drain before the stop signal loses nothing. workers: a master forking that many.
    access_log: a line per request on stderr."""
    text = prog("web", [sys.executable, FDSERVER, "--dir", str(d.work), "--release", str(d.work / "release.json"),
                        "--delay", str(delay), *(["--abrupt"] if abrupt else []),
                        *(["--access-log"] if access_log else []),
                        *(["--workers", str(workers)] if workers else [])],
                sockets=["web"], startsecs=0, start_timeout=start_timeout, ready=ready, **keys)
    if ready == "healthcheck":
        text += f'[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:{port}/"\ninterval = "1s"\n\n'
    return f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n' + text


def status(d: DaemonRun, name: str = "web") -> dict:
    r = d.ctl("--json", "status", name)
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


def serving_v1(daemon, **keys):
    """A daemon running `web` (fdserver on a held socket of a free port) on release v1: (daemon, port)."""
    d = daemon()
    port = free_port()
    release(d, "v1")
    d.write_config(web(d, port, **keys))
    d.start()
    d.wait_state("web", "RUNNING")
    return d, port


def test_deploy_switches_to_a_ready_next_generation_with_no_failed_request(daemon):
    d, port = serving_v1(daemon)
    old_pid = status(d)["pid"]
    release(d, "v2")
    out: list[subprocess.CompletedProcess[str]] = []

    def deploy() -> None:
        out.append(d.ctl("deploy", "web"))

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
        out.append(d.ctl("deploy", "web"))

    results, errors = load_across(port, deploy, lambda answers, returned: len(answers) >= returned + 10)
    return out[0], results, errors


def test_a_broken_release_never_goes_live(daemon):
    """Exit at start, health 503, never READY: each deploy fails with the reason, and every request is
    answered 200 by the current generation, which stays RUNNING."""
    d, port = serving_v1(daemon)
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
    r = d.ctl("deploy", "web")
    assert r.returncode == 1 and "v3: release is broken" in r.stdout, r.stdout


def test_a_next_generation_whose_health_check_answers_503_is_refused_without_waiting_for_start_timeout(daemon):
    """A definite answer that fails the check, `retries` (3) times in a row, is a verdict: no wait for
    start_timeout (120s here; the deploy would otherwise fail with "not ready within start_timeout")."""
    d, port = serving_v1(daemon, start_timeout="120s")
    pid = status(d)["pid"]
    r, results, errors = broken_deploy(d, port, "status503")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "health check failed 3 times in a row: HTTP 503" in r.stdout, r.stdout
    assert errors == [] and set(results) == {f"v1 {pid}\n"}, (errors[:5], set(results))
    assert status(d)["last_deploy"]["step"] == "starting"


ACCESS_LINE = '"GET / HTTP/1.1" 200 -'  # the current generation's access log (fdserver --access-log)


def test_a_failed_deploy_replies_with_the_next_generations_own_last_lines_under_load(daemon):
    """The current generation logs a line per request into the same output meanwhile; the reply still
    carries the traceback the next generation printed, not the access log that came after it."""
    d, port = serving_v1(daemon, ready="notify", access_log=True)
    pid = status(d)["pid"]
    out: list[subprocess.CompletedProcess[str]] = []

    def deploy() -> None:
        release(d, "v2", "stuck")  # prints a traceback, then never becomes ready (start_timeout 5s)
        out.append(d.ctl("--json", "deploy", "web"))

    results, errors = load_across(port, deploy, lambda answers, returned: len(answers) >= returned + 10)
    assert errors == [] and set(results) == {f"v1 {pid}\n"}, (errors[:5], set(results))
    [reply] = json.loads(out[0].stdout)
    assert (out[0].returncode, reply["ok"], reply["pid"]) == (1, False, pid), reply
    assert reply["output"][0] == "Traceback (most recent call last):", reply["output"]
    assert reply["output"][-1] == "ImportError: v2: No module named 'app'", reply["output"]
    assert not any(ACCESS_LINE in line for line in reply["output"]), reply["output"]
    # The current generation's access log did go on, in the process's log meanwhile.
    r = d.ctl("tail", "web", "stderr")
    assert ACCESS_LINE in r.stdout.splitlines()[-1], r.stdout[-500:]


def test_a_next_generation_that_never_says_ready_is_stopped_at_start_timeout(daemon):
    d, port = serving_v1(daemon, ready="notify")
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
    d.write_config(web(d, port, depends_on=["migrate"]) + prog("migrate", migrate, type="oneshot")
                   + prog("worker", [sys.executable, "-c", "import time; time.sleep(3600)"], depends_on=["migrate"],
                          startsecs=0))
    d.start()
    d.wait_state("web", "RUNNING")
    pid = status(d)["pid"]
    flag.write_text("")
    release(d, "v2")
    r = d.ctl("deploy", "web")
    assert r.returncode == 1 and "job migrate failed" in r.stdout, r.stdout
    assert d.reports("v2") == []  # no next generation was even started
    st = status(d)
    assert st["pid"] == pid and st["last_deploy"]["step"] == "jobs"
    # Fixed migration: the deploy runs it again, then replaces the service.
    flag.unlink()
    r = d.ctl("--json", "deploy", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(d.events("process_spawned", process="migrate")) == 3  # at start, the failed deploy, this one
    assert d.state("migrate") == "EXITED"
    assert json.loads(r.stdout)[0]["generation"] == 2 and status(d)["pid"] != pid
    # All of it: the job runs once for both services (and is not run a second time for itself); the
    # worker, without held sockets, is stopped, then started.
    r = d.ctl("--json", "deploy", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(d.events("process_spawned", process="migrate")) == 4
    by_name = {row["name"]: row for row in json.loads(r.stdout)}
    assert by_name["web"]["overlapped"] and by_name["web"]["generation"] == 3
    assert not by_name["worker"]["overlapped"] and by_name["worker"]["ok"]


def test_restart_replaces_by_an_overlapping_next_generation_and_a_broken_one_keeps_the_site_up(daemon):
    """`restart` of a program on held sockets is the same replace (without the one-shot jobs)."""
    d, port = serving_v1(daemon)
    pid = status(d)["pid"]
    release(d, "v2", "status503")
    r = d.ctl("restart", "web")
    assert r.returncode == 1 and "HTTP 503" in r.stdout, r.stdout
    assert get_any(port) == (200, f"v1 {pid}\n") and status(d)["pid"] == pid
    release(d, "v3")
    r = d.ctl("restart", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    [ok] = d.events("deploy_succeeded", process="web")
    assert ok["trigger"] == "restart" and ok["generation"] == 2 and ok["previous_pid"] == pid
    # The next generation was RUNNING before the current one was told to stop.
    changes = d.events("process_state_changed", process="web")
    ready = next(i for i, e in enumerate(changes) if e.get("generation") == 2 and e["new"] == "RUNNING")
    stopping = next(i for i, e in enumerate(changes) if e["pid"] == pid and e["new"] == "STOPPING")
    assert ready < stopping
    assert get_any(port) == (200, f"v3 {ok['pid']}\n")


def rolled(d: DaemonRun) -> list[dict]:
    return [st for st in json.loads(d.ctl("--json", "status", "web").stdout)]


def test_numprocs_on_one_socket_roll_one_at_a_time_and_a_failure_stops_the_roll(daemon):
    d = daemon()
    port = free_port()
    release(d, "v1")
    # On a shared socket the next process takes the held socket itself and the current one cannot be
    # drained apart from the others: its graceful stop answers what it took (docs/deploys.md).
    d.write_config(web(d, port, ready="notify", abrupt=False, numprocs=3, process_name="web_{process_num}"))
    d.start()
    for n in range(3):
        d.wait_state(f"web:web_{n}", "RUNNING")
    before = [st["pid"] for st in rolled(d)]
    release(d, "v2")
    out: list[subprocess.CompletedProcess[str]] = []
    results, errors = load_across(port, lambda: out.append(d.ctl("deploy", "web")),
                                  lambda answers, returned: len(answers) >= returned + 10)
    assert out[0].returncode == 0, out[0].stdout + out[0].stderr
    assert errors == []
    after = rolled(d)
    assert all(st["generation"] == 2 and st["state"] == "RUNNING" for st in after)
    assert not set(before) & {st["pid"] for st in after}
    # One at a time: each next generation started after the one before had taken over.
    order = [(e["event"], e["process"]) for e in d.events() if e.get("event") in ("deploy_started", "deploy_succeeded")]
    assert order == [(ev, f"web:web_{n}") for n in range(3) for ev in ("deploy_started", "deploy_succeeded")]
    # A broken release: the first process's next generation fails, the roll stops, all three serve on.
    release(d, "v3", "exit")
    r = d.ctl("deploy", "web")
    assert r.returncode == 1 and "the roll stopped" in r.stdout, r.stdout
    assert [st["pid"] for st in rolled(d)] == [st["pid"] for st in after]
    assert len(d.reports("v3")) == 1
    assert {get_any(port)[1].split()[0] for _ in range(6)} == {"v2"}


def get_unix(path: str) -> str:
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.settimeout(10)
    try:
        conn.sock.connect(path)
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_a_unix_socket_switches_by_an_atomic_rename(daemon):
    """The next generation listens on PATH.next (its health check goes there), then takes PATH over."""
    d = daemon()
    path = str(d.work / "web.sock")
    release(d, "v1")
    d.write_config(f'[socket.web]\nbind = "unix:{path}"\nmode = "0660"\n\n'
                   + prog("web", [sys.executable, FDSERVER, "--dir", str(d.work), "--unix",
                                  "--release", str(d.work / "release.json"), "--delay", "0.02", "--abrupt"],
                          sockets=["web"], start_timeout="5s")
                   + f'[program.web.healthcheck]\ntype = "http"\nunix_socket = "{path}"\npath = "/"\n'
                     'interval = "1s"\n\n')
    d.start()
    d.wait_state("web", "RUNNING")
    old = status(d)["pid"]
    release(d, "v2", "status503")
    r = d.ctl("deploy", "web")
    assert r.returncode == 1 and "HTTP 503" in r.stdout, r.stdout
    assert not os.path.exists(path + ".next") and get_unix(path) == f"v1 {old}\n"
    release(d, "v2")
    out: list[subprocess.CompletedProcess[str]] = []
    results, errors = load_across(0, lambda: out.append(d.ctl("deploy", "web")),
                                  lambda answers, _: sum(a.startswith("v2 ") for a in answers) >= 10,
                                  fetch=lambda: get_unix(path))
    assert out[0].returncode == 0, out[0].stdout + out[0].stderr
    assert errors == []
    new = status(d)["pid"]
    assert results[-1] == f"v2 {new}\n" and oct(os.stat(path).st_mode & 0o777) == "0o660"
    wait_until(lambda: not _alive(old), what="the previous generation gone")


def test_a_crashed_master_loses_nothing_its_workers_drain_and_get_the_stop_signal(daemon):
    """The master is SIGKILLed under load while its workers hold requests: the replacement starts at once
    on a handed-over socket, and the orphaned workers finish, then get TERM (not SIGKILL)."""
    d, port = serving_v1(daemon, ready="notify", abrupt=False, workers=2, delay=0.1)
    master = status(d)["pid"]
    wait_until(lambda: len(d.recorded_pids()) >= 3, what="two workers")
    workers = [p for p in d.recorded_pids() if p != master]
    results, errors = load_across(port, lambda: os.kill(master, signal.SIGKILL),
                                  lambda answers, returned: len(answers) >= returned + 20)
    assert errors == []  # not one request lost to the crash
    d.wait_state("web", "RUNNING", count=2)
    assert status(d)["pid"] != master
    wait_until(lambda: not any(_alive(w) for w in workers), what="the orphaned workers gone")
    terms = {int(line.split()[1]) for line in d.probe_events() if line.startswith("term ")}
    assert set(workers) <= terms  # each got its stop signal and stopped by itself
    assert d.events("orphans_draining", process="web")


def test_status_shows_both_generations_and_a_shutdown_mid_deploy_leaves_nothing(daemon):
    d, port = serving_v1(daemon, ready="notify")
    pid = status(d)["pid"]
    release(d, "v2", "silent")  # serves, never says READY=1: the replace waits (start_timeout 5s)
    deploying = subprocess.Popen(d.ctl_argv("deploy", "web"), stdout=subprocess.PIPE, text=True)
    try:
        st = wait_until(lambda: (s := status(d))["next"] and s["next"]["pid"] and s, what="the next generation")
        assert (st["state"], st["pid"], st["replace_phase"]) == ("RUNNING", pid, "starting")
        assert (st["next"]["state"], st["next"]["generation"]) == ("STARTING", 2)
        text = d.ctl("status", "web").stdout
        assert f"pid {pid}" in text and f"next generation 2: STARTING, pid {st['next']['pid']}" in text, text
        # The operator's stop gives the replace up (no wait for start_timeout) and stops both generations.
        r = d.ctl("stop", "web")
        assert r.returncode == 0 and status(d)["state"] == "STOPPED", r.stdout + r.stderr
        assert deploying.wait(30) == 1
        assert not _alive(st["next"]["pid"]) and not _alive(pid)
        release(d, "v1")
        assert d.ctl("start", "web").returncode == 0
        pid = status(d)["pid"]
        release(d, "v2", "silent")
        deploying = subprocess.Popen(d.ctl_argv("deploy", "web"), stdout=subprocess.PIPE, text=True)
        st = wait_until(lambda: (s := status(d))["next"] and s["next"]["pid"] and s, what="the next generation")
        assert d.stop() == 0  # the daemon stops mid-deploy: the next generation goes too (fixture: no survivor)
    finally:
        deploying.wait(30)
    assert not _alive(st["next"]["pid"]) and not _alive(pid)


def test_a_reload_and_a_max_age_recycle_replace_the_same_way(daemon):
    d, port = serving_v1(daemon)
    release(d, "v2")
    d.write_config(web(d, port, max_age="2s"))

    def reload() -> None:
        r = d.ctl("reload")
        assert r.returncode == 0, r.stdout + r.stderr

    results, errors = load_across(port, reload, lambda answers, _: len(
        d.events("deploy_succeeded", process="web")) >= 2 and len(answers) > 30)
    assert errors == []
    triggers = [e["trigger"] for e in d.events("deploy_succeeded", process="web")]
    assert triggers[:2] == ["reload", "max_age"], triggers
    assert status(d)["last_deploy"]["trigger"] in ("max_age", "reload")


def test_roll_batch_replaces_that_many_processes_at_once(daemon):
    d = daemon()
    port = free_port()
    release(d, "v1")
    d.write_config(web(d, port, ready="notify", abrupt=False, numprocs=2, process_name="web_{process_num}",
                       roll_batch=2))
    d.start()
    for n in range(2):
        d.wait_state(f"web:web_{n}", "RUNNING")
    release(d, "v2")
    r = d.ctl("deploy", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    order = [e["event"] for e in d.events() if e.get("event") in ("deploy_started", "deploy_succeeded")]
    assert order[:2] == ["deploy_started", "deploy_started"] and order.count("deploy_succeeded") == 2
