"""Real gunicorn under procguard: profile defaults, sd_notify readiness, held socket, reload-app (issue #6)."""

import http.client
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO, DaemonRun, free_port, prog, wait_until

GUNICORN = Path(sys.executable).parent / "gunicorn"
pytestmark = pytest.mark.skipif(not GUNICORN.exists(), reason="gunicorn is not installed (pip install -e '.[test]')")


def get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def gunicorn_program(d: DaemonRun, port: int) -> str:
    argv = [str(GUNICORN), "--bind", "fd://{socket.web.fd}", "--workers", "2", "--graceful-timeout", "5",
            "--chdir", str(REPO / "tests" / "servers"), "--no-control-socket", "wsgi_app:application"]
    return (f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n'
            + prog("web", argv, server="gunicorn", sockets=["web"], start_timeout="60s"))


def workers(pid: int) -> set[int]:
    try:
        return {c.pid for c in psutil.Process(pid).children()}
    except psutil.NoSuchProcess:
        return set()


def test_gunicorn_profile_notify_and_reload_app(daemon):
    d = daemon()
    port = free_port()
    d.write_config(gunicorn_program(d, port))
    r = subprocess.run([sys.executable, "-m", "procguard", "-c", str(d.config), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert "stopsignal = TERM" in r.stdout or "stopsignal" in r.stdout
    d.start()
    d.wait_state("web", "RUNNING", timeout=60)
    st = d.status()["web"]
    assert "Gunicorn arbiter booted" in st["status_text"]  # READY=1 and STATUS= came over NOTIFY_SOCKET
    master = st["pid"]
    assert get(port).startswith("worker ")
    old = wait_until(lambda: (lambda w: w if len(w) == 2 else None)(workers(master)), 30, "two workers")
    r = d.ctl("reload-app", "web")
    assert (r.returncode, r.stdout) == (0, "web: reloading (sent SIGHUP)\n")
    # HUP: the master stays, the workers are replaced.
    wait_until(lambda: len(workers(master)) == 2 and not (workers(master) & old), 60, "new workers")
    assert d.status()["web"]["pid"] == master
    assert get(port).startswith("worker ")


def test_gunicorn_restart_with_a_held_socket_drops_no_request(daemon):
    d = daemon()
    port = free_port()
    d.write_config(gunicorn_program(d, port))
    d.start()
    d.wait_state("web", "RUNNING", timeout=60)
    ok: list[str] = []
    failed: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                ok.append(get(port))
            except OSError as exc:
                failed.append(repr(exc))

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_until(lambda: len(ok) >= 20, 30, "requests before")
        assert d.ctl("restart", "web").returncode == 0
        n = len(ok)
        wait_until(lambda: len(ok) >= n + 20, 60, "requests after")
    finally:
        stop.set()
        t.join(30)
    assert failed == []
