"""Run one health check (http, tcp, uwsgi or exec) on the event loop, and say why it failed.

`run_check` never blocks the loop and never raises (only cancellation propagates): every outcome,
including a hung server or a broken reply, is a `CheckResult` whose `reason` an operator can act on.
Scheduling (interval, retries, start_period) and what to do about the result belong to the caller.
"""

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from procguard.config.model import DEFAULT_PATH, HealthCheckConfig
from procguard.engine.process import CheckRoute
from procguard.runtime.spawn import spawn_watched

MAX_BODY = 64 * 1024  # bytes of a response body searched for expect_body
MAX_HEAD = 64 * 1024  # bytes of status line + headers accepted
MAX_OUTPUT = 4 * 1024  # bytes of an exec check's output kept
USER_AGENT = "procguard-healthcheck"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: `reason` is "" when ok, else short and specific."""

    ok: bool
    reason: str
    duration_s: float
    # The server answered, and its answer fails the check (an HTTP status not expected): a definite
    # "no", unlike a refused connection or a timeout (a server may still be binding or booting).
    answered: bool = False


class CommandSpawner(Protocol):
    """Start argv with these Popen keywords off the loop; return its pid and a future of its exit code."""

    async def __call__(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]": ...


class _Failed(Exception):
    """The check ran and the service is not healthy; the message is the reason."""


class _Answered(_Failed):
    """The service answered, and its answer fails the check (CheckResult.answered)."""


async def run_check(
    hc: HealthCheckConfig,
    *,
    uid: int | None = None,
    gid: int | None = None,
    extra_groups: tuple[int, ...] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    spawner: "CommandSpawner | None" = None,
    route: CheckRoute | None = None,
) -> CheckResult:
    """Run `hc` once, bounded by `hc.timeout`.

    uid, gid, extra_groups, env (default: only PATH) and cwd apply to exec checks: the command runs
    as the program's user. Never raises except CancelledError; on cancel or timeout, sockets are
    closed and an exec check's whole process group is killed and reaped before returning.
    spawner: how exec checks start their command and learn its exit. The daemon passes
    RealOS.spawn_command, because its reaper (waitpid(-1)) owns every child's status; without one,
    spawn.spawn_watched waits for it in a thread (fine outside the daemon).
    route: the check is of a next generation (docs/deploys.md): its connections take the route that
    reaches that generation rather than the current one (every connect below reads it from _ROUTE).
    """
    _ROUTE.set(route)
    started = time.monotonic()
    deadline = asyncio.timeout(hc.timeout)
    try:
        async with deadline:
            if hc.type == "http":
                await _check_http(hc)
            elif hc.type == "tcp":
                await _check_tcp(hc)
            elif hc.type == "uwsgi":
                await _check_uwsgi(hc)
            elif hc.type == "exec":
                await _check_exec(hc, uid=uid, gid=gid, extra_groups=extra_groups, env=env, cwd=cwd,
                                  spawner=spawner)
            else:
                raise _Failed(f"unknown check type {hc.type!r}")
        reason = ""
        answered = False
    except _Failed as exc:
        reason = str(exc)
        answered = isinstance(exc, _Answered)
    except TimeoutError:
        answered = False
        if not deadline.expired():  # TimeoutError is an OSError: a socket's own ETIMEDOUT
            reason = "connection timed out"
        else:
            reason = f"timed out after {_seconds(hc.timeout)}"
    except Exception as exc:  # boundary: callers rely on a result, and a bug here must not stop supervision
        reason = f"internal error: {type(exc).__name__}: {exc}"
        answered = False
    return CheckResult(ok=not reason, reason=reason, duration_s=time.monotonic() - started, answered=answered)


def _seconds(value: float) -> str:
    return f"{value:g}s"


# ------------------------------------------------------------------------------------------ http


async def _check_http(hc: HealthCheckConfig) -> None:
    if hc.unix_socket is not None:
        where = hc.unix_socket
        target = hc.path
        host = hc.host or "localhost"
        reader, writer = await _open_unix(where)
    else:
        parts = urllib.parse.urlsplit(hc.url or "")
        if parts.scheme != "http" or not parts.hostname:
            raise _Failed(f"bad url {hc.url!r} (expected http://host:port/path)")
        try:
            port = parts.port or 80
        except ValueError:
            raise _Failed(f"bad url {hc.url!r}: invalid port") from None
        netloc = parts.netloc.rpartition("@")[2]
        where = netloc if parts.port else f"{netloc}:80"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = hc.host or netloc
        reader, writer = await _open_tcp(parts.hostname, port, where)
    try:
        lines = [f"{hc.method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}",
                 "Connection: close", "Accept: */*"]
        if hc.method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")  # else some servers answer 411 Length Required
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        await writer.drain()
        await _read_response(reader, hc, "")
    except OSError as exc:
        raise _Failed(_describe(exc, where)) from None
    finally:
        await _close(writer)


# ------------------------------------------------------------------------------------------- tcp


async def _check_tcp(hc: HealthCheckConfig) -> None:
    _, writer = await _connect(hc.address or "")
    await _close(writer)


# ----------------------------------------------------------------------------------------- uwsgi


async def _check_uwsgi(hc: HealthCheckConfig) -> None:
    address = hc.address or ""
    reader, writer = await _connect(address)
    try:
        writer.write(_uwsgi_request(hc))
        await writer.drain()
        await _read_response(reader, hc, "uwsgi: ")
    except OSError as exc:
        raise _Failed(_describe(exc, address)) from None
    finally:
        await _close(writer)


def _uwsgi_request(hc: HealthCheckConfig) -> bytes:
    """Encode hc's request as a uwsgi packet (modifier1 0: a WSGI request without body).

    Header: modifier1 (u8), size of the vars block (u16 little-endian), modifier2 (u8); then each
    variable as u16-LE key length, key, u16-LE value length, value (uWSGI docs, "The uwsgi Protocol").
    """
    host = hc.host or "localhost"
    path, _, query = hc.path.partition("?")
    server_name, server_port = _split_host(host)
    variables: list[tuple[str, bytes]] = [
        ("REQUEST_METHOD", hc.method.encode()),
        ("REQUEST_URI", hc.path.encode()),
        ("PATH_INFO", urllib.parse.unquote_to_bytes(path)),  # decoded, as nginx's $document_uri
        ("QUERY_STRING", query.encode()),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ("SERVER_NAME", server_name.encode()),
        # The port the client addressed, as nginx's $server_port; not the uwsgi socket's.
        ("SERVER_PORT", (server_port or "80").encode()),
        ("HTTP_HOST", host.encode()),
        ("HTTP_USER_AGENT", USER_AGENT.encode()),
        ("REMOTE_ADDR", b"127.0.0.1"),
    ]
    block = b"".join(
        struct.pack("<H", len(key)) + key.encode() + struct.pack("<H", len(value)) + value
        for key, value in variables
    )
    if len(block) > 0xFFFF or any(len(value) > 0xFFFF for _, value in variables):
        raise _Failed("uwsgi: request variables exceed 64 KiB")
    return struct.pack("<BHB", 0, len(block), 0) + block


def _split_host(host: str) -> tuple[str, str]:
    """Split a Host header into name and port ("" when absent); IPv6 literals keep their brackets."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, port
    return host, ""


