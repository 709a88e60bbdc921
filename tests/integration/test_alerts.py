"""Alerts against real receivers on loopback: an HTTP server and an SMTP server (aiosmtpd) (issue #18 item 2)."""

import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.helpers import DaemonRun, probe, prog, wait_until
from tests.integration.test_control_socket import running

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")


class WebhookReceiver:
    """A real HTTP server in a thread, recording JSON POSTs. Its port is bound from the start, but it
    listens only once `up()` is called: until then connections are refused, as by a receiver that is down.
    While `hang` is set, each request is held (no answer) until `release` is set."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.posts: list[dict[str, Any]] = []
        self.held = 0
        self.hang = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.hang.is_set():
                    receiver.held += 1
                    receiver.release.wait(60)
                receiver.posts.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()  # bound, not listening: connections are refused until up()
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hook?token=x"
        self._thread: threading.Thread | None = None

    def up(self) -> None:
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()


class MailReceiver:
    """aiosmtpd on loopback: every message it accepts, parsed."""

    def __init__(self, **smtp: Any) -> None:
        self.mails: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                receiver.mails.append(message_from_bytes(envelope.original_content))
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = aiosmtpd_controller.Controller(Handler(), hostname="127.0.0.1", port=self.port, **smtp)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def mailbox() -> Iterator[MailReceiver]:
    r = MailReceiver()
    yield r
    r.close()


def webhook_alert(name: str, url: str, **keys: object) -> str:
    lines = [f"[alert.{name}]", 'type = "webhook"', f'url = "{url}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n\n"


def email_alert(name: str, port: int, **keys: object) -> str:
    lines = [f"[alert.{name}]", 'type = "email"', f'smtp = "127.0.0.1:{port}"', 'to = ["ops@example.com"]',
             'from = "procguard@example.com"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n\n"


def health_program(d: DaemonRun) -> str:
    """web: healthy while d.work/healthy exists; only reported (on_unhealthy = none), checked every 200 ms."""
    return (prog("web", probe(d.work, "web"))
            + f'[program.web.healthcheck]\ntype = "exec"\ncommand = ["test", "-e", "{d.work / "healthy"}"]\n'
              'interval = "200ms"\nretries = 1\non_unhealthy = "none"\n\n')


def sent(d: DaemonRun, alert: str) -> list[dict[str, Any]]:
    return d.events("alert_sent", alert=alert)


def test_one_message_per_episode_and_one_recovery_by_webhook_and_email(daemon, hook, mailbox):
    hook.up()
    d = daemon()
    (d.work / "healthy").touch()
    d.write_config(health_program(d) + webhook_alert("hook", hook.url, batch_window="200ms")
                   + email_alert("mail", mailbox.port, batch_window="200ms", subject_prefix="[pg]"))
    d.start()
    running(d, "web")
    (d.work / "healthy").unlink()
    wait_until(lambda: len(hook.posts) == 1 and len(mailbox.mails) == 1, 20, "the unhealthy alert")
    # The episode goes on: many more failed checks, no more messages.
    failures = len(d.events("health_check_failed"))
    wait_until(lambda: len(d.events("health_check_failed")) >= failures + 5, 20, "more failed checks")
    (d.work / "healthy").touch()
    wait_until(lambda: len(hook.posts) == 2 and len(mailbox.mails) == 2, 20, "the recovery")
    # A test message goes through each alert's own sender: anything queued before it arrives first.
    assert d.ctl("alert", "test", "hook").returncode == 0
    assert d.ctl("alert", "test", "mail").returncode == 0
    wait_until(lambda: len(hook.posts) == 3 and len(mailbox.mails) == 3, 20, "the test messages")

    alert, recovery, test = hook.posts
    assert alert["kind"] == "alert" and recovery["kind"] == "recovery" and test["kind"] == "test"
    assert alert["alert"] == "hook" and alert["text"].endswith("web is unhealthy: exit status 1")
    [notice] = alert["notices"]
    assert notice["trigger"] == "unhealthy" and notice["process"] == "web"
    assert notice["event"]["event"] == "health_changed" and notice["event"]["fields"]["new"] == "unhealthy"
    assert recovery["notices"][0]["trigger"] == "unhealthy" and "web is healthy again" in recovery["text"]
    subjects = [m["Subject"] for m in mailbox.mails]
    assert subjects[0].startswith("[pg] ") and subjects[0].endswith("web is unhealthy: exit status 1"), subjects
    assert "web is healthy again" in subjects[1] and "test message" in subjects[2], subjects
    assert mailbox.envelopes[0] == ("procguard@example.com", ["ops@example.com"])
    assert mailbox.mails[0]["X-Procguard-Kind"] == "alert" and mailbox.mails[1]["X-Procguard-Kind"] == "recovery"
    # Delivery is itself in the event stream.
    assert [e["kind"] for e in sent(d, "hook")] == ["alert", "recovery", "test"]
    r = d.ctl("events", "--json")
    kinds = [(e["fields"]["alert"], e["fields"]["kind"]) for e in map(json.loads, r.stdout.splitlines())
             if e["event"] == "alert_sent"]
    assert ("hook", "recovery") in kinds and ("mail", "recovery") in kinds, r.stdout


def test_a_burst_is_one_batched_message(daemon, hook, mailbox):
    hook.up()
    d = daemon()
    d.write_config(prog("burst", ["sh", "-c", "exit 1"], numprocs=4, startretries=0, autostart=False)
                   + prog("web", probe(d.work, "web"), startsecs=0)
                   + webhook_alert("webonly", hook.url, batch_window="0s", programs=["web"])  # not burst's
                   + webhook_alert("hook", hook.url, batch_window="3s")
                   + email_alert("mail", mailbox.port, batch_window="3s"))
    d.start()
    assert d.ctl("start", "burst").returncode == 7  # every one failed (supervisorctl: 7, a failed start; #14)
    wait_until(lambda: hook.posts and mailbox.mails, 20, "the batch")
    wait_until(lambda: len(sent(d, "hook")) >= 1 and len(sent(d, "mail")) >= 1, 20, "alert_sent")
    assert d.ctl("alert", "test", "webonly").returncode == 0  # its sender had nothing queued before
    batch, test = hook.posts
    assert test["alert"] == "webonly" and test["kind"] == "test"
    assert batch["alert"] == "hook" and batch["kind"] == "batch" and len(batch["notices"]) == 4, batch
    assert {n["trigger"] for n in batch["notices"]} == {"fatal"}
    assert sorted(n["process"] for n in batch["notices"]) == sorted(n for n in d.status() if n != "web")
    assert batch["text"].splitlines()[0].endswith("4 notices (4 alerts, 0 recoveries):")
    [mail] = mailbox.mails
    assert mail["Subject"].endswith("4 notices (4 alerts, 0 recoveries)")
    assert mail.get_payload().count("is FATAL") == 4


def test_a_receiver_down_at_first_gets_the_message_on_a_retry(daemon, hook):
    d = daemon()
    d.write_config(prog("bad", ["sh", "-c", "exit 1"], startretries=0, autostart=False)
                   + webhook_alert("hook", hook.url, batch_window="0s"))
    d.start()
    d.ctl("start", "bad")
    wait_until(lambda: d.events("alert_retrying", alert="hook"), 20, "a failed first attempt")
    assert "ConnectionRefusedError" in d.events("alert_retrying")[0]["error"]
    hook.up()
    wait_until(lambda: hook.posts, 30, "the message, on a retry")
    [ev] = wait_until(lambda: sent(d, "hook"), 20, "alert_sent")
    assert ev["attempts"] >= 2 and ev["kind"] == "alert"
    [post] = hook.posts
    assert post["notices"][0]["trigger"] == "fatal" and post["notices"][0]["process"] == "bad"


def test_the_daemon_answers_while_a_receiver_hangs(daemon, hook, mailbox):
    hook.hang.set()
    hook.up()
    d = daemon()
    d.write_config(prog("bad", ["sh", "-c", "exit 1"], startretries=0, autostart=False)
                   + prog("web", probe(d.work, "web"), startsecs=0)
                   + webhook_alert("hook", hook.url, batch_window="0s", timeout="30s")
                   + email_alert("mail", mailbox.port, batch_window="0s"))
    d.start()
    running(d, "web")
    d.ctl("start", "bad")
    wait_until(lambda: hook.held, 20, "the webhook request held by the receiver")
    # The other alert is not held up, and the stream and the control socket serve on.
    wait_until(lambda: mailbox.mails, 20, "the email, while the webhook hangs")
    for _ in range(3):
        assert d.status()["web"]["state"] == "RUNNING"
        r = d.ctl("restart", "web")
        assert r.returncode == 0, r.stdout + r.stderr
    r = d.ctl("events", "--json", "web")
    assert sum(1 for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "process_restarting") == 3
    assert hook.held == 1 and not hook.posts
    hook.release.set()
    [ev] = wait_until(lambda: sent(d, "hook"), 20, "the held message delivered, once released")
    assert ev["attempts"] == 1 and len(hook.posts) == 1


def test_alert_test_reports_delivery_and_unknown_names(daemon, hook):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0) + webhook_alert("hook", hook.url, retries=0))
    d.start()
    r = d.ctl("alert", "test", "hook")  # the receiver is down
    assert r.returncode == 1 and "hook: ERROR (ConnectionRefusedError" in r.stdout, r.stdout + r.stderr
    [failed] = d.events("alert_failed", alert="hook")
    assert failed["kind"] == "test" and failed["attempts"] == 1
    hook.up()
    r = d.ctl("alert", "test", "hook")
    assert r.returncode == 0 and r.stdout.strip() == "hook: test message delivered", r.stdout
    assert hook.posts[0]["kind"] == "test" and "test message from procguard" in hook.posts[0]["text"]
    r = d.ctl("alert", "test", "nosuch")
    assert r.returncode == 2 and "no such alert: nosuch (alerts: hook)" in r.stderr, r.stderr


def test_a_crash_loop_is_one_alert_and_ends_after_a_quiet_window(daemon, hook):
    hook.up()
    d = daemon()
    counter = d.work / "runs"
    # Crashes three times 0.2 s after starting, then stays up.
    script = (f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; '
              f'[ "$n" -ge 3 ] && exec sleep 1000; sleep 0.2; exit 1')
    d.write_config(prog("loopy", ["sh", "-c", script], startsecs=0, backoff_initial="100ms")
                   + webhook_alert("hook", hook.url, batch_window="0s", crash_loop_exits=3,
                                   crash_loop_window="3s", events=["crash_loop"]))
    d.start()
    wait_until(lambda: len(hook.posts) == 2, 30, "the crash-loop alert and its recovery")
    alert, recovery = hook.posts
    assert alert["kind"] == "alert" and alert["notices"][0]["trigger"] == "crash_loop"
    assert "loopy is crash-looping: 3 exits in 3s" in alert["text"], alert["text"]
    assert recovery["kind"] == "recovery" and "loopy has run 3s without exiting" in recovery["text"]
    assert d.status()["loopy"]["state"] == "RUNNING"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a test certificate")
def test_https_webhook_and_starttls_email_with_credentials_from_a_file(daemon, tmp_path):
    """TLS the way a smarthost and a hosted webhook need it, in a daemon that starts without ssl loaded."""
    from aiosmtpd.smtp import AuthResult

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cr:et")

    creds = tmp_path / "smtp.cred"
    creds.write_text("alerts@example.com:s3cr:et\n")
    creds.chmod(0o600)
    hook = WebhookReceiver(tls=server_tls)
    mailbox = MailReceiver(tls_context=server_tls, require_starttls=True, authenticator=authenticate,
                           auth_require_tls=True)
    try:
        hook.up()
        d = daemon()
        d.write_config(prog("web", probe(d.work, "web"), startsecs=0)
                       + webhook_alert("hook", hook.url, ca_file=str(cert))
                       + email_alert("mail", mailbox.port, security="starttls", ca_file=str(cert),
                                     credentials_file=str(creds)))
        d.start()
        for name in ("hook", "mail"):
            r = d.ctl("alert", "test", name)
            assert r.returncode == 0, r.stdout + r.stderr + str(d.events("alert_failed"))
        assert hook.posts[0]["kind"] == "test" and hook.url.startswith("https://")
        assert logins == [(b"alerts@example.com", b"s3cr:et")]
        assert mailbox.mails[0]["X-Procguard-Kind"] == "test"
    finally:
        hook.close()
        mailbox.close()


def test_deploy_failed_is_one_alert_until_a_deploy_succeeds(hook):
    """The deploy engine only logs deploy_failed / deploy_succeeded (branch deploy): those logs alone drive
    the episode, through the daemon's own logging, bus and alert manager, to a real HTTP receiver."""
    import asyncio

    from procguard.observe.alerts import AlertManager
    from procguard.config.model import AlertConfig, AlertTrigger, AlertType
    from procguard.observe.events import EventBus
    from procguard.log import configure_logging, get_logger, reset_logging

    hook.up()
    bus = EventBus()
    configure_logging("warning", "json", bus=bus)
    cfg = AlertConfig(name="hook", source="test", type=AlertType.WEBHOOK, url=hook.url, batch_window=0.0,
                      events=(AlertTrigger.DEPLOY_FAILED,))

    async def main() -> None:
        bus.attach(asyncio.get_running_loop())
        alerts = AlertManager((cfg,), bus, host="web1")
        log = get_logger().bind(program="web")
        try:
            log.error("deploy_failed", reason="migrate exited 1")
            await asyncio.to_thread(wait_until, lambda: len(hook.posts) == 1, 20, "the alert")
            log.error("deploy_failed", reason="migrate exited 1 again")  # the same episode: no message
            log.info("deploy_started")
            log.info("deploy_succeeded")
            await asyncio.to_thread(wait_until, lambda: len(hook.posts) == 2, 20, "the recovery")
            log.info("deploy_succeeded")  # no episode open: nothing
            log.error("deploy_failed", reason="health check never passed")  # a new episode
            await asyncio.to_thread(wait_until, lambda: len(hook.posts) == 3, 20, "the next alert")
        finally:
            alerts.close()

    try:
        asyncio.run(main())
    finally:
        reset_logging()
    texts = [p["text"] for p in hook.posts]
    assert texts[0] == "[web1] deploy of web failed: migrate exited 1"
    assert texts[1].startswith("[web1] deploy of web succeeded (deploy_failed for ")
    assert texts[2] == "[web1] deploy of web failed: health check never passed"
    assert [p["kind"] for p in hook.posts] == ["alert", "recovery", "alert"]


def test_dropped_output_alerts_once_per_episode(daemon, hook):
    hook.up()
    d = daemon()
    d.write_config(prog("noisy", ["sh", "-c", "while :; do echo line; sleep 0.02; done"], startsecs=0,
                        stdout_logfile="/dev/full")
                   + webhook_alert("hook", hook.url, batch_window="0s"))
    d.start()
    wait_until(lambda: hook.posts, 20, "the alert")
    wait_until(lambda: d.status()["noisy"]["output_dropped_bytes"] > 500, 20, "more bytes dropped")
    assert d.ctl("alert", "test", "hook").returncode == 0  # behind anything else queued for the receiver
    alert, test = hook.posts
    assert alert["notices"][0]["trigger"] == "output_dropped"
    assert alert["text"].endswith("noisy stdout output is being dropped (write_failed: /dev/full)")
    assert test["kind"] == "test"
