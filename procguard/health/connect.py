"""Connecting a check to its service: TCP or unix, along a next generation's route, with reasons an
operator can act on when it fails."""

import asyncio
import contextlib
import contextvars
import errno
import ipaddress
import itertools
import socket
from typing import Any

from procguard.health.failed import CheckFailed
from procguard.runtime.seam import CheckRoute

MAX_HEAD = 64 * 1024  # bytes of a response's status line + headers accepted (the streams' line limit)

# The route of the check under way (run_check sets it in its own task's context).
ROUTE: contextvars.ContextVar[CheckRoute | None] = contextvars.ContextVar("route", default=None)
_source_turn = itertools.count()


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to "host:port", "[v6]:port", "/path" or "unix:/path"."""
    if address.startswith("unix:"):
        return await open_unix(address[len("unix:"):])
    if address.startswith("/"):
        return await open_unix(address)
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CheckFailed(f"bad address {address!r} (expected host:port or a unix socket path)")
    return await open_tcp(host, int(port), address)


async def open_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    route = ROUTE.get()
    if route is not None:
        path = route.unix_path(path)
    try:
        return await asyncio.open_unix_connection(path, limit=MAX_HEAD)
    except OSError as exc:
        raise CheckFailed(describe(exc, path, is_unix=True)) from None


async def open_tcp(host: str, port: int, where: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
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
            raise CheckFailed(f"cannot resolve {host!r}: {exc.strerror}") from None
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
        raise CheckFailed(f"connection refused ({where})")
    raise CheckFailed(describe(errors[0], where))


def _bind_route_source(sock: socket.socket, family: int, port: int) -> None:
    """For a next generation's check: connect from loopback and one of the route's source ports, which
    the held socket's reuseport program sends to that generation (io/steering.py, io/listeners.py)."""
    route = ROUTE.get()
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


def describe(exc: OSError, where: str, *, is_unix: bool = False) -> str:
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


async def close(writer: asyncio.StreamWriter) -> None:
    # abort, not close: close would wait to flush a buffer that a hung peer may never read.
    writer.transport.abort()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
