"""Readiness, health checks, dependencies and resource guards with a real daemon (issue #5)."""

import json
import socket
import sys

from tests.helpers import REPO, DaemonRun, free_port, probe, prog, wait_until

NOTIFIER = str(REPO / "tests" / "programs" / "notifier.py")
HEALTHSERVER = str(REPO / "tests" / "programs" / "healthserver.py")


def healthcheck(**keys: object) -> str:
    lines = []
    for k, v in keys.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n\n"


def web(d: DaemonRun, name: str, port: int, *extra: str, **keys: object) -> str:
    argv = [sys.executable, HEALTHSERVER, "--dir", str(d.work), "--name", name, "--port", str(port), *extra]
    return (prog(name, argv, **keys) + f"[program.{name}.healthcheck]\n"
            + healthcheck(type="http", url=f"http://127.0.0.1:{port}/health/", interval="300ms", timeout="1s",
                          retries=2))


def set_health(d: DaemonRun, mode: str) -> None:
    (d.work / "health").write_text(mode)


# ---------------------------------------------------------------------------------- readiness


def test_notify_process_is_running_only_after_ready(daemon):
    d = daemon()
    d.write_config(prog("app", [sys.executable, NOTIFIER, "--dir", str(d.work), "--name", "app"],
                        ready="notify", start_timeout="30s"))
    d.start()
    wait_until(lambda: any(e.startswith("app ") for e in d.probe_events()), what="app started")
    [line] = [e for e in d.probe_events() if e.startswith("app ")]
    assert line.split()[3].startswith("@procguard/")  # it got a NOTIFY_SOCKET
    st = wait_until(lambda: (lambda s: s if s["status_text"] else None)(d.status()["app"]), what="STATUS=")
    assert st["state"] == "STARTING" and st["status_text"] == "warming up caches"
    assert "STARTING" in d.ctl("status", "app").stdout and "warming up caches" in d.ctl("status", "app").stdout
    (d.work / "go").touch()
    d.wait_state("app", "RUNNING")
    assert d.status()["app"]["status_text"] == "serving"


def test_ready_from_a_worker_in_the_group_counts(daemon):
    d = daemon()
    (d.work / "go").touch()
    d.write_config(prog("app", [sys.executable, NOTIFIER, "--dir", str(d.work), "--name", "app", "--from-worker"],
                        ready="notify", start_timeout="30s"))
    d.start()
    d.wait_state("app", "RUNNING")


def test_a_process_never_ready_is_a_failed_start(daemon):
    d = daemon()
    d.write_config(prog("app", [sys.executable, NOTIFIER, "--dir", str(d.work), "--name", "app", "--never"],
                        ready="notify", start_timeout="1s", startretries=1, backoff_initial="100ms"))
    d.start()
    ev = d.wait_state("app", "FATAL", timeout=20)
    assert "not ready within start_timeout (1s; no READY=1)" in ev["reason"]
    assert d.transitions("app")[:4] == ["STARTING", "STOPPING", "BACKOFF", "STARTING"]


def test_notify_from_a_stranger_is_ignored(daemon):
    d = daemon()
    d.write_config(prog("app", [sys.executable, NOTIFIER, "--dir", str(d.work), "--name", "app", "--never"],
                        ready="notify", start_timeout="30s"))
    d.start()
    line = wait_until(lambda: [e for e in d.probe_events() if e.startswith("app ")], what="app started")[0]
    addr = "\0" + line.split()[3][1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)  # from the test process: not the app or its group
    wait_until(lambda: d.events("notify_message_refused"), what="the refusal")
    assert d.status()["app"]["state"] == "STARTING"


def test_health_check_gates_readiness_and_priority_order(daemon):
    d = daemon()
    port = free_port()
    d.write_config(web(d, "api", port, "--listen-when-go", priority=10, start_timeout="30s")
                   + prog("after", probe(d.work, "after"), priority=20, startsecs=0))
    d.start()
    wait_until(lambda: any(e.startswith("api ") for e in d.probe_events()), what="api started")
    st = wait_until(lambda: (lambda s: s if s["health_reason"] else None)(d.status()["api"]), what="a failed check")
    assert st["state"] == "STARTING" and "refused" in st["health_reason"]
    assert d.state("after") is None  # the next priority level waits for readiness
    (d.work / "go").touch()
    d.wait_state("api", "RUNNING")
    d.wait_state("after", "RUNNING")
    assert d.status()["api"]["health"] == "healthy"
    assert "healthy" in d.ctl("status", "api").stdout


