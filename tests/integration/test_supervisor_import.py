"""A converted supervisord config, run by the real daemon, starts the processes supervisord would (issue #8).

Each process is observed from /proc (psutil: cmdline, uids, cwd; /proc/PID/status: Umask) and compared with
what supervisord's config says; the stop signal is observed as the exit status after `procguardctl stop`.
supervisorctl's spellings (avail, update, clear) and `status | awk '{print $1, $2}'` are checked against the
same daemon.
"""

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import CTL, REPO, DaemonRun, wait_until

CORPUS = REPO / "tests" / "supervisord_corpus"
IS_ROOT = os.geteuid() == 0
ENV = {**os.environ, "PYTHON": sys.executable}


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"no Umask in /proc/{pid}/status")


def import_into(d: DaemonRun, name: str, strip_users: bool = False) -> Path:
    """Copy a corpus config into d's directory, convert it into d's procguard.toml, point control at d's socket."""
    sv = d.work / "sv"
    shutil.copytree(CORPUS / name, sv)
    conf = sv / "supervisord.conf"
    if strip_users:
        conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                                if not line.startswith("user=")))
    r = subprocess.run([*CTL, "import-supervisor", str(conf), "--output-dir", str(d.work)], capture_output=True,
                       text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    main = d.config.read_text()
    assert "control = " not in main
    d.config.write_text(main.replace("[procguard]\n", f'[procguard]\ncontrol = "{d.endpoint}"\n', 1))
    return sv


def check(d: DaemonRun) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procguard", "-c", str(d.config), "--check"], capture_output=True,
                          text=True, timeout=60, env=ENV)


