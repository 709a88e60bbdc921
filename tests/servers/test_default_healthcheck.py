"""Real servers on held sockets get a health check without writing one (issue #14, item 2).

No [program.NAME.healthcheck] anywhere below: gunicorn over TCP (HTTP), uWSGI's --socket (the uwsgi
protocol, as nginx asks), uvicorn on a unix socket (HTTP over it), and an app answering 500 (the
default check fails it); `healthcheck = false` leaves a program with no health at all.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, DaemonRun, free_port, prog, wait_until

BIN = Path(sys.executable).parent
GUNICORN, UWSGI, UVICORN = BIN / "gunicorn", BIN / "uwsgi", BIN / "uvicorn"
APPS = str(REPO / "tests" / "servers")
pytestmark = pytest.mark.skipif(not (GUNICORN.exists() and UWSGI.exists() and UVICORN.exists()),
                                reason="gunicorn, uWSGI and uvicorn are needed (pip install -e '.[test]')")

FAILING_APP = '''
async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"oops"})
'''


def status_lines(d: DaemonRun) -> dict[str, str]:
    return {line.split()[0]: line for line in d.ctl("status").stdout.splitlines() if line.strip()}


def uvicorn(app_dir: str, app: str, sock: str) -> list[str]:
    return [str(UVICORN), "--fd", f"{{socket.{sock}.fd}}", "--app-dir", app_dir, app]


def test_server_profiles_check_their_held_socket_without_a_written_check(daemon):
    d: DaemonRun = daemon()
    (d.work / "failing_app.py").write_text(FAILING_APP)
    gport, uport, fport = free_port(), free_port(), free_port()
    d.write_config(
        f'[socket.gun]\nbind = "tcp://127.0.0.1:{gport}"\n\n'
        f'[socket.uws]\nbind = "tcp://127.0.0.1:{uport}"\n\n'
        f'[socket.uvi]\nbind = "unix:{d.work}/uvi.sock"\n\n'
        f'[socket.bad]\nbind = "tcp://127.0.0.1:{fport}"\n\n'
        + prog("gun", [str(GUNICORN), "--bind", "fd://{socket.gun.fd}", "--workers", "1", "--chdir", APPS,
                       "--no-control-socket", "wsgi_app:application"], server="gunicorn", sockets=["gun"])
        + prog("uws", [str(UWSGI), "--socket", "fd://{socket.uws.fd}", "--master", "--need-app", "--strict",
                       "--processes", "1", "--chdir", APPS, "--module", "wsgi_app:application",
                       "--hook-master-start", "unix_signal:15 gracefully_kill_them_all"],
               server="uwsgi", sockets=["uws"])
        + prog("uvi", uvicorn(APPS, "asgi_app:application", "uvi"), server="uvicorn", sockets=["uvi"])
        + prog("bad", uvicorn(str(d.work), "failing_app:application", "bad"), server="uvicorn", sockets=["bad"],
               start_timeout="600s")
    )
    r = subprocess.run([sys.executable, "-m", "procguard", "-c", str(d.config), "--check"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"healthcheck = uwsgi 127.0.0.1:{uport} /, Host localhost, expect 100-499" in r.stdout
    assert f"healthcheck = http http+unix:{d.work}/uvi.sock /, Host localhost" in r.stdout
    d.start()

    def healthy() -> dict[str, dict] | None:
        st = d.status()
        return st if all(st[n]["health"] == "healthy" and st[n]["state"] == "RUNNING"
                         for n in ("gun", "uws", "uvi")) else None

    wait_until(healthy, 90, "gunicorn, uWSGI and uvicorn healthy by their default checks")
    lines = status_lines(d)
    for name in ("gun", "uws", "uvi"):
        assert lines[name].split()[1] == "RUNNING" and ", healthy" in lines[name], lines[name]
    # The check really asks: an app answering 500 is not ready (uvicorn: ready when the check passes).
    bad = wait_until(lambda: (lambda s: s if "HTTP 500" in s["health_reason"] else None)(d.status()["bad"]),
                     60, "the failing app's check reason")
    assert bad["state"] == "STARTING" and bad["health"] == "starting", bad
    assert bad["health_reason"] == "HTTP 500 (expected one of 100-499)"


def test_healthcheck_false_turns_the_default_off(daemon):
    d: DaemonRun = daemon()
    port = free_port()
    d.write_config(f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n'
                   + prog("web", uvicorn(APPS, "asgi_app:application", "web"), server="uvicorn", sockets=["web"],
                          healthcheck=False))
    d.start()
    d.wait_state("web", "RUNNING", timeout=60)  # startsecs, as without a profile check
    st = d.status()["web"]
    assert st["state"] == "RUNNING" and st["health"] is None, st
    line = status_lines(d)["web"]
    assert "health" not in line, line
    assert not d.events("health_changed", process="web")