def test_an_unhealthy_process_is_restarted_after_retries(daemon):
    d = daemon()
    port = free_port()
    d.write_config(web(d, "api", port, start_timeout="30s"))
    d.start()
    d.wait_state("api", "RUNNING")
    first = d.status()["api"]["pid"]
    set_health(d, "bad")
    changed = wait_until(lambda: d.events("health_changed", new="unhealthy"), what="unhealthy")[0]
    assert changed["process"] == "api" and "HTTP 503" in changed["reason"]
    set_health(d, "ok")
    d.wait_state("api", "RUNNING", count=2)
    st = d.status()["api"]
    assert st["pid"] != first and st["health"] == "healthy"
    stopping = [e for e in d.events("process_state_changed", process="api") if e["new"] == "STOPPING"]
    assert stopping[0]["reason"].startswith("restarting: unhealthy: HTTP 503")


def test_a_hung_health_endpoint_counts_as_failure(daemon):
    d = daemon()
    port = free_port()
    d.write_config(web(d, "api", port, start_timeout="30s"))
    d.start()
    d.wait_state("api", "RUNNING")
    set_health(d, "hang")
    changed = wait_until(lambda: d.events("health_changed", new="unhealthy"), 20, "unhealthy")[0]
    assert "timed out" in changed["reason"]
    set_health(d, "ok")
    d.wait_state("api", "RUNNING", count=2)


def test_on_unhealthy_none_only_reports(daemon):
    d = daemon()
    port = free_port()
    d.write_config(web(d, "api", port, start_timeout="30s").rstrip() + '\non_unhealthy = "none"\n')
    d.start()
    d.wait_state("api", "RUNNING")
    pid = d.status()["api"]["pid"]
    set_health(d, "bad")
    wait_until(lambda: d.status()["api"]["health"] == "unhealthy", what="unhealthy")
    r = d.ctl("status", "api")
    assert "unhealthy (HTTP 503" in r.stdout
    set_health(d, "ok")
    wait_until(lambda: d.status()["api"]["health"] == "healthy", what="healthy again")
    assert d.status()["api"]["pid"] == pid and d.transitions("api").count("RUNNING") == 1


# ------------------------------------------------------------------------------- dependencies


def test_a_successful_oneshot_releases_its_dependent(daemon):
    d = daemon()
    d.write_config(prog("migrate", probe(d.work, "migrate", mode="exit", code=0, after=0.3), type="oneshot")
                   + prog("web", probe(d.work, "web"), startsecs=0, depends_on=["migrate"], priority=1))
    d.start()
    d.wait_state("web", "RUNNING")
    events = d.events("process_state_changed")
    done = next(i for i, e in enumerate(events) if e["process"] == "migrate" and e["new"] == "EXITED")
    began = next(i for i, e in enumerate(events) if e["process"] == "web" and e["new"] == "STARTING")
    assert done < began  # despite web's lower priority number
    st = d.status()
    assert st["migrate"]["state"] == "EXITED" and st["migrate"]["reason"] == "completed (exit status 0)"
    # A completed job is done, not down: status exits 0 (usable as a probe).
    r = d.ctl("status")
    assert r.returncode == 0 and "EXITED    completed (exit status 0)" in r.stdout


