"""Alert delivery: a message to a webhook (HTTP POST) or a mailbox (SMTP), on a worker thread.

Never on the event loop: delivery uses the standard library (http.client, smtplib) on one worker
thread per alert, started with its first message; the loop only awaits a future with a deadline. A
receiver that hangs costs that thread and that alert's later messages, never the loop, other alerts
or the stream.

Why the standard library: it does HTTPS with certificate checks, SMTP with STARTTLS, implicit TLS and
AUTH; aiohttp/httpx/aiosmtplib would add dependencies (and import time and RSS on a $5 server) to do
the same on the loop, where a bug would stall everything.
"""

import asyncio
import importlib
import json
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from procguard.config.model import AlertConfig, AlertTrigger, AlertType, SmtpSecurity
from procguard.protocol import VERSION

if TYPE_CHECKING:
    import http.client
    import ssl

MAX_RESPONSE_BYTES = 64 * 1024


class DeliveryError(Exception):
    """A message was not accepted; the text says why (for the log and the alert_failed event)."""


@dataclass(frozen=True, slots=True)
class Notice:
    """One line of a message: an episode began (`recovery` False) or ended, or an exit (exited)."""

    trigger: AlertTrigger
    recovery: bool
    program: str | None
    process: str | None
    summary: str
    event: dict[str, Any]  # the event that caused it, as on the wire

    def to_json(self) -> dict[str, Any]:
        return {"kind": "recovery" if self.recovery else "alert", "trigger": str(self.trigger),
                "program": self.program, "process": self.process, "summary": self.summary, "event": self.event}


@dataclass(slots=True)
class Message:
    """What goes out in one delivery: one or more notices, or a test."""

    notices: list[Notice]
    host: str
    is_test: bool = False
    attempts: int = 0

    @property
    def kind(self) -> str:
        if self.is_test:
            return "test"
        if len(self.notices) > 1:
            return "batch"
        return "recovery" if self.notices[0].recovery else "alert"

    def headline(self) -> str:
        if self.is_test:
            return f"test message from procguard on {self.host}"
        if len(self.notices) == 1:
            return self.notices[0].summary
        alerts = sum(not n.recovery for n in self.notices)
        return f"{len(self.notices)} notices ({alerts} alerts, {len(self.notices) - alerts} recoveries)"

    def text(self) -> str:
        if self.is_test or len(self.notices) == 1:
            return f"[{self.host}] {self.headline()}"
        lines = [f"[{self.host}] {self.headline()}:"]
        lines += [f"• {'RECOVERED ' if n.recovery else ''}{n.summary}" for n in self.notices]
        return "\n".join(lines)


def needs_tls(cfg: AlertConfig) -> bool:
    return (cfg.url or "").startswith("https:") or cfg.security != SmtpSecurity.NONE


def allow_tls() -> None:
    """Let `ssl` be imported again: an alert needs TLS.

    procguard/__main__.py blocks ssl at start-up (5.5 MiB of RSS the daemon does not otherwise need);
    it is loaded only when a TLS alert first delivers. smtplib decides at import whether it has TLS:
    one imported before (by a plain SMTP alert) is imported again.
    """
    if "ssl" in sys.modules and sys.modules["ssl"] is None:
        del sys.modules["ssl"]
        smtplib = sys.modules.get("smtplib")
        if smtplib is not None:
            importlib.reload(smtplib)


def _tls_context(ca_file: str | None) -> "ssl.SSLContext":
    import ssl

    return ssl.create_default_context(cafile=ca_file)


def _connection(url: str, timeout_s: float, ca_file: str | None) -> "http.client.HTTPConnection":
    """A plain or TLS (certificate-checked) connection; imported here, on the worker thread, when first needed."""
    import http.client

    parts = urlsplit(url)
    if parts.scheme != "https":
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)

    class TLSConnection(http.client.HTTPConnection):
        # Not http.client.HTTPSConnection: it exists only if ssl was importable when http.client was
        # first imported, which at daemon start-up it is not (see allow_tls).
        def connect(self) -> None:
            super().connect()
            self.sock = _tls_context(ca_file).wrap_socket(self.sock, server_hostname=self.host)

    return TLSConnection(parts.hostname or "", parts.port or 443, timeout=timeout_s)


def post_webhook(cfg: AlertConfig, msg: Message) -> None:
    """POST the message as JSON (Slack-compatible `text`); blocking, so it runs on the worker thread."""
    import http.client

    assert cfg.url is not None
    url = urlsplit(cfg.url)
    body = json.dumps({"text": msg.text(), "alert": cfg.name, "host": msg.host, "kind": msg.kind,
                       "notices": [n.to_json() for n in msg.notices]}).encode()
    conn = _connection(cfg.url, cfg.timeout, cfg.ca_file)
    try:
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        conn.request("POST", path, body, {"Content-Type": "application/json", "User-Agent": f"procguard/{VERSION}"})
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
        if not 200 <= response.status < 300:
            raise DeliveryError(f"HTTP {response.status} {response.reason}")
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def read_credentials(path: str) -> tuple[str, str]:
    """USER:PASSWORD from the first line of a private file (read at each send: a new password applies)."""
    with open(path, encoding="utf-8") as f:
        user, sep, password = f.readline().rstrip("\r\n").partition(":")
    if not sep or not user:
        raise DeliveryError(f"{path}: expected USER:PASSWORD on its first line")
    return user, password


def send_email(cfg: AlertConfig, msg: Message) -> None:
    """Send the message by SMTP (a local MTA, or a smarthost with STARTTLS/TLS and AUTH); blocking."""
    import smtplib
    from email.message import EmailMessage

    mail = EmailMessage()
    mail["From"] = cfg.sender or f"procguard@{msg.host}"
    mail["To"] = ", ".join(cfg.to)
    mail["Subject"] = f"{cfg.subject_prefix} {msg.host}: {msg.headline()}".strip()
    mail["X-Procguard-Kind"] = msg.kind
    mail.set_content(msg.text() + "\n")
    smtp: smtplib.SMTP
    try:
        if cfg.security == SmtpSecurity.TLS:
            smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout, context=_tls_context(cfg.ca_file))
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout)
        with smtp:
            if cfg.security == SmtpSecurity.STARTTLS:
                smtp.starttls(context=_tls_context(cfg.ca_file))
            if cfg.credentials_file is not None:
                smtp.login(*read_credentials(cfg.credentials_file))
            smtp.send_message(mail)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


DELIVER: dict[AlertType, Callable[[AlertConfig, Message], None]] = {
    AlertType.WEBHOOK: post_webhook, AlertType.EMAIL: send_email,
}


class Worker:
    """One daemon thread running blocking deliveries in order; started with the first, idle on a queue.

    A daemon thread: a receiver hanging at shutdown does not hold the daemon's exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None], asyncio.AbstractEventLoop]] \
            = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], None]) -> "asyncio.Future[None]":
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._jobs.put((job, fut, loop))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"alert-{self._name}", daemon=True)
            self._thread.start()
        return fut

    def _serve(self) -> None:
        while True:
            job, fut, loop = self._jobs.get()
            error: BaseException | None = None
            try:
                job()
            except Exception as exc:  # handed to the awaiting coroutine
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, fut, error)
            except RuntimeError:
                return  # the loop is closed: the daemon is gone


def _settle(fut: "asyncio.Future[None]", error: BaseException | None) -> None:
    if fut.done():
        return  # it timed out on the loop side
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
