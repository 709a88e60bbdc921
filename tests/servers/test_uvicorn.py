"""Real uvicorn under procguard: a held socket by fd, health-checked readiness, reload-app restarts (issue #6)."""

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, DaemonRun, free_port, prog, wait_until
from tests.servers.test_gunicorn import get

UVICORN = Path(sys.executable).parent / "uvicorn"
pytestmark = pytest.mark.skipif(not UVICORN.exists(), reason="uvicorn is not installed (pip install -e '.[test]')")


def test_uvicorn_on_a_held_socket_with_a_health_check(daemon):
    d: DaemonRun = daemon()
    port = free_port()
    argv = [str(UVICORN), "--fd", "{socket.web.fd}", "--app-dir", str(REPO / "tests" / "servers"), "asgi_app:application"]
    d.write_config(f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n'
                   + prog("web", argv, server="uvicorn", sockets=["web"])
                   + f'[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:{port}/"\n'
                     'host = "localhost"\ninterval = "1s"\n')
    d.start()
    d.wait_state("web", "RUNNING", timeout=60)
    st = {s["name"]: s for s in json.loads(d.ctl("--json", "status").stdout)}
    assert st["web"]["health"] == "healthy"
    first = st["web"]["pid"]
    assert get(port) == f"worker {first}\n"
    # A single uvicorn process has no in-place reload: reload-app restarts it.
    r = d.ctl("reload-app", "web")
    assert (r.returncode, r.stdout) == (0, "web: restarted\n")
    wait_until(lambda: get(port) != f"worker {first}\n", 30, "the new process answering")
