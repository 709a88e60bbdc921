"""The engine with a real daemon and real children (issue #2)."""

import os
import pwd
import grp
import signal
import shutil
import sys

import psutil
import pytest

from tests.helpers import PROBE, DaemonRun, alive, probe, prog, wait_until
from tests.helpers import probe as base_probe


def probe_for_nobody(d):
    """A probe argv that an unprivileged user can run: the system python and a copy of the probe in d.work.

    (The venv's python may live under /root, which is 0700.)
    """
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if python is None or python.startswith("/root"):
        pytest.skip("no system python3 that nobody may run")
    copy = d.work / "probe.py"
    shutil.copy(PROBE, copy)
    copy.chmod(0o755)

    def make(dir_, name, mode="sleep", **kw):
        argv = base_probe(dir_, name, mode, **kw)
        return [python, str(copy), *argv[2:]]

    return make


def test_autostart_programs_start_in_priority_order(daemon):
    d = daemon()
    d.write_config(
        prog("late", probe(d.work, "late"), priority=300, startsecs="200ms")
        + prog("early", probe(d.work, "early"), priority=100, startsecs="200ms")
        + prog("middle", probe(d.work, "middle"), priority=200, startsecs="200ms")
        + prog("manual", probe(d.work, "manual"), autostart=False)
    )
    d.start()
    for name in ("early", "middle", "late"):
        d.wait_state(name, "RUNNING")
    # The daemon's log is in time order: each level is RUNNING before the next one is spawned.
    log = [(e["event"], e.get("process"), e.get("new")) for e in d.events()]
    assert log.index(("process_state_changed", "early", "RUNNING")) < log.index(("process_spawned", "middle", None))
    assert log.index(("process_state_changed", "middle", "RUNNING")) < log.index(("process_spawned", "late", None))
    assert d.state("manual") is None  # never started


def uptime_s(d: DaemonRun, name: str) -> float:
    """How long the daemon says process `name` has run (0 when not running): the clock its backoff_reset reads."""
    reply = d.request("status", {"names": [name]})
    assert reply["ok"], reply
    return float(reply["result"][0]["uptime_s"] or 0.0)


def test_crash_is_noticed_and_restarted_at_once(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0, backoff_reset="100ms"))
    d.start()
    first = d.wait_reports("web")[0]
    d.wait_state("web", "RUNNING")
    wait_until(lambda: uptime_s(d, "web") > 0.2, what="a stable run (uptime past backoff_reset)")
    os.kill(first["pid"], signal.SIGKILL)
    second = d.wait_reports("web", 2)[1]
    assert second["pid"] != first["pid"]
    exited = d.wait_state("web", "EXITED")
    assert exited["exit"] == "terminated by SIGKILL"
    # Restarted at once after a stable run: no BACKOFF in between.
    t = d.transitions("web")
    assert t[t.index("EXITED") + 1] == "STARTING"


def test_autorestart_false_leaves_process_exited(daemon):
    d = daemon()
    d.write_config(prog("job", probe(d.work, "job", mode="exit", code=0, after=0.3), startsecs=0, autorestart=False))
    d.start()
    d.wait_state("job", "EXITED")
    d.wait_reports("job")
    # Prove no restart comes: the daemon handles a later event (a reload) and job still ran once.
    d.signal(signal.SIGHUP)
    wait_until(lambda: d.events("config_reloaded"))
    assert len(d.reports("job")) == 1
    assert d.state("job") == "EXITED"


def test_autorestart_unexpected_honours_exitcodes(daemon):
    d = daemon()
    d.write_config(
        prog("expected", probe(d.work, "expected", mode="exit", code=2, after=0.3), startsecs=0,
             autorestart="unexpected", exitcodes=[0, 2])
        + prog("unexpected", probe(d.work, "unexpected", mode="exit", code=3, after=0.3), startsecs=0,
               autorestart="unexpected", exitcodes=[0, 2], backoff_initial="50ms")
    )
    d.start()
    d.wait_reports("unexpected", 3)  # restarted again and again
    assert d.state("expected") == "EXITED"
    assert len(d.reports("expected")) == 1
    ev = d.events("process_state_changed", process="unexpected", new="EXITED")[0]
    assert "exit status 3, not expected" in ev["reason"]


