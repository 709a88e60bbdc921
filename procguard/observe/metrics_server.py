"""The /metrics endpoint: a minimal HTTP/1.1 server on the daemon's loop, over TCP or a unix socket.

Nothing runs between scrapes: no timer, no thread. This module is imported only when metrics are
configured (the daemon without them never loads prometheus_client).
"""

import asyncio
import contextlib
import os
import socket
import stat
import time
from collections.abc import Callable

from procguard.config.model import MetricsConfig
from procguard.engine.supervisor import Supervisor
from procguard.io.output import Output
from procguard.log import get_logger
from procguard.observe.metrics import Scraper

log = get_logger()

MAX_CONNECTIONS = 16  # scrapers at once; more are closed at once (loopback, but keep the fd count bounded)
MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0
# The classic text format (what generate_latest writes); every Prometheus version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    """The /metrics endpoint: HTTP/1.1 on TCP or a unix socket, served by the daemon's event loop."""

    def __init__(self, config: MetricsConfig, supervisor: Supervisor, output: Output | None,
                 requests: Callable[[], dict[tuple[str, str], int]], control_gid: int | None = None) -> None:
        self.config = config
        self._scraper = Scraper(supervisor, output, requests)
        self._control_gid = control_gid
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.address = config.address

    async def start(self) -> str:
        """Listen; return the address (with the port a port 0 got). Raises OSError."""
        cfg = self.config
        if cfg.path is not None:
            _clear_stale_socket(cfg.path)
            self._server = await asyncio.start_unix_server(self._client, cfg.path, limit=MAX_HEAD_BYTES)
            os.chmod(cfg.path, 0o660)
            if self._control_gid is not None:
                os.chown(cfg.path, -1, self._control_gid)
        else:
            assert cfg.host is not None
            self._server = await asyncio.start_server(self._client, cfg.host, cfg.port, limit=MAX_HEAD_BYTES,
                                                      reuse_address=True)
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"[{cfg.host}]:{port}" if ":" in cfg.host else f"{cfg.host}:{port}"
        log.info("metrics_listening", address=self.address, public=cfg.public)
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await self._scraper.close()
        if self.config.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.path)

    # -------------------------------------------------------------------------------- HTTP

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CONNECTIONS:
            writer.close()
            return
        task = asyncio.create_task(self._serve(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, target = _request_line(head)
            path = target.partition("?")[0]
            if method not in ("GET", "HEAD"):
                await _respond(writer, "405 Method Not Allowed", b"only GET\n", method, allow=True)
            elif path == "/metrics":
                t0 = time.monotonic()
                body = await self._scraper.scrape()
                await _respond(writer, "200 OK", body, method, CONTENT_TYPE)
                self._scraper.last_scrape_s = time.monotonic() - t0
            elif path == "/":
                await _respond(writer, "200 OK", b"procguard: the metrics are at /metrics\n", method)
            else:
                await _respond(writer, "404 Not Found", b"not found; the metrics are at /metrics\n", method)
        except ConnectionError:
            pass  # the scraper left
        except Exception:  # task boundary: a failed scrape must not end the daemon
            log.exception("metrics_scrape_failed")
            with contextlib.suppress(Exception):
                await _respond(writer, "500 Internal Server Error", b"internal error (see the daemon log)\n", "GET")
        finally:
            writer.close()


def _request_line(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0], parts[1]


async def _respond(writer: asyncio.StreamWriter, status: str, body: bytes, method: str,
                   content_type: str = "text/plain; charset=utf-8", allow: bool = False) -> None:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            + ("Allow: GET, HEAD\r\n" if allow else "") + "Connection: close\r\n\r\n")
    writer.write(head.encode("latin-1") + (body if method != "HEAD" else b""))
    await writer.drain()


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file no one listens on (a daemon that was killed); refuse one in use or not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path}: another process already serves metrics there")