# ------------------------------------------------------------------------------ HTTP responses

_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?:[ \t][^\r\n]*)?\r?\n")


async def _read_response(reader: asyncio.StreamReader, hc: HealthCheckConfig, prefix: str) -> None:
    """Read a response's head (and body when hc.expect_body is set); raise _Failed unless it passes."""
    status, headers = await _read_head(reader, prefix)
    if status not in hc.expect_status:
        codes = hc.expected_status_text()
        expected = codes if len(hc.expect_status) == 1 else f"one of {codes}"
        raise _Answered(f"{prefix}HTTP {status} (expected {expected})")
    if hc.expect_body is None:
        return
    if hc.method == "HEAD" or status in (204, 304):
        body, complete = b"", True
    else:
        body, complete = await _read_body(reader, headers, prefix)
    if hc.expect_body.encode("utf-8") not in body:
        what = "body" if complete else f"first {MAX_BODY // 1024} KiB of the body"
        raise _Failed(f"{prefix}{what} does not contain {hc.expect_body!r}")


async def _read_head(reader: asyncio.StreamReader, prefix: str) -> tuple[int, dict[str, str]]:
    """Return the final status and the headers (lower-case names); skips 1xx interim responses."""
    size = 0
    while True:
        line = await _readline(reader, prefix)
        if not line:
            raise _Failed(f"{prefix}server closed the connection without a response")
        m = _STATUS_RE.fullmatch(line)
        if m is None:
            raise _Failed(f"{prefix}bad HTTP response: {_excerpt(line)}")
        status = int(m.group(1))
        headers: dict[str, str] = {}
        size += len(line)
        while True:
            line = await _readline(reader, prefix)
            size += len(line)
            if size > MAX_HEAD:
                raise _Failed(f"{prefix}bad HTTP response: headers larger than {MAX_HEAD // 1024} KiB")
            if not line.endswith(b"\n"):
                raise _Failed(f"{prefix}bad HTTP response: connection closed inside the headers")
            if line in (b"\r\n", b"\n"):
                break
            if line[:1] in (b" ", b"\t"):
                continue  # obsolete line folding (RFC 9112 5.2): nothing we read is folded
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _Failed(f"{prefix}bad HTTP response: bad header line {_excerpt(line)}")
            name = name.lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if status >= 200 or status == 101:
            return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], prefix: str) -> tuple[bytes, bool]:
    """Return up to MAX_BODY bytes of the body, and whether that is all of it.

    Follows chunked transfer coding, else Content-Length, else reads to EOF. A body cut short is
    returned as far as it came: the check is about its content.
    """
    body = bytearray()
    codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",") if c.strip()]
    if codings and codings[-1] == "chunked":
        while len(body) < MAX_BODY:
            line = await _readline(reader, prefix)
            if not line:
                return bytes(body), False
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Failed(f"{prefix}bad HTTP response: bad chunk size {_excerpt(line)}") from None
            if size == 0:
                return bytes(body), True
            want = min(size, MAX_BODY - len(body))
            chunk = await _read_exactly(reader, want)
            body += chunk
            if len(chunk) < want:
                return bytes(body), False
            if want == size:
                await _readline(reader, prefix)  # the CRLF after the chunk
        return bytes(body), False
    if "content-length" in headers:
        values = {v.strip() for v in headers["content-length"].split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise _Failed(f"{prefix}bad HTTP response: Content-Length: {headers['content-length']!r}")
        length = int(values.pop())
        body += await _read_exactly(reader, min(length, MAX_BODY))
        return bytes(body), length <= MAX_BODY
    while len(body) < MAX_BODY:
        data = await reader.read(MAX_BODY - len(body))
        if not data:
            return bytes(body), True
        body += data
    return bytes(body), False  # a body of exactly MAX_BODY bytes also lands here; "first 64 KiB" stays true


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as exc:
        return exc.partial


async def _readline(reader: asyncio.StreamReader, prefix: str) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # the stream's limit (MAX_HEAD) was hit before a newline
        raise _Failed(f"{prefix}bad HTTP response: a line longer than {MAX_HEAD // 1024} KiB") from None


def _excerpt(data: bytes) -> str:
    text = data[:60].decode("latin-1")
    return repr(text) + ("..." if len(data) > 60 else "")


# ----------------------------------------------------------------------------------- connecting

# The route of the check under way (run_check sets it in its own task's context).
_ROUTE: contextvars.ContextVar[CheckRoute | None] = contextvars.ContextVar("route", default=None)
_source_turn = itertools.count()


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to "host:port", "[v6]:port", "/path" or "unix:/path"."""
    if address.startswith("unix:"):
        return await _open_unix(address[len("unix:"):])
    if address.startswith("/"):
        return await _open_unix(address)
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _Failed(f"bad address {address!r} (expected host:port or a unix socket path)")
    return await _open_tcp(host, int(port), address)


async def _open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    route = _ROUTE.get()
    if route is not None:
        path = route.unix_path(path)
    try:
        return await asyncio.open_unix_connection(path, limit=MAX_HEAD)
    except OSError as exc:
        raise _Failed(_describe(exc, path, is_unix=True)) from None


async def _open_tcp(host: str, port: int, where: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Try each address `host` resolves to, in order; "connection refused" wins if any refused."""
    loop = asyncio.get_running_loop()
    try:
        # A literal address needs no lookup: getaddrinfo runs in asyncio's thread pool and was about a
        # third of each check's CPU (benchmarks/bench_health.py).
        literal = ipaddress.ip_address(host)
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        infos: list[Any] = [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    except ValueError:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Failed(f"cannot resolve {host!r}: {exc.strerror}") from None
    errors: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        # One socket per address, as asyncio.open_connection does, but keeping each error: 3.11 merges
        # them into one "Multiple exceptions" OSError without an errno.
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            _bind_route_source(sock, family, port)
            await loop.sock_connect(sock, sockaddr)
            return await asyncio.open_connection(sock=sock, limit=MAX_HEAD)
        except OSError as exc:
            sock.close()
            errors.append(exc)
        except BaseException:
            sock.close()
            raise
    refused = [e for e in errors if isinstance(e, ConnectionRefusedError)]
    if refused or not errors:
        raise _Failed(f"connection refused ({where})")
    raise _Failed(_describe(errors[0], where))


def _bind_route_source(sock: socket.socket, family: int, port: int) -> None:
    """For a next generation's check: connect from loopback and one of the route's source ports, which
    the held socket's reuseport program sends to that generation (sockets.py, "next generation")."""
    route = _ROUTE.get()
    if route is None or port not in route.tcp_ports or not route.source_ports:
        return
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the daemon holds the port reserved
    first = next(_source_turn)
    for i in range(len(route.source_ports)):
        try:
            sock.bind((host, route.source_ports[(first + i) % len(route.source_ports)]))
            return
        except OSError as exc:  # a connection of an earlier check may still hold that one
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) or i == len(route.source_ports) - 1:
                raise


def _describe(exc: OSError, where: str, *, is_unix: bool = False) -> str:
    if isinstance(exc, ConnectionRefusedError):
        what = "connection refused"
    elif isinstance(exc, ConnectionResetError):
        what = "connection reset by peer"
    elif isinstance(exc, BrokenPipeError):
        what = "connection closed by peer"
    elif isinstance(exc, FileNotFoundError) and is_unix:
        what = "no such socket"
    elif isinstance(exc, PermissionError):
        what = "permission denied"
    elif isinstance(exc, TimeoutError):
        what = "connection timed out"
    else:
        text = exc.strerror or str(exc) or type(exc).__name__
        what = text[:1].lower() + text[1:]
    return f"{what} ({where})"


async def _close(writer: asyncio.StreamWriter) -> None:
    # abort, not close: close would wait to flush a buffer that a hung peer may never read.
    writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# ------------------------------------------------------------------------------------------ exec


class _Capture:
    """Drain a pipe's read end into at most `limit` bytes; the rest is read and dropped.

    Reading on, past the limit, keeps a chatty command from blocking on a full pipe.
    """

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.data = bytearray()
        self.is_eof = False

    def on_readable(self) -> None:
        self._read_once()

    def drain(self) -> None:
        """Take what is already in the pipe without waiting; bounded for a writer that never stops."""
        for _ in range(64):
            if self.is_eof or not self._read_once():
                return

    def _read_once(self) -> bool:
        if self.is_eof:
            return False
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.is_eof = True
            asyncio.get_running_loop().remove_reader(self.fd)
            return False
        room = self.limit - len(self.data)
        if room > 0:
            self.data += data[:room]
        return True


async def _check_exec(
    hc: HealthCheckConfig,
    *,
    uid: int | None,
    gid: int | None,
    extra_groups: tuple[int, ...] | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    spawner: CommandSpawner | None = None,
) -> None:
    if not hc.command:
        raise _Failed("exec check has no command")
    loop = asyncio.get_running_loop()
    # Our own pipe rather than stdout=PIPE: asyncio's Process.wait() also waits for its pipes to
    # close, which a background grandchild holding stdout would delay forever.
    read_fd, write_fd = os.pipe()
    capture = _Capture(read_fd, MAX_OUTPUT)
    # spawn.popen: in its own process group, so a timeout kills what it started too; stderr into stdout.
    popen_kwargs: dict[str, Any] = dict(
        stdout=write_fd, env=dict(env) if env is not None else {"PATH": DEFAULT_PATH}, cwd=cwd,
        user=uid, group=gid, extra_groups=list(extra_groups) if extra_groups is not None else None,
    )
    pid: int | None = None
    exited: asyncio.Future[int] | None = None
    try:
        try:
            pid, exited = await (spawner or spawn_watched)(list(hc.command), **popen_kwargs)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise _Failed(_cannot_run(exc, hc.command[0], cwd)) from None
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, capture.on_readable)
        code = await asyncio.shield(exited)
        # Everything the command wrote is in the pipe by now; take it without waiting for EOF,
        # which a background process still holding the pipe could withhold.
        capture.drain()
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)
        if pid is not None and exited is not None and not exited.done():
            # Timeout or cancel: kill the command and all it started in its group. The id cannot
            # name a stranger's group while ours has a member: POSIX does not reuse a process group
            # id before the group is empty.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            # Shielded, as trio does: a second cancel ends our waiting, never the reaping.
            await asyncio.shield(exited)
    if code == 0:
        return
    first = _first_line(bytes(capture.data))
    if code < 0:
        try:
            what = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit status {code}"
    raise _Failed(f"{what}: {first}" if first else what)


def _cannot_run(exc: BaseException, program: str, cwd: str | None) -> str:
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if cwd is not None and exc.filename == cwd:
            return f"cannot run {program}: directory {cwd}: {what}"
        return f"cannot run {program}: {what}"
    return f"cannot run {program}: {exc}"


def _first_line(output: bytes) -> str:
    for line in output.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= 200 else line[:200] + "..."
    return ""