def test_quick_failures_back_off_exponentially_and_reset_after_stable_run(daemon):
    d = daemon()
    flag = d.work / "healthy"
    # Crash at once until the flag file exists, then stay up. A shell, and startsecs well above its start-up:
    # at a load of 15 on 2 cores an interpreter took more than 300 ms to exit, reached RUNNING and broke
    # the BACKOFF sequence this test is about.
    script = f'[ -e "{flag}" ] && exec sleep 3600; exit 1'
    d.write_config(prog("flaky", ["/bin/sh", "-c", script], startsecs="2s",
                        backoff_initial="100ms", backoff_max="800ms", backoff_reset="500ms"))
    d.start()
    d.wait_state("flaky", "BACKOFF", timeout=20, count=5)
    delays = [e["retry_in_s"] for e in d.events("process_state_changed", process="flaky", new="BACKOFF")]
    # Doubling with up to 20% jitter below: 0.1, 0.2, 0.4, 0.8, 0.8 (capped).
    for got, nominal in zip(delays, [0.1, 0.2, 0.4, 0.8, 0.8]):
        assert nominal * 0.8 - 0.01 <= got <= nominal + 0.01, delays
    flag.touch()
    d.wait_state("flaky", "RUNNING", timeout=20)
    # After a stable run the counter resets: the next crash restarts at once (no BACKOFF).
    flag.unlink()
    pid = d.events("process_spawned", process="flaky")[-1]["pid"]
    wait_until(lambda: uptime_s(d, "flaky") > 0.6, what="a stable run (uptime past backoff_reset)")
    n_backoff = len(d.events("process_state_changed", process="flaky", new="BACKOFF"))
    os.kill(pid, signal.SIGKILL)
    d.wait_state("flaky", "EXITED")
    d.wait_state("flaky", "BACKOFF", count=n_backoff + 1, timeout=20)  # the restarted one crashes again ...
    later = d.events("process_state_changed", process="flaky", new="BACKOFF")[n_backoff]
    assert later["retry_in_s"] <= 0.1 + 0.01  # ... and its first delay is back to backoff_initial


def test_startretries_makes_it_fatal_like_supervisor(daemon):
    d = daemon()
    d.write_config(prog("bad", probe(d.work, "bad", mode="exit", code=1), startsecs="1s", startretries=2,
                        backoff_initial="50ms"))
    d.start()
    fatal = d.wait_state("bad", "FATAL", timeout=20)
    assert len(d.reports("bad")) == 3  # the first try and 2 retries
    assert "startretries = 2" in fatal["reason"]
    assert d.events("process_state_changed", process="bad", new="FATAL")[0]["level"] == "error"


def test_spawn_failure_is_a_failed_start_with_its_reason(daemon):
    d = daemon()
    d.write_config(
        prog("missing", ["/nonexistent/bin/server"], startretries=1, backoff_initial="50ms")
        + prog("ok", probe(d.work, "ok"), startsecs=0)
    )
    d.start()
    fatal = d.wait_state("missing", "FATAL")
    assert "No such file or directory" in fatal["reason"] and "/nonexistent/bin/server" in fatal["reason"]
    d.wait_state("ok", "RUNNING")
    assert d.proc.poll() is None


def test_stopsignal_is_honoured(daemon):
    d = daemon()
    d.write_config(prog("uwsgi", probe(d.work, "uwsgi", mode="trap", signal="QUIT"), stopsignal="QUIT", startsecs=0))
    d.start()
    d.wait_state("uwsgi", "RUNNING")
    d.wait_reports("uwsgi")
    assert d.stop() == 0
    assert any("got SIGQUIT" in line for line in d.probe_events())


