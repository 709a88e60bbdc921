"""Health checks (issue #5) against real servers on loopback ports and unix sockets, and real commands.

The servers run in threads of the test process: an HTTP app that can be told to go unhealthy (503)
or to hang (read the request, never answer), a raw responder for broken replies, and a uwsgi-protocol
responder that records the variables it was sent. Fixtures stop every server and kill every pid
a command recorded.
"""

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import socketserver
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from procguard.config.model import DEFAULT_PATH, HealthCheckConfig
from procguard.health.check import CheckResult, run_check
from tests.helpers import alive, wait_until


def check(**fields: Any) -> CheckResult:
    return asyncio.run(run_check(HealthCheckConfig(**fields)))


# --------------------------------------------------------------------------------- the HTTP app


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class App:
    """What the app answers, and what it was asked. mode: "ok", "unhealthy" (503) or "hang"."""

    mode: str = "ok"
    body: bytes = b"status: ok\n"
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # frees hung handlers


class AppHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        app: App = self.server.app  # type: ignore[attr-defined]
        app.requests.append(Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        if app.mode == "hang":
            app.release.wait()
            self.close_connection = True
            return
        self.send_response(503 if app.mode == "unhealthy" else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(app.body)))
        self.end_headers()
        self.wfile.write(app.body)

    do_HEAD = do_GET

    def address_string(self) -> str:
        return "client"  # a unix socket's client_address is ""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(server: socketserver.BaseServer) -> Callable[[], None]:
    """Serve in a thread; return the function that stops it."""
    # A short poll interval only makes shutdown() quick; requests are served the moment they arrive.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return stop


@pytest.fixture
def http_app() -> Iterator[tuple[App, str]]:
    """An HTTP app on a free loopback port; yields it and its base URL."""
    app = App()
    server = ThreadingHTTPServer(("127.0.0.1", 0), AppHandler)
    setattr(server, "app", app)  # read back by the handler
    stop = serve(server)
    try:
        yield app, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        app.release.set()
        stop()


@pytest.fixture
def unix_http_app(tmp_path: Path) -> Iterator[tuple[App, str]]:
    """The same app on a unix socket; yields it and the socket path."""
    app = App()
    path = str(tmp_path / "app.sock")
    server = UnixHTTPServer(path, AppHandler)
    setattr(server, "app", app)  # read back by the handler
    stop = serve(server)
    try:
        yield app, path
    finally:
        app.release.set()
        stop()


# --------------------------------------------------------------------- a raw, scripted responder


class RawHandler(socketserver.BaseRequestHandler):
    """Read the request head, write the server's canned reply, close."""

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            data += chunk
        self.request.sendall(self.server.reply)  # type: ignore[attr-defined]


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes], str]]:
    """Factory: a server answering every request with these exact bytes; returns its URL."""
    stops: list[Callable[[], None]] = []

    def make(reply: bytes) -> str:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), RawHandler)
        server.daemon_threads = True
        setattr(server, "reply", reply)  # read back by the handler
        stops.append(serve(server))
        return f"http://127.0.0.1:{server.server_address[1]}/health"

    try:
        yield make
    finally:
        for stop in stops:
            stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# ------------------------------------------------------------------------- a uwsgi responder


@dataclass
class UwsgiApp:
    status: str = "200 OK"
    packets: list[tuple[int, int, dict[str, str]]] = field(default_factory=list)  # modifier1, modifier2, vars


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"got {len(data)} of {n} bytes")
        data += chunk
    return data


class UwsgiHandler(socketserver.BaseRequestHandler):
    """Parse one uwsgi packet (uWSGI docs, "The uwsgi Protocol") and answer in HTTP, as uWSGI does."""

    def handle(self) -> None:
        app: UwsgiApp = self.server.app  # type: ignore[attr-defined]
        modifier1, size, modifier2 = struct.unpack("<BHB", recv_exactly(self.request, 4))
        block = recv_exactly(self.request, size)
        variables: dict[str, str] = {}
        pos = 0
        while pos < len(block):
            (klen,) = struct.unpack_from("<H", block, pos)
            key = block[pos + 2:pos + 2 + klen].decode()
            pos += 2 + klen
            (vlen,) = struct.unpack_from("<H", block, pos)
            variables[key] = block[pos + 2:pos + 2 + vlen].decode()
            pos += 2 + vlen
        app.packets.append((modifier1, modifier2, variables))
        body = b"ok" if app.status.startswith("200") else b"boom"
        self.request.sendall(f"HTTP/1.1 {app.status}\r\nContent-Type: text/plain\r\n\r\n".encode() + body)


class UnixUwsgiServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture
def uwsgi_server(tmp_path: Path) -> Iterator[Callable[[str], tuple[UwsgiApp, str]]]:
    """Factory: a uwsgi responder on "tcp" (address host:port) or "unix" (a socket path)."""
    stops: list[Callable[[], None]] = []

    def make(kind: str) -> tuple[UwsgiApp, str]:
        app = UwsgiApp()
        server: socketserver.BaseServer
        if kind == "tcp":
            server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), UwsgiHandler)
            server.daemon_threads = True
            address = f"127.0.0.1:{server.server_address[1]}"
        else:
            address = str(tmp_path / f"uwsgi{len(stops)}.sock")
            server = UnixUwsgiServer(address, UwsgiHandler)
        setattr(server, "app", app)  # read back by the handler
        stops.append(serve(server))
        return app, address

    try:
        yield make
    finally:
        for stop in stops:
            stop()


# ------------------------------------------------------------------------------------- commands


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Pids a test saw its commands start; any still alive at teardown are killed and fail the test."""
    seen: list[int] = []
    yield seen
    survivors = [pid for pid in seen if alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes outlived their health check (killed now): {survivors}"


def read_pid(path: Path) -> int:
    text = path.read_text() if path.exists() else ""
    assert text.endswith("\n"), f"the command did not record its grandchild's pid in {path}: {text!r}"
    return int(text)


# ========================================================================================= http


def test_http_ok_when_app_answers_200(http_app: tuple[App, str]) -> None:
    app, base = http_app
    result = check(type="http", url=f"{base}/health/?full=1")
    assert result == CheckResult(True, "", result.duration_s)
    [req] = app.requests
    assert (req.method, req.path) == ("GET", "/health/?full=1")
    assert req.headers["user-agent"] == "procguard-healthcheck"
    assert req.headers["connection"] == "close"


def test_http_unhealthy_app_fails_with_its_status(http_app: tuple[App, str]) -> None:
    app, base = http_app
    app.mode = "unhealthy"
    result = check(type="http", url=f"{base}/health/")
    assert not result.ok
    assert result.reason == "HTTP 503 (expected 200)"


def test_http_status_in_expect_status_passes(http_app: tuple[App, str]) -> None:
    app, base = http_app
    app.mode = "unhealthy"
    assert check(type="http", url=f"{base}/", expect_status=(200, 503)).ok
    result = check(type="http", url=f"{base}/", expect_status=(200, 204))
    assert result.reason == "HTTP 503 (expected one of 200, 204)"


def test_http_expect_body_present_passes(http_app: tuple[App, str]) -> None:
    _, base = http_app
    assert check(type="http", url=f"{base}/", expect_body="status: ok").ok


def test_http_expect_body_absent_fails(http_app: tuple[App, str]) -> None:
    app, base = http_app
    app.body = b"status: degraded\n"
    result = check(type="http", url=f"{base}/", expect_body="status: ok")
    assert not result.ok
    assert result.reason == "body does not contain 'status: ok'"


def test_http_host_header_reaches_app(http_app: tuple[App, str]) -> None:
    app, base = http_app
    assert check(type="http", url=f"{base}/", host="www.example.test").ok
    assert check(type="http", url=f"{base}/").ok
    assert [r.headers["host"] for r in app.requests] == ["www.example.test", base.removeprefix("http://")]


def test_http_over_unix_socket(unix_http_app: tuple[App, str]) -> None:
    app, path = unix_http_app
    result = check(type="http", unix_socket=path, path="/health/?deep=0", expect_body="ok")
    assert result.ok, result.reason
    [req] = app.requests
    assert (req.path, req.headers["host"]) == ("/health/?deep=0", "localhost")


def test_http_unix_socket_missing(tmp_path: Path) -> None:
    path = str(tmp_path / "nothing.sock")
    assert check(type="http", unix_socket=path).reason == f"no such socket ({path})"


def test_http_hung_app_times_out(http_app: tuple[App, str]) -> None:
    app, base = http_app
    app.mode = "hang"
    result = check(type="http", url=f"{base}/", timeout=0.5)
    assert not result.ok
    assert result.reason == "timed out after 0.5s"
    wait_until(lambda: app.requests, what="the hung app to receive the request")


def test_http_connection_refused(refused_port: int) -> None:
    result = check(type="http", url=f"http://127.0.0.1:{refused_port}/health/")
    assert not result.ok
    assert result.reason == f"connection refused (127.0.0.1:{refused_port})"


def test_http_server_closing_without_response(raw_server: Callable[[bytes], str]) -> None:
    result = check(type="http", url=raw_server(b""))
    assert result.reason == "server closed the connection without a response"


def test_http_garbage_response(raw_server: Callable[[bytes], str]) -> None:
    result = check(type="http", url=raw_server(b"SSH-2.0-OpenSSH_9.6\r\n"))
    assert not result.ok
    assert result.reason.startswith("bad HTTP response: 'SSH-2.0-OpenSSH_9.6")


def test_http_headers_cut_short(raw_server: Callable[[bytes], str]) -> None:
    result = check(type="http", url=raw_server(b"HTTP/1.1 200 OK\r\nContent-Type: te"))
    assert result.reason == "bad HTTP response: connection closed inside the headers"


def test_http_chunked_body_is_decoded(raw_server: Callable[[bytes], str]) -> None:
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"7\r\nstatus:\r\n4;ext=1\r\n ok\n\r\n0\r\n\r\n")
    url = raw_server(reply)
    assert check(type="http", url=url, expect_body="status: ok").ok
    # Chunk sizes must not leak into the body that is searched.
    assert check(type="http", url=url, expect_body="4").reason == "body does not contain '4'"


def test_http_content_length_bounds_the_body(raw_server: Callable[[bytes], str]) -> None:
    url = raw_server(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nokAND MORE")
    assert check(type="http", url=url, expect_body="ok").ok
    assert not check(type="http", url=url, expect_body="MORE").ok


def test_http_skips_interim_responses(raw_server: Callable[[bytes], str]) -> None:
    url = raw_server(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert check(type="http", url=url, expect_status=(204,)).ok


def test_hung_check_does_not_block_other_checks(http_app: tuple[App, str]) -> None:
    app, base = http_app
    app.mode = "hang"

    async def scenario() -> tuple[CheckResult, bool]:
        hung = asyncio.create_task(run_check(HealthCheckConfig(type="http", url=f"{base}/", timeout=60)))
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not app.requests:
                assert asyncio.get_running_loop().time() < deadline, "the hung app never got the request"
                await asyncio.sleep(0.02)
            other = await run_check(HealthCheckConfig(type="tcp", address=base.removeprefix("http://")))
            return other, hung.done()
        finally:
            hung.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hung

    other, is_hung_done = asyncio.run(scenario())
    assert other.ok, other.reason
    assert not is_hung_done


# ========================================================================================== tcp


def test_tcp_ok_when_listening(http_app: tuple[App, str]) -> None:
    _, base = http_app
    assert check(type="tcp", address=base.removeprefix("http://")).ok


def test_tcp_refused(refused_port: int) -> None:
    result = check(type="tcp", address=f"127.0.0.1:{refused_port}")
    assert result.reason == f"connection refused (127.0.0.1:{refused_port})"


def test_tcp_ipv6_address() -> None:
    listener = socket.socket(socket.AF_INET6)
    try:
        try:
            listener.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        listener.listen()
        assert check(type="tcp", address=f"[::1]:{listener.getsockname()[1]}").ok
    finally:
        listener.close()


# ======================================================================================== uwsgi


def test_uwsgi_ok_and_sends_request_variables(uwsgi_server: Callable[[str], tuple[UwsgiApp, str]]) -> None:
    app, address = uwsgi_server("tcp")
    result = check(type="uwsgi", address=address, path="/health/a%20b?full=1", host="www.example.test:8080",
                   expect_body="ok")
    assert result.ok, result.reason
    [(modifier1, modifier2, env)] = app.packets
    assert (modifier1, modifier2) == (0, 0)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["REQUEST_URI"] == "/health/a%20b?full=1"
    assert env["PATH_INFO"] == "/health/a b"
    assert env["QUERY_STRING"] == "full=1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("www.example.test", "8080")
    assert env["HTTP_HOST"] == "www.example.test:8080"
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_uwsgi_error_status_fails(uwsgi_server: Callable[[str], tuple[UwsgiApp, str]]) -> None:
    app, address = uwsgi_server("tcp")
    app.status = "500 Internal Server Error"
    result = check(type="uwsgi", address=address)
    assert not result.ok
    assert result.reason == "uwsgi: HTTP 500 (expected 200)"


def test_uwsgi_over_unix_socket(uwsgi_server: Callable[[str], tuple[UwsgiApp, str]]) -> None:
    app, path = uwsgi_server("unix")
    assert check(type="uwsgi", address=f"unix:{path}", path="/ping").ok
    assert check(type="uwsgi", address=path, path="/ping").ok
    assert [(env["PATH_INFO"], env["HTTP_HOST"], env["SERVER_PORT"]) for _, _, env in app.packets] == [
        ("/ping", "localhost", "80")] * 2


def test_uwsgi_refused(refused_port: int) -> None:
    result = check(type="uwsgi", address=f"127.0.0.1:{refused_port}")
    assert result.reason == f"connection refused (127.0.0.1:{refused_port})"


# ========================================================================================= exec


def test_exec_exit_0_is_healthy() -> None:
    result = check(type="exec", command=("sh", "-c", "echo fine; exit 0"))
    assert (result.ok, result.reason) == (True, "")


def test_exec_failure_reports_status_and_first_line() -> None:
    result = check(type="exec", command=("sh", "-c", "echo; echo 'database unreachable' >&2; echo more; exit 1"))
    assert not result.ok
    assert result.reason == "exit status 1: database unreachable"


def test_exec_command_not_found() -> None:
    result = check(type="exec", command=("/nonexistent/check-app",))
    assert result.reason == "cannot run /nonexistent/check-app: No such file or directory"


def test_exec_timeout_kills_process_group(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    command = ("sh", "-c", f"sleep 1000 & echo $! > {pidfile}; wait")
    result = check(type="exec", command=command, timeout=3)
    assert not result.ok
    assert result.reason == "timed out after 3s"
    grandchild = read_pid(pidfile)
    pids.append(grandchild)
    wait_until(lambda: not alive(grandchild), what=f"grandchild {grandchild} to be killed")


def test_exec_cancel_kills_process_group_and_propagates(tmp_path: Path, pids: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    hc = HealthCheckConfig(type="exec", command=("sh", "-c", f"sleep 1000 & echo $! > {pidfile}; wait"), timeout=60)

    async def scenario() -> None:
        task = asyncio.create_task(run_check(hc))
        deadline = asyncio.get_running_loop().time() + 10
        while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
            assert asyncio.get_running_loop().time() < deadline, "the command never recorded its grandchild"
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        pids.append(read_pid(pidfile))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    wait_until(lambda: not alive(pids[0]), what=f"grandchild {pids[0]} to be killed")


def test_exec_background_process_holding_output_does_not_stall_check(tmp_path: Path) -> None:
    # A check that exits leaving a process behind with our pipe as its stdout is done when it exits.
    pidfile = tmp_path / "background.pid"
    command = ("sh", "-c", f"sleep 1000 & echo $! > {pidfile}; echo 'not yet'; exit 3")
    try:
        result = check(type="exec", command=command, timeout=30)
        assert result.reason == "exit status 3: not yet"
    finally:
        if pidfile.exists():
            background = read_pid(pidfile)
            os.kill(background, signal.SIGKILL)
            wait_until(lambda: not alive(background), what=f"background process {background} to die")


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory any user may write (tmp_path's parents are 0700 to root)."""
    path = Path(tempfile.mkdtemp(prefix="procguard-health-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        shutil.rmtree(path)


def test_exec_runs_as_given_user(world_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    hc = HealthCheckConfig(type="exec", command=("sh", "-c", "id -u > uid; id -G > groups"))
    result = asyncio.run(run_check(hc, uid=nobody.pw_uid, gid=nobody.pw_gid, extra_groups=(), cwd=str(world_dir)))
    assert result.ok, result.reason
    assert (world_dir / "uid").read_text().split() == [str(nobody.pw_uid)]
    assert (world_dir / "groups").read_text().split() == [str(nobody.pw_gid)]


def test_exec_environment_defaults_to_path_only(world_dir: Path) -> None:
    command = ("sh", "-c", "env > env.txt")
    assert asyncio.run(run_check(HealthCheckConfig(type="exec", command=command), cwd=str(world_dir))).ok
    env = dict(line.split("=", 1) for line in (world_dir / "env.txt").read_text().splitlines())
    assert {k: v for k, v in env.items() if k not in ("PWD", "SHLVL", "_", "OLDPWD")} == {"PATH": DEFAULT_PATH}


def test_exec_uses_given_environment_and_directory(world_dir: Path) -> None:
    hc = HealthCheckConfig(type="exec", command=("sh", "-c", 'test "$APP_ENV" = prod && test "$(pwd)" = "$0"',
                                                 str(world_dir)))
    assert asyncio.run(run_check(hc, env={"PATH": "/usr/bin:/bin", "APP_ENV": "prod"}, cwd=str(world_dir))).ok
    hc = HealthCheckConfig(type="exec", command=("sh", "-c", 'test "$APP_ENV" = prod'))
    assert asyncio.run(run_check(hc, env={"PATH": "/usr/bin:/bin", "APP_ENV": "dev"})).reason == "exit status 1"
