"""The http check: one request over TCP or a unix socket; the status (and body) must be as expected."""

import asyncio
import re
import urllib.parse
from collections.abc import Callable

from procguard.config.model import HealthCheckConfig
from procguard.health.connect import MAX_HEAD, close, describe, open_tcp, open_unix
from procguard.health.failed import CheckAnswered, CheckFailed

MAX_BODY = 64 * 1024  # bytes of a response body searched for expect_body
USER_AGENT = "procguard-healthcheck"


async def check_http(hc: HealthCheckConfig) -> None:
    if hc.unix_socket is not None:
        where = hc.unix_socket
        target = hc.path
        host = hc.host or "localhost"
        reader, writer = await open_unix(where)
    else:
        parts = urllib.parse.urlsplit(hc.url or "")
        if parts.scheme != "http" or not parts.hostname:
            raise CheckFailed(f"bad url {hc.url!r} (expected http://host:port/path)")
        try:
            port = parts.port or 80
        except ValueError:
            raise CheckFailed(f"bad url {hc.url!r}: invalid port") from None
        netloc = parts.netloc.rpartition("@")[2]
        where = netloc if parts.port else f"{netloc}:80"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = hc.host or netloc
        reader, writer = await open_tcp(parts.hostname, port, where)
    await exchange(reader, writer, lambda: _request(hc, target, host), hc, "", where)


def _request(hc: HealthCheckConfig, target: str, host: str) -> bytes:
    lines = [f"{hc.method} {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {USER_AGENT}",
             "Connection: close", "Accept: */*"]
    if hc.method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")  # else some servers answer 411 Length Required
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Callable[[], bytes],
                   hc: HealthCheckConfig, prefix: str, where: str) -> None:
    """Send request(), then read and judge the response (read_response); the connection is closed whatever
    happens. prefix: put before every reason ("uwsgi: ")."""
    try:
        writer.write(request())
        await writer.drain()
        await read_response(reader, hc, prefix)
    except OSError as exc:
        raise CheckFailed(describe(exc, where)) from None
    finally:
        await close(writer)


_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?:[ \t][^\r\n]*)?\r?\n")


async def read_response(reader: asyncio.StreamReader, hc: HealthCheckConfig, prefix: str) -> None:
    """Read a response's head (and body when hc.expect_body is set); raise CheckFailed unless it passes."""
    status, headers = await _read_head(reader, prefix)
    if status not in hc.expect_status:
        codes = hc.expected_status_text()
        expected = codes if len(hc.expect_status) == 1 else f"one of {codes}"
        raise CheckAnswered(f"{prefix}HTTP {status} (expected {expected})")
    if hc.expect_body is None:
        return
    if hc.method == "HEAD" or status in (204, 304):
        body, complete = b"", True
    else:
        body, complete = await _read_body(reader, headers, prefix)
    if hc.expect_body.encode("utf-8") not in body:
        what = "body" if complete else f"first {MAX_BODY // 1024} KiB of the body"
        raise CheckFailed(f"{prefix}{what} does not contain {hc.expect_body!r}")


async def _read_head(reader: asyncio.StreamReader, prefix: str) -> tuple[int, dict[str, str]]:
    """Return the final status and the headers (lower-case names); skips 1xx interim responses."""
    size = 0
    while True:
        line = await _readline(reader, prefix)
        if not line:
            raise CheckFailed(f"{prefix}server closed the connection without a response")
        m = _STATUS_RE.fullmatch(line)
        if m is None:
            raise CheckFailed(f"{prefix}bad HTTP response: {_excerpt(line)}")
        status = int(m.group(1))
        headers: dict[str, str] = {}
        size += len(line)
        while True:
            line = await _readline(reader, prefix)
            size += len(line)
            if size > MAX_HEAD:
                raise CheckFailed(f"{prefix}bad HTTP response: headers larger than {MAX_HEAD // 1024} KiB")
            if not line.endswith(b"\n"):
                raise CheckFailed(f"{prefix}bad HTTP response: connection closed inside the headers")
            if line in (b"\r\n", b"\n"):
                break
            if line[:1] in (b" ", b"\t"):
                continue  # obsolete line folding (RFC 9112 5.2): nothing we read is folded
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise CheckFailed(f"{prefix}bad HTTP response: bad header line {_excerpt(line)}")
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
                raise CheckFailed(f"{prefix}bad HTTP response: bad chunk size {_excerpt(line)}") from None
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
            raise CheckFailed(f"{prefix}bad HTTP response: Content-Length: {headers['content-length']!r}")
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
        raise CheckFailed(f"{prefix}bad HTTP response: a line longer than {MAX_HEAD // 1024} KiB") from None


def _excerpt(data: bytes) -> str:
    text = data[:60].decode("latin-1")
    return repr(text) + ("..." if len(data) > 60 else "")