# Starts the daemon as `nohup` plus a shell's background job would: HUP, INT and QUIT ignored, USR1 blocked.
IGNORING_LAUNCHER = (sys.executable, "-c", "import os, signal, sys\n"
                     "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):\n    signal.signal(s, signal.SIG_IGN)\n"
                     "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
                     "os.execv(sys.argv[1], sys.argv[1:])")


def test_children_start_with_default_signals_whatever_the_daemon_inherited(daemon):
    """exec keeps ignored and blocked signals: without the reset, a program started under `nohup` or
    from a background job would ignore its stop signal (QUIT: killed after stopwaitsecs instead)."""
    d = daemon()
    out = d.work / "app.log"
    # The shell reads its own mask with builtins only: while dash forks (a grep), it blocks every signal, so
    # a forked reader could see that transient mask instead of the one the daemon gave the child.
    read_masks = ('while read -r key value; do case $key in SigIgn:|SigBlk:) printf "%s\\t%s\\n" "$key" "$value";; '
                  'esac; done < /proc/$$/status; exec sleep 3600')
    d.write_config(prog("app", ["/bin/sh", "-c", read_masks],
                        stopsignal="QUIT", startsecs=0, stdout_logfile=str(out), stopwaitsecs=60))
    d.start(launcher=IGNORING_LAUNCHER)
    [event] = d.events("inherited_signals_reset")
    assert set(event["signals"]) == {"SIGUSR1 (blocked)", "SIGHUP (ignored)", "SIGINT (ignored)", "SIGQUIT (ignored)"}
    d.wait_state("app", "RUNNING")
    masks = wait_until(lambda: out.exists() and out.read_text().count("Sig") == 2 and out.read_text(), 10, "the masks")
    assert "SigBlk:\t0000000000000000" in masks and "SigIgn:\t0000000000000000" in masks, masks
    assert d.stop() == 0
    # QUIT stopped it (ignored, it would be "killed: did not stop within stopwaitsecs" after 60 s).
    assert [e["reason"] for e in d.events("process_state_changed", process="app", new="STOPPED")] == ["stopped"]