def test_a_failed_oneshot_blocks_its_dependents(daemon):
    d = daemon()
    d.write_config(prog("migrate", probe(d.work, "migrate", mode="exit", code=3), type="oneshot")
                   + prog("web", probe(d.work, "web"), startsecs=0, depends_on=["migrate"])
                   + prog("worker", probe(d.work, "worker"), startsecs=0, depends_on=["web"]))
    d.start()
    d.wait_state("migrate", "FATAL")
    wait_until(lambda: d.events("program_blocked", program="worker"), what="worker blocked")
    st = d.status()
    assert st["web"]["state"] == "STOPPED"
    assert st["web"]["reason"] == "blocked: dependency migrate failed: FATAL: failed (exit status 3); " \
                                  "gave up after 1 failed starts (startretries = 0)"
    assert st["worker"]["reason"].startswith("blocked: dependency web failed")
    assert not d.reports("web") and not d.reports("worker")
    r = d.ctl("start", "worker")  # an operator's start brings up the chain: migrate fails again
    # A failed start: supervisorctl's line and exit code 7 (issue #14), procguard's reason on stderr.
    assert (r.returncode, r.stdout) == (7, "worker: ERROR (abnormal termination)\n") and "dependency web failed" in r.stderr


def test_start_brings_up_dependencies_and_stop_order_is_reversed(daemon):
    d = daemon()
    d.write_config(prog("db", probe(d.work, "db"), startsecs=0, autostart=False, priority=900)
                   + prog("web", probe(d.work, "web"), startsecs=0, autostart=False, depends_on=["db"], priority=1)
                   + prog("worker", probe(d.work, "worker"), startsecs=0, autostart=False, depends_on=["db", "web"]))
    d.start()
    r = d.ctl("start", "worker")
    assert r.returncode == 0 and r.stdout == "worker: started\n"
    assert {n: s["state"] for n, s in d.status().items()} == {"web": "RUNNING", "worker": "RUNNING", "db": "RUNNING"}
    assert d.stop() == 0
    stops = [e["process"] for e in d.events("process_state_changed") if e["new"] == "STOPPING"]
    assert stops == ["worker", "web", "db"]  # dependents first, though web's priority says otherwise


# ---------------------------------------------------------------------------- resource guards


def test_max_memory_recycles_a_growing_process(daemon):
    d = daemon()
    code = ("import os, time\nopen(os.path.join(%r, 'pids'), 'a').write('%%d\\n' %% os.getpid())\n"
            "time.sleep(0.3)\nblob = bytearray(80 * 1024 * 1024)\nfor i in range(0, len(blob), 4096): blob[i] = 1\n"
            "time.sleep(3600)\n") % str(d.work)
    d.write_config(prog("leaky", [sys.executable, "-c", code], startsecs=0, max_memory="60MB",
                        resource_check_interval="100ms", backoff_reset="0s"))
    d.start()
    ev = wait_until(lambda: d.events("process_recycled"), 20, "recycling")[0]
    assert ev["reason"] == "max_memory" and ev["rss_bytes"] > 60 * 1024 * 1024 == ev["max_memory_bytes"]
    d.wait_state("leaky", "RUNNING", count=2)


def test_max_age_recycles(daemon):
    d = daemon()
    d.write_config(prog("old", probe(d.work, "old"), startsecs=0, max_age="1s", max_age_jitter="200ms"))
    d.start()
    d.wait_state("old", "RUNNING", count=3, timeout=20)
    evs = d.events("process_recycled", reason="max_age")
    assert len(evs) >= 2 and all(e["age_s"] >= 1.0 for e in evs)
    wait_until(lambda: len({r["pid"] for r in d.reports("old")}) >= 3, what="three generations reported")


def test_exec_check_inside_the_daemon_reports_the_real_exit_status(daemon):
    """Regression: the daemon's reaper (waitpid(-1)) used to steal the check's status: 'exit status 255'."""
    d = daemon()
    flag = d.work / "healthy"
    d.write_config(prog("app", probe(d.work, "app"), startsecs=0, ready="startsecs")
                   + "[program.app.healthcheck]\n"
                   + healthcheck(type="exec", command=["sh", "-c", f"test -e {flag} || {{ echo not yet; exit 3; }}"],
                                 interval="50ms", timeout="5s", retries=1000, on_unhealthy="none"))
    d.start()
    d.wait_state("app", "RUNNING")
    wait_until(lambda: len(d.events("health_check_failed", process="app")) >= 60, what="60 failed checks")
    reasons = {e["reason"] for e in d.events("health_check_failed", process="app")}
    assert reasons == {"exit status 3: not yet"}, reasons
    flag.touch()
    wait_until(lambda: d.status()["app"]["health"] == "healthy", what="healthy")
