"""The coffeehouse demo (demo/) under a real daemon, from the conf.d files we ship (issue #6).

`start()` copies conf.d/<server>.toml for each server asked for (plus coffeehouse.toml, which defines the
migrate and collectstatic jobs) and demo/ into a fresh DaemonRun directory, links `.venv` to the
running virtualenv, and moves every loopback port to a free one; `{here}/..` then resolves to that
directory, so the shipped files run unchanged apart from the ports, with their own database and
static files. "nginx" adds demo/nginx/'s program and nginx.conf (what `./dev run` adds when nginx is
installed). `stop()` stops the daemon and names every server process that outlived it.

`start(releases=True)` lays the run out for deploys (docs/deploys.md) instead: demo/ as shipped is
`releases/1`, `current` a symlink to it, and the copied files' `{here}/../demo` becomes
`{here}/../current` (their only change besides the ports), with the database in `shared/` for every
release (COFFEEHOUSE_DB in each program's environment). `Coffeehouse.new_release()` copies demo/ to the
next `releases/N`, good or broken on purpose (`Breakage`), and `flip()` points `current` at it in one
step. Every response names its release in the X-Coffeehouse-Release header (demo/coffeehouse/release.py).
"""

import enum
import http.client
import importlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from procguard.testing import CHECKOUT as REPO
from procguard.testing import free_port, wait_until
from procguard.testing.run import DaemonRun

Status = dict[str, dict[str, Any]]  # `procguardctl --json status` by process name

SERVERS = ("uwsgi", "gunicorn", "daphne", "uvicorn", "hypercorn")
ASGI_SERVERS = ("daphne", "uvicorn", "hypercorn")
# The ports conf.d/*.toml document (and `./dev run` prints).
DEFAULT_PORTS = {"nginx": 8000, "uwsgi": 8001, "gunicorn": 8002, "daphne": 8003, "uvicorn": 8004, "hypercorn": 8005,
                 "uwsgi_protocol": 8011}
JOBS = ("coffeehousemigrate", "coffeehousecollectstatic")
RELEASE_HEADER = "X-Coffeehouse-Release"  # demo/coffeehouse/release.py
DEMO_IGNORE = shutil.ignore_patterns("db.sqlite3", "staticfiles", "health-down", "__pycache__")
BIN = Path(sys.executable).parent


def program(server: str) -> str:
    return f"coffeehouse{server}"