def test_stopwaitsecs_escalates_to_sigkill(daemon):
    d = daemon()
    d.write_config(prog("stubborn", probe(d.work, "stubborn", mode="ignore-term"), stopwaitsecs="500ms", startsecs=0))
    d.start()
    pid = d.wait_reports("stubborn")[0]["pid"]
    d.wait_state("stubborn", "RUNNING")
    assert d.stop() == 0
    stopped = d.events("process_state_changed", process="stubborn", new="STOPPED")[0]
    assert stopped["exit"] == "terminated by SIGKILL"
    assert "stopwaitsecs" in stopped["reason"]
    assert not alive(pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root (CI runs as root)")
def test_user_group_umask_directory_environment_are_applied(daemon):
    d = daemon()
    probe = probe_for_nobody(d)
    workdir = d.work / "site"
    workdir.mkdir()
    d.write_config(prog("app", probe(d.work, "app"), user="nobody", umask="027", directory=str(workdir),
                        environment={"DJANGO_SETTINGS_MODULE": "coffeehouse.settings", "PORT": "8000"}, startsecs=0))
    d.start()
    r = d.wait_reports("app")[0]
    nobody = pwd.getpwnam("nobody")
    assert (r["uid"], r["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert 0 not in r["groups"]  # never root's supplementary groups
    expected_groups = sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    assert r["groups"] == expected_groups
    assert r["umask"] == 0o027
    assert r["cwd"] == str(workdir)
    env = r["env"]
    assert env["DJANGO_SETTINGS_MODULE"] == "coffeehouse.settings" and env["PORT"] == "8000"
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == (nobody.pw_dir, "nobody", "nobody")
    assert r["pgid"] == r["pid"]  # its own process group


@pytest.mark.skipif(os.geteuid() != 0, reason="switching group needs root (CI runs as root)")
def test_explicit_group_overrides_primary_group(daemon):
    d = daemon()
    probe = probe_for_nobody(d)
    d.write_config(prog("app", probe(d.work, "app"), user="nobody", group="nogroup", startsecs=0))
    d.start()
    r = d.wait_reports("app")[0]
    assert r["gid"] == grp.getgrnam("nogroup").gr_gid


def test_environment_is_clean_and_systemd_variables_are_scrubbed(daemon):
    d = daemon()
    d.write_config(prog("app", probe(d.work, "app"), startsecs=0))
    os.environ.update(NOTIFY_SOCKET="/run/systemd/notify", WATCHDOG_USEC="1000000", LISTEN_FDS="2",
                      SECRET_FROM_DAEMON="hunter2")
    try:
        d.start()
    finally:
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "SECRET_FROM_DAEMON"):
            os.environ.pop(k)
    env = d.wait_reports("app")[0]["env"]
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "SECRET_FROM_DAEMON"):
        assert k not in env
    assert env["PATH"] and env["SUPERVISOR_PROCESS_NAME"] == "app" and env["PROCGUARD_PROCESS"] == "app"


def test_no_descriptor_leaks_into_children(daemon):
    d = daemon()
    d.write_config(prog("app", probe(d.work, "app"), startsecs=0))
    d.start()
    r = d.wait_reports("app")[0]
    # 0, 1, 2, plus the ones the probe itself has open while listing (the listdir fd, reports file).
    own = set(r["fds"]) - {0, 1, 2}
    assert len(own) <= 1, r["fds"]  # only os.listdir's own descriptor


def test_double_forking_child_is_still_stopped(daemon):
    d = daemon()
    d.write_config(prog("daemonizer", probe(d.work, "daemonizer", mode="double-fork"), startsecs=0))
    d.start()
    line = wait_until(lambda: [l for l in d.probe_events() if "grandchild" in l], what="grandchild")[0]
    grandchild = int(line.split()[3])
    leader = d.wait_reports("daemonizer")[0]["pid"]
    assert os.getpgid(grandchild) != leader  # it really left the group
    assert d.stop() == 0
    assert not alive(grandchild)
    assert not alive(leader)


def test_group_workers_are_stopped_with_their_master(daemon):
    d = daemon()
    d.write_config(prog("master", probe(d.work, "master", mode="group"), startsecs=0))
    d.start()
    line = wait_until(lambda: [l for l in d.probe_events() if "worker" in l], what="worker")[0]
    worker = int(line.split()[3])
    assert d.stop() == 0
    assert not alive(worker)


def test_sigterm_to_daemon_leaves_zero_processes(daemon):
    d = daemon()
    d.write_config(
        prog("a", probe(d.work, "a"), numprocs=3, process_name="a_{process_num}", startsecs=0)
        + prog("b", probe(d.work, "b", mode="ignore-term"), stopwaitsecs="300ms", startsecs=0)
        + prog("c", probe(d.work, "c", mode="double-fork"), startsecs=0)
        + prog("d", probe(d.work, "d", mode="group"), startsecs=0)
    )
    d.start()
    for name in ("a", "b", "c", "d"):
        d.wait_reports(name, 3 if name == "a" else 1)
    wait_until(lambda: len(d.recorded_pids()) >= 8, what="all pids recorded")
    daemon_pid = d.proc.pid
    assert d.stop() == 0
    assert d.survivors() == []
    assert not alive(daemon_pid)


def test_daemon_shutdown_stops_orphans_no_program_claims(daemon):
    d = daemon()
    d.write_config(prog("escaper", probe(d.work, "escaper", mode="escape"), startsecs=0))
    d.start()
    line = wait_until(lambda: [l for l in d.probe_events() if "escaped" in l], what="escaped grandchild")[0]
    escaped = int(line.split()[3])
    wait_until(lambda: psutil.Process(escaped).ppid() == d.proc.pid, what="orphan reparented to the subreaper")
    assert d.stop() == 0
    assert not alive(escaped)
    assert d.events("orphans_signalled")


def test_stop_order_is_reverse_priority(daemon):
    d = daemon()
    d.write_config(
        prog("db", probe(d.work, "db", mode="trap", signal="TERM"), priority=1, startsecs=0)
        + prog("web", probe(d.work, "web", mode="trap", signal="TERM"), priority=2, startsecs=0)
    )
    d.start()
    d.wait_reports("web")  # the probe reports after installing its trap
    d.wait_reports("db")
    assert d.stop() == 0
    got = [line.split()[0] for line in d.probe_events() if "got SIGTERM" in line]
    assert got == ["web", "db"]


def test_sighup_restarts_only_the_changed_program(daemon):
    d = daemon()
    base = prog("stable", probe(d.work, "stable"), startsecs=0)
    d.write_config(base + prog("web", probe(d.work, "web"), startsecs=0, environment={"V": "1"}))
    d.start()
    stable_pid = d.wait_reports("stable")[0]["pid"]
    d.wait_reports("web")
    d.write_config(base + prog("web", probe(d.work, "web"), startsecs=0, environment={"V": "2"})
                   + prog("added", probe(d.work, "added"), startsecs=0))
    d.signal(signal.SIGHUP)
    reloaded = wait_until(lambda: d.events("config_reloaded"), what="reload")[0]
    assert reloaded["changed"] == ["web"] and reloaded["added"] == ["added"] and reloaded["removed"] == []
    web = d.wait_reports("web", 2)
    assert web[1]["env"]["V"] == "2"
    d.wait_reports("added")
    assert len(d.reports("stable")) == 1 and alive(stable_pid)
    # Removing a program stops it.
    d.write_config(base)
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("config_reloaded")) == 2, what="second reload")
    wait_until(lambda: not alive(web[1]["pid"]), what="removed program stopped")
    assert alive(stable_pid)