def test_converted_config_starts_the_processes_supervisord_would(daemon: Any) -> None:
    d: DaemonRun = daemon()
    sv = import_into(d, "roundtrip", strip_users=not IS_ROOT)
    (sv / "www").mkdir()
    (sv / "logs").mkdir()
    r = check(d)
    assert r.returncode == 0, r.stdout + r.stderr
    d.start(env={"PYTHON": sys.executable})
    names = ["web", "worker:worker_00", "worker:worker_01"]
    for name in names:
        d.wait_state(name, "RUNNING", timeout=20)
    st = d.status()

    code = "import sys, time; print('web up', sys.argv[1:], flush=True); time.sleep(3600)"
    me = os.geteuid()
    nobody = pwd.getpwnam("nobody").pw_uid if IS_ROOT else me
    expected = {  # what supervisord starts for roundtrip/supervisord.conf
        "web": ([sys.executable, "-c", code, "--pythonpath", "/python/lib/site-packages/:/www/STORE/",
                 "--harakiri", "180"], me, 0o027, str(sv / "www")),
        "worker:worker_00": (["/bin/sleep", "3600"], nobody, 0o077, "/tmp"),
        "worker:worker_01": (["/bin/sleep", "3601"], nobody, 0o077, "/tmp"),
    }
    for name, (argv, uid, umask, cwd) in expected.items():
        proc = psutil.Process(st[name]["pid"])
        assert proc.cmdline() == argv, name
        assert proc.uids().real == proc.uids().effective == uid, name
        assert umask_of(proc.pid) == umask, name
        assert proc.cwd() == cwd, name
    # The log file supervisord would have written (redirect_stderr: one file).
    log = sv / "logs" / "web.log"
    wait_until(lambda: log.exists() and "web up ['--pythonpath'" in log.read_text(), what="web's output in web.log")

    # Scripts written for supervisorctl keep working.
    out = subprocess.run(f"{' '.join(CTL)} -s {d.endpoint} status | awk '{{print $1, $2}}'", shell=True,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.splitlines() == [f"{n} RUNNING" for n in names]
    avail = d.ctl("avail")
    assert avail.returncode == 0
    assert [line.split()[:3] for line in avail.stdout.splitlines()] == [[n, "in", "use"] for n in names]
    assert all(line.split()[3] in ("auto", "manual") and ":" in line.split()[4] for line in avail.stdout.splitlines())
    update = d.ctl("update")
    assert (update.returncode, update.stdout) == (0, "")  # supervisorctl's update says nothing without changes
    clear = d.ctl("clear", "web")
    assert clear.returncode == 0 and str(log) in clear.stdout, clear.stdout + clear.stderr

    # The stop signal: each main process dies of supervisord's stopsignal (stopasgroup=false: only it gets it).
    assert d.ctl("stop", "web", "worker").returncode == 0
    after = d.status()
    assert after["web"]["exit_status"] == -signal.SIGQUIT
    assert after["worker:worker_00"]["exit_status"] == after["worker:worker_01"]["exit_status"] == -signal.SIGINT


def ask(path: Path) -> int:
    """Connect to a unix socket; the fcgi_app answers with its pid."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        return int(s.makefile().readline().split()[1])


def test_fcgi_programs_get_the_held_socket(daemon: Any) -> None:
    d: DaemonRun = daemon()
    sv = import_into(d, "fcgi_roundtrip")
    r = check(d)  # the converted [socket.*] tables pass --check (a refusal here is a regression)
    assert r.returncode == 0, r.stdout + r.stderr
    d.start(env={"PYTHON": sys.executable})
    for name in ("echo:echo_0", "echo:echo_1", "stdin"):
        d.wait_state(name, "RUNNING", timeout=20)
    st = d.status()
    echo_pids = {st["echo:echo_0"]["pid"], st["echo:echo_1"]["pid"]}
    # `--fd 0` became `--fd {socket.echo.fd}`: both processes accept on the one held socket.
    assert {ask(sv / "echo.sock") for _ in range(20)} <= echo_pids
    assert stat.S_IMODE(os.stat(sv / "echo.sock").st_mode) == 0o700  # supervisord's default socket_mode
    assert psutil.Process(st["echo:echo_0"]["pid"]).cmdline() == [sys.executable, str(sv / "fcgi_app.py"), "--fd", "3"]
    # A program reading the socket from stdin, as supervisord passed it: the shell exec'd it with fd 0 set.
    pid = st["stdin"]["pid"]
    assert ask(sv / "stdin.sock") == pid
    assert psutil.Process(pid).cmdline() == [sys.executable, str(sv / "fcgi_app.py")]
    assert stat.S_IMODE(os.stat(sv / "stdin.sock").st_mode) == 0o660
    assert "serving on fd 0" in (sv / "stdin.log").read_text()


ENV_OPTIONS = {"SLEEP_ARGS": "3000 600", "NOTHING": "", "WORKERS": "2", "APP_USER": "nobody", "AUTOSTART": "yes",
               "STOP": "INT", "PYTHON": sys.executable, "TALK": "--one 'two words' --three"}


def check_with(d: DaemonRun, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`procguard --check` with exactly these variables on top of a base environment (none of ENV_OPTIONS)."""
    base = {k: v for k, v in os.environ.items() if k not in ENV_OPTIONS}
    return subprocess.run([sys.executable, "-m", "procguard", "-c", str(d.config), "--check"], capture_output=True,
                          text=True, timeout=60, env={**base, **environ})


@pytest.mark.skipif(not IS_ROOT, reason="user=%(ENV_APP_USER)s = nobody needs a root daemon, as under supervisord")
def test_env_values_are_read_at_load_and_run_as_supervisord_would(daemon: Any) -> None:
    """%(ENV_X)s in user/numprocs/autostart/stopsignal and commands, /dev/fd/1 logs (issue #14 item 4)."""
    from tests.supervisord_parser import supervisord_view

    d: DaemonRun = daemon()
    sv = import_into(d, "env_options")
    toml = (d.work / "conf.d" / "worker.toml").read_text()
    assert 'user = "{ENV_APP_USER}"' in toml and 'numprocs = "{ENV_WORKERS}"' in toml

    # Fail closed: without the variable procguard refuses the config, naming file, program and key.
    r = check_with(d, {k: v for k, v in ENV_OPTIONS.items() if k != "APP_USER"})
    assert r.returncode == 1
    assert (f"{d.work / 'conf.d' / 'worker.toml'}: [program.worker] user: {{ENV_APP_USER}}: the daemon's "
            "environment has no APP_USER") in r.stderr
    r = check_with(d, ENV_OPTIONS)
    assert r.returncode == 0, r.stdout + r.stderr

    d.start(env=ENV_OPTIONS)
    expected = supervisord_view(sv / "supervisord.conf", ENV_OPTIONS)
    assert sorted(expected.processes) == ["talker", "worker_0", "worker_1"]
    for name in ("worker:worker_0", "worker:worker_1", "talker"):
        d.wait_state(name, "RUNNING", timeout=20)
    st = d.status()
    nobody = pwd.getpwnam("nobody").pw_uid
    for name, sv_name in (("worker:worker_0", "worker_0"), ("worker:worker_1", "worker_1"), ("talker", "talker")):
        proc = psutil.Process(st[name]["pid"])
        assert proc.cmdline() == expected.argv(sv_name), name  # expanded, then split: as supervisord
        uid = nobody if name.startswith("worker") else os.geteuid()
        assert proc.uids().real == proc.uids().effective == uid == (expected.processes[sv_name].uid or 0), name
    # /dev/fd/1 became "inherit": the output reaches the daemon's own stdout (here its log file).
    wait_until(lambda: "talker says ['--one', 'two words', '--three']" in d.logfile.read_text(),
               what="talker's output on the daemon's stdout")
    assert d.ctl("stop", "worker").returncode == 0
    assert d.status()["worker:worker_0"]["exit_status"] == -signal.SIGINT == -expected.processes["worker_0"].stopsignal