def nginx_binary() -> str | None:
    """$PROCGUARD_TEST_NGINX, nginx on PATH or Debian's /usr/sbin/nginx, if executable."""
    for candidate in (os.environ.get("PROCGUARD_TEST_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_missing(server: str) -> str | None:
    """Why `server` cannot run here, or None."""
    try:
        importlib.import_module("django")  # not analysed by mypy: Django ships no type hints
    except ImportError:
        return "Django is not installed (pip install -e '.[demo]')"
    if server == "nginx":
        if nginx_binary() is None:
            return ("nginx is not installed (apt install nginx, or PROCGUARD_TEST_NGINX=/path/to/nginx): "
                    "demo/nginx/ in front of uWSGI is not exercised")
        return None
    if not (BIN / server).exists():
        if server == "uwsgi":
            return ("uWSGI is not installed: pip builds it from source and needs gcc and Python's headers "
                    "(python3-dev); pip install -e '.[demo]' says why it failed")
        return f"{server} is not installed (pip install -e '.[demo]')"
    return None


def get(port: int, path: str = "/", host: str = "localhost", timeout: float = 30.0) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path with this Host header; (status, body)."""
    status, body, _ = get_release(port, path, host, timeout)
    return status, body


def get_release(port: int, path: str = "/", host: str = "localhost",
                timeout: float = 30.0) -> tuple[int, bytes, str | None]:
    """get(), and the release that answered (its X-Coffeehouse-Release header, None without one)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read(), response.getheader(RELEASE_HEADER)
    finally:
        conn.close()


def get_uwsgi(port: int | str, path: str, host: str = "localhost") -> bytes:
    """One request in the uwsgi protocol (what nginx's uwsgi_pass sends) to the loopback port, or to the
    unix socket at that path; the raw HTTP response."""
    variables = {"REQUEST_METHOD": "GET", "REQUEST_URI": path, "PATH_INFO": path, "QUERY_STRING": "",
                 "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": host, "SERVER_PORT": "80", "HTTP_HOST": host,
                 "REMOTE_ADDR": "127.0.0.1"}
    block = b"".join(struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
                     for k, v in variables.items())
    if isinstance(port, str):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(30)
        sock.connect(port)
    else:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    with sock:
        sock.sendall(struct.pack("<BHB", 0, len(block), 0) + block)  # modifier1 0: WSGI
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Breakage(enum.Enum):
    """How new_release() breaks a release on purpose (the cases a deploy must refuse, issue #16)."""

    NONE = "none"
    IMPORT_ERROR = "import_error"  # coffeehouse/wsgi.py and asgi.py import a module nobody installed
    HEALTH_503 = "health_503"  # /health/ answers 503 (settings.HEALTH_DOWN_FILE exists in the release)
    MIGRATION_FAILS = "migration_fails"  # a new migration raises: the migrate job fails


MISSING_MODULE = "coffeehouse_missing_dependency"  # what Breakage.IMPORT_ERROR imports
FAILING_MIGRATION = "this migration fails on purpose"  # what Breakage.MIGRATION_FAILS raises


def _break(release: Path, breakage: Breakage) -> None:
    if breakage is Breakage.IMPORT_ERROR:  # not settings.py: the migrate job (manage.py) must still pass
        for module in ("wsgi.py", "asgi.py"):
            path = release / "coffeehouse" / module
            path.write_text(path.read_text() + f"\nimport {MISSING_MODULE}  # noqa: E402,F401  a broken release\n")
    elif breakage is Breakage.HEALTH_503:
        (release / "health-down").write_text("a release whose health view answers 503\n")
    elif breakage is Breakage.MIGRATION_FAILS:
        latest = max(p.stem for p in (release / "menu" / "migrations").glob("0*.py"))
        (release / "menu" / "migrations" / "0999_fails.py").write_text(
            "from django.db import migrations\n\n\n"
            "def fail(apps, schema_editor):\n"
            f"    raise RuntimeError({FAILING_MIGRATION!r})\n\n\n"
            "class Migration(migrations.Migration):\n"
            f"    dependencies = [('menu', {latest!r})]\n"
            "    operations = [migrations.RunPython(fail)]\n")


@dataclass
class Coffeehouse:
    d: DaemonRun
    ports: dict[str, int]  # DEFAULT_PORTS' keys -> the free ports this run uses
    releases: Path | None = None  # start(releases=True): the directory of releases/N, current, shared/

    def new_release(self, breakage: Breakage = Breakage.NONE) -> str:
        """Copy demo/ as shipped to the next releases/N, broken as asked; N. `current` is not touched."""
        assert self.releases is not None, "start(releases=True) lays out releases/"
        name = str(max(int(p.name) for p in (self.releases / "releases").iterdir()) + 1)
        shutil.copytree(REPO / "demo", self.releases / "releases" / name, ignore=DEMO_IGNORE)
        _break(self.releases / "releases" / name, breakage)
        return name

    def flip(self, release: str) -> None:
        """Point `current` at releases/<release> in one step: a new symlink renamed over it (rename(2)
        is atomic, so a process started meanwhile sees the old release or the new one, never neither)."""
        assert self.releases is not None and (self.releases / "releases" / release).is_dir(), release
        tmp = self.releases / f".current-{release}"
        tmp.symlink_to(Path("releases") / release, target_is_directory=True)
        os.replace(tmp, self.releases / "current")

    def current(self) -> str:
        """The release `current` points at."""
        assert self.releases is not None
        return (self.releases / "current").resolve().name

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.d.ctl(*args, timeout=180)

    def status(self) -> Status:
        r = self.ctl("--json", "status")
        return {s["name"]: s for s in json.loads(r.stdout)}

    def wait_healthy(self, *servers: str, timeout: float = 120.0) -> Status:
        """Wait until each server's program is RUNNING and healthy; its status rows."""
        def ready() -> Status | None:
            st = self.status()
            ok = all(st.get(program(s), {}).get("state") == "RUNNING"
                     and st.get(program(s), {}).get("health") == "healthy" for s in servers)
            return st if ok else None

        st = wait_until(ready, timeout, f"{servers} RUNNING and healthy; log: {self.d.logfile}")
        assert st is not None
        self.track()
        return st

    def children(self, pid: int) -> set[int]:
        """The direct children (an app server's workers) of pid."""
        try:
            return {c.pid for c in psutil.Process(pid).children()}
        except psutil.NoSuchProcess:
            return set()

    def track(self) -> None:
        """Remember every process under the daemon now, to prove at stop() that none survived."""
        self.d.track()

    def stop(self) -> list[str]:
        """Stop the daemon (its shutdown stops every server), then kill and describe any survivor.

        Survivors are tracked processes still alive (same pid and start time), and any process whose
        command line names this run's directory (the servers' commands all do, through {here}).
        """
        if self.d.proc is not None and self.d.proc.poll() is None:
            self.d.stop(timeout=120)  # tracks every process under the daemon first
        left: dict[int, psutil.Process] = {}
        for pid in self.d.survivors():
            try:
                left[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
        work = str(self.d.work)
        for p in psutil.process_iter(["cmdline"]):
            if any(work in arg for arg in p.info["cmdline"] or ()):
                left[p.pid] = p
        out = []
        for pid, p in left.items():
            try:
                out.append(f"{pid} {' '.join(p.cmdline())[:200]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return out


# What each shipped file says to accept on a held socket, and what a server binding its port itself says
# instead (held=False below); "{port}"/"{port2}" are the server's port(s). uWSGI's uwsgi-protocol socket
# is port2.
_OWN_BIND = {
    "uwsgi": ((r'"--socket", "fd://\{socket\.coffeehouse_uwsgi\.fd\}"', '"--socket", "127.0.0.1:{port2}"'),
              (r'"--http-socket", "fd://\{socket\.coffeehouse_uwsgi_http\.fd\}"',
               '"--http-socket", "127.0.0.1:{port}"')),
    "gunicorn": ((r'"--bind", "fd://\{socket\.coffeehouse_gunicorn\.fd\}"', '"--bind", "127.0.0.1:{port}"'),),
    "daphne": ((r'"--fd", "\{socket\.coffeehouse_daphne\.fd\}"', '"--bind", "127.0.0.1", "--port", "{port}"'),),
    "uvicorn": ((r'"--fd", "\{socket\.coffeehouse_uvicorn\.fd\}"', '"--host", "127.0.0.1", "--port", "{port}"'),),
    "hypercorn": ((r'"--bind", "fd://\{socket\.coffeehouse_hypercorn\.fd\}"', '"--bind", "127.0.0.1:{port}"'),),
}


def own_bind(server: str, text: str, ports: dict[str, int]) -> str:
    """conf.d/<server>.toml (ports already moved) with the server binding its port itself: no [socket.*]
    tables, no `sockets` key, the command's fd:// argument replaced by an address. Raises if the shipped
    file no longer has what this expects (so a changed conf.d file cannot silently keep its socket)."""
    for pattern, replacement in _OWN_BIND[server]:
        text, n = re.subn(pattern, replacement.format(port=ports[server], port2=ports["uwsgi_protocol"]), text)
        assert n == 1, f"conf.d/{server}.toml: expected one {pattern!r}"
    text, n = re.subn(r"(?ms)^\[socket\.[^]]+\]\n.*?(?=^\[)", "", text)
    assert n >= 1, f"conf.d/{server}.toml: no [socket.*] table"
    text, n = re.subn(r"(?m)^sockets = \[.*\]\n", "", text)
    assert n == 1, f"conf.d/{server}.toml: no sockets key"
    assert "{socket." not in text, text
    return text


def uwsgi_unix_socket(d: DaemonRun) -> Path:
    """Where start(uwsgi_unix=True) puts uWSGI's uwsgi-protocol socket."""
    return d.work / "run" / "uwsgi.sock"


def start(d: DaemonRun, servers: tuple[str, ...], replace: dict[str, str] | None = None,
          held: bool = True, releases: bool = False, uwsgi_unix: bool = False) -> Coffeehouse:
    """Run the shipped conf.d files of `servers` (and coffeehouse.toml's jobs) in d's directory.

    replace: extra text substitutions applied to the copied conf.d files (e.g. a shorter interval).
    held: False rewrites each server to bind its port itself instead of using procguard's held socket
    (what a supervisord user has), to show what held sockets avoid.
    releases: the release-directory layout of the module docstring instead of one demo/ directory.
    uwsgi_unix: uWSGI's uwsgi-protocol socket (the one nginx passes to, and its health check's) is the
    unix socket uwsgi_unix_socket(d) instead of a TCP port.
    """
    conf_d = d.work / "conf.d"
    conf_d.mkdir()
    if releases:
        shutil.copytree(REPO / "demo", d.work / "releases" / "1", ignore=DEMO_IGNORE)
        (d.work / "current").symlink_to(Path("releases") / "1", target_is_directory=True)
        (d.work / "shared").mkdir()
    else:
        shutil.copytree(REPO / "demo", d.work / "demo", ignore=DEMO_IGNORE)
    (d.work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    ports = {name: free_port() for name in DEFAULT_PORTS}
    by_default = {str(DEFAULT_PORTS[name]): str(port) for name, port in ports.items()}
    if uwsgi_unix:
        uwsgi_unix_socket(d).parent.mkdir()

    def edit(text: str) -> str:
        text = re.sub(r"127\.0\.0\.1:(80\d\d)\b", lambda m: f"127.0.0.1:{by_default.get(m[1], m[1])}", text)
        if uwsgi_unix:  # the socket's bind, the health check's address, nginx's uwsgi_pass
            where = f"unix:{uwsgi_unix_socket(d)}"
            text = text.replace(f"tcp://127.0.0.1:{ports['uwsgi_protocol']}", where)
            text = text.replace(f"127.0.0.1:{ports['uwsgi_protocol']}", where)
            # nginx started as root runs its workers as nobody, who must be able to connect.
            text = re.sub(r'(?m)^(bind = "unix:.*)$', lambda m: f'{m[1]}\nmode = "0666"', text)
        if releases:
            text = in_release_layout(text, d.work / "shared" / "db.sqlite3")
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        return text

    for server in {"coffeehouse", *servers} - {"nginx"}:
        text = edit((REPO / "conf.d" / f"{server}.toml").read_text())
        if not held and server in _OWN_BIND:
            text = own_bind(server, text, ports)
        (conf_d / f"{server}.toml").write_text(text)
    if "nginx" in servers:
        write_nginx(d, conf_d, edit, releases)
    d.write_config(f'[procguard]\ninclude = ["conf.d/*.toml"]\nlogdir = "{d.work}/logs"\n'
                   f'loglevel = "debug"\ncontrol = "{d.endpoint}"\n')
    d.start()
    return Coffeehouse(d, ports, d.work if releases else None)


def write_nginx(d: DaemonRun, conf_d: Path, edit: Callable[[str], str], releases: bool) -> None:
    """conf.d/nginx.toml and nginx's own config for start(), each through start's `edit`."""
    # demo/nginx/procguard.toml is the main config `./dev run` uses with nginx; its program table
    # runs here from conf.d/, one directory up from demo/nginx/, with the nginx found here. With
    # releases, nginx's own files are not part of a release: they live in nginx/ beside releases/.
    main = (REPO / "demo" / "nginx" / "procguard.toml").read_text()
    table = main[main.index("[program.coffeehousenginx]"):]
    nginx_dir = "nginx" if releases else "demo/nginx"
    table = (table.replace("{here}/nginx.conf", f"{{here}}/../{nginx_dir}/nginx.conf")
             .replace("{here}/../../", "{here}/../")
             .replace("/usr/sbin/nginx", str(nginx_binary())))
    (conf_d / "nginx.toml").write_text(edit(table))
    nginx_conf = d.work / nginx_dir / "nginx.conf"
    nginx_conf.parent.mkdir(parents=True, exist_ok=True)
    text = (REPO / "demo" / "nginx" / "nginx.conf").read_text()
    if releases:  # the static files of the release `current` points at
        text = text.replace("../../demo/staticfiles/", "../../current/staticfiles/")
    nginx_conf.write_text(edit(text))
    (d.work / "var" / "nginx").mkdir(parents=True)


def in_release_layout(text: str, database: Path) -> str:
    """A copied conf.d file for the release layout: every `{here}/../demo` (the programs' directory,
    uWSGI's static map) is `{here}/../current`, and each program that runs in it (every program with a
    directory) gets COFFEEHOUSE_DB = database, shared by the releases."""
    text = text.replace("{here}/../demo", "{here}/../current")
    assert not re.search(r"(?m)^environment\b", text), "conf.d files set no environment: only a comment"
    return re.sub(r'(?m)^(directory = "\{here\}/\.\./current".*)$',
                  lambda m: f'{m[1]}\nenvironment = {{ COFFEEHOUSE_DB = "{database}" }}', text)


def workers(c: Coffeehouse, master: int, count: int, timeout: float = 60.0) -> set[int]:
    """Wait until master has `count` children (its workers); their pids."""
    found = wait_until(lambda: (lambda w: w if len(w) == count else None)(c.children(master)), timeout,
                       f"{count} children of {master}")
    assert found is not None
    return found


def wait_for_new_children(c: Coffeehouse, master: int, old: set[int], count: int, timeout: float = 90.0) -> set[int]:
    """Wait until master has `count` children, none of them in `old`."""
    def replaced() -> set[int] | None:
        now = c.children(master)
        return now if len(now) == count and not (now & old) else None

    new = wait_until(replaced, timeout, f"{count} new children of {master} (old {old})")
    assert new is not None
    c.track()
    return new


@dataclass(frozen=True, slots=True)
class Answer:
    """One request answered 200: when it was sent (time.monotonic()) and the release that answered."""

    sent: float
    release: str | None


@dataclass
class Load:
    """What under_load() saw: answered requests, failures (as text), how many were answered between the
    action's start and its end, every 200 (Answer), and when the action started and returned."""

    ok: int
    failed: list[str]
    during: int
    answers: list[Answer] = field(default_factory=list)
    action_started: float = 0.0
    action_returned: float = 0.0

    def releases(self, sent_from: float = 0.0, sent_before: float = float("inf")) -> set[str | None]:
        """The releases that answered the requests sent in [sent_from, sent_before)."""
        return {a.release for a in self.answers if sent_from <= a.sent < sent_before}


def under_load(port: int, action: Callable[[], object], settle: Callable[[], object] | None = None,
               clients: int = 4, interval_s: float = 0.01, limit: int = 5000) -> Load:
    """Run `action` while `clients` threads GET / on new connections, each starting one request every
    `interval_s` at most (a refused connection fails at once; unpaced, a client would spin); a request
    failed when it raised or was not 200. Load runs before (>= 40 answered), during, and after the
    action (then `settle`, e.g. waiting for new workers, and >= 40 more answered). Bounded: `limit`
    requests."""
    ok: list[Answer] = []
    failed: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and len(ok) + len(failed) < limit:
            t0 = time.monotonic()
            try:
                status, _, release = get_release(port, "/", timeout=30)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, cut off mid-body
                failed.append(repr(exc))
            else:
                if status == 200:
                    ok.append(Answer(t0, release))
                else:
                    failed.append(f"HTTP {status}")
            stop.wait(max(0.0, t0 + interval_s - time.monotonic()))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(ok) >= 40 or len(ok) + len(failed) >= limit, 60, "requests before the action")
        before = len(ok)
        started = time.monotonic()
        action()
        returned = time.monotonic()
        during = len(ok) - before
        if settle is not None:
            settle()
        after = len(ok)
        wait_until(lambda: len(ok) >= after + 40 or len(ok) + len(failed) >= limit, 90, "requests after the action")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    return Load(len(ok), failed, during, list(ok), started, returned)