def test_bad_reload_keeps_the_old_config_running(daemon):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    d.start()
    pid = d.wait_reports("web")[0]["pid"]
    d.write_config(prog("web", probe(d.work, "web"), startsecs="soon", bogus_key=1))
    d.signal(signal.SIGHUP)
    refused = wait_until(lambda: d.events("config_reload_refused"), what="refusal")[0]
    text = "\n".join(refused["errors"])
    assert "[program.web] startsecs" in text and "[program.web] bogus_key: unknown key" in text
    assert str(d.config) in text
    assert alive(pid) and d.proc.poll() is None
    # The old config is still in force: a crash restarts the old program.
    os.kill(pid, signal.SIGKILL)
    d.wait_reports("web", 2)


def test_numprocs_start_each_process_with_its_name(daemon):
    d = daemon()
    argv = probe(d.work, "w{process_num:02d}")
    d.write_config(prog("worker", argv, numprocs=2, numprocs_start=5, startsecs=0))
    d.start()
    d.wait_reports("w05")
    d.wait_reports("w06")
    assert d.wait_state("worker:worker_05", "RUNNING")
    assert d.reports("w05")[0]["env"]["SUPERVISOR_PROCESS_NAME"] == "worker_05"


def test_output_goes_to_the_named_log_files(daemon):
    d = daemon()
    out = d.work / "out.log"
    err = d.work / "err.log"
    combined = d.work / "combined.log"
    d.write_config(
        prog("split", [sys.executable, "-c", "import sys; print('to out'); print('to err', file=sys.stderr)"],
             stdout_logfile=str(out), stderr_logfile=str(err), autorestart=False, startsecs=0)
        + prog("merged", ["sh", "-c", "echo one; echo two >&2"], stdout_logfile=str(combined),
               redirect_stderr=True, autorestart=False, startsecs=0)
        + prog("auto", ["sh", "-c", "echo automatic"], autorestart=False, startsecs=0)
    )
    d.start()
    for name in ("split", "merged", "auto"):
        d.wait_state(name, "EXITED")
    assert out.read_text() == "to out\n" and err.read_text() == "to err\n"
    assert combined.read_text() == "one\ntwo\n"
    assert (d.work / "logs" / "auto-stdout.log").read_text() == "automatic\n"
