"""Server profiles fill in a health check on the held socket (issue #14, item 2; asked for in #6)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from procguard.config.load import load_config
from procguard.config.model import ANY_BELOW_500, Ready
from procguard.errors import ConfigError
from tests.helpers import REPO

HEADER = '[procguard]\nlogdir = "logs"\n\n'
TCP = '[socket.web]\nbind = "tcp://127.0.0.1:8000"\n\n'


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "procguard.toml"
    cfg.write_text(HEADER + textwrap.dedent(body))
    return load_config(cfg, environ={"PATH": "/usr/bin:/bin"})


def web(tmp_path: Path, body: str, sockets: str = TCP):  # type: ignore[no-untyped-def]
    return load(tmp_path, sockets + "[program.web]\n" + textwrap.dedent(body)).programs[0]


@pytest.mark.parametrize("server,command", [
    ("gunicorn", '["gunicorn", "--bind", "fd://{socket.web.fd}", "app:wsgi"]'),
    ("uvicorn", '["uvicorn", "--fd", "{socket.web.fd}", "app:asgi"]'),
    ("daphne", '["daphne", "--fd", "{socket.web.fd}", "app.asgi:application"]'),
    ("hypercorn", '["hypercorn", "--bind", "fd://{socket.web.fd}", "app:asgi"]'),
    ("uwsgi", '["uwsgi", "--master", "--http-socket", "fd://{socket.web.fd}", "--module", "app"]'),
])
def test_each_profile_checks_http_on_its_held_socket(tmp_path: Path, server: str, command: str) -> None:
    p = web(tmp_path, f'command = {command}\nserver = "{server}"\nsockets = ["web"]\n')
    hc = p.healthcheck
    assert hc is not None and hc.is_default
    assert (hc.type, hc.url, hc.method, hc.host, hc.expect_status) == (
        "http", "http://127.0.0.1:8000/", "GET", "localhost", ANY_BELOW_500)
    assert 499 in hc.expect_status and 500 not in hc.expect_status and 404 in hc.expect_status
    # interval, timeout, retries and on_unhealthy are a written check's defaults
    assert (hc.interval, hc.timeout, hc.retries, hc.on_unhealthy) == (10.0, 5.0, 3, "restart")
    # gunicorn and uWSGI say READY=1 themselves; the ASGI servers are ready once the check passes
    assert p.ready == (Ready.NOTIFY if server in ("gunicorn", "uwsgi") else Ready.HEALTHCHECK)


def test_uwsgi_protocol_socket_gets_the_uwsgi_check(tmp_path: Path) -> None:
    for flag in ('"--socket", "fd://{socket.web.fd}"', '"--uwsgi-socket=fd://{socket.web.fd}"', '"--master"'):
        p = web(tmp_path, f'command = ["uwsgi", {flag}, "--module", "app"]\nserver = "uwsgi"\nsockets = ["web"]\n')
        hc = p.healthcheck
        assert hc is not None and (hc.type, hc.address, hc.path, hc.host) == ("uwsgi", "127.0.0.1:8000", "/", "localhost"), flag
    # LISTEN_FDS with --protocol=http: HTTP
    p = web(tmp_path, 'command = ["uwsgi", "--protocol=http", "--module", "app"]\nserver = "uwsgi"\nsockets = ["web"]\n')
    assert p.healthcheck is not None and p.healthcheck.type == "http"


def test_uwsgi_checks_the_first_socket_it_can_speak_to(tmp_path: Path) -> None:
    socks = ('[socket.fcgi]\nbind = "tcp://127.0.0.1:9000"\n\n[socket.up]\nbind = "tcp://0.0.0.0:8011"\n\n'
             '[socket.http]\nbind = "tcp://127.0.0.1:8001"\n\n')
    p = web(tmp_path, 'command = ["uwsgi", "--fastcgi-socket", "fd://{socket.fcgi.fd}", "--socket", "fd://{socket.up.fd}", '
                      '"--http-socket", "fd://{socket.http.fd}"]\nserver = "uwsgi"\nsockets = ["fcgi", "up", "http"]\n',
            socks)
    hc = p.healthcheck
    assert hc is not None and (hc.type, hc.address) == ("uwsgi", "127.0.0.1:8011")  # wildcard bind: loopback
    # only FastCGI: nothing a default check can speak
    p = web(tmp_path, 'command = ["uwsgi", "--fastcgi-socket", "fd://{socket.fcgi.fd}"]\nserver = "uwsgi"\n'
                      'sockets = ["fcgi"]\n', socks)
    assert p.healthcheck is None and p.ready == Ready.NOTIFY


def test_unix_and_ipv6_held_sockets(tmp_path: Path) -> None:
    unix = '[socket.web]\nbind = "unix:/run/app/web.sock"\n\n'
    p = web(tmp_path, 'command = "gunicorn app:wsgi"\nserver = "gunicorn"\nsockets = ["web"]\n', unix)
    hc = p.healthcheck
    assert hc is not None and (hc.type, hc.unix_socket, hc.url, hc.path, hc.host) == (
        "http", "/run/app/web.sock", None, "/", "localhost")
    p = web(tmp_path, 'command = ["uwsgi", "--socket", "fd://3"]\nserver = "uwsgi"\nsockets = ["web"]\n', unix)
    assert p.healthcheck is not None and (p.healthcheck.type, p.healthcheck.address) == ("uwsgi", "/run/app/web.sock")
    v6 = '[socket.web]\nbind = "tcp://[::]:8000"\n\n'
    p = web(tmp_path, 'command = "uvicorn app:asgi"\nserver = "uvicorn"\nsockets = ["web"]\n', v6)
    assert p.healthcheck is not None and p.healthcheck.url == "http://[::1]:8000/"


def test_a_written_check_wins_and_false_turns_the_default_off(tmp_path: Path) -> None:
    p = web(tmp_path, 'command = "gunicorn app:wsgi"\nserver = "gunicorn"\nsockets = ["web"]\n'
                      '[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:8000/health/"\n')
    hc = p.healthcheck
    assert hc is not None and not hc.is_default and (hc.url, hc.expect_status) == ("http://127.0.0.1:8000/health/", (200,))
    assert p.ready == Ready.HEALTHCHECK  # as before: a written check decides readiness
    p = web(tmp_path, 'command = "uvicorn app:asgi"\nserver = "uvicorn"\nsockets = ["web"]\nhealthcheck = false\n')
    assert p.healthcheck is None and p.ready == Ready.STARTSECS
    with pytest.raises(ConfigError) as err:
        web(tmp_path, 'command = "uvicorn app:asgi"\nserver = "uvicorn"\nsockets = ["web"]\nhealthcheck = "no"\n')
    assert "[program.web] healthcheck: expected a table [program.NAME.healthcheck], or false" in str(err.value)
    with pytest.raises(ConfigError) as err:
        web(tmp_path, 'command = "uvicorn app:asgi"\nserver = "uvicorn"\nsockets = ["web"]\nhealthcheck = false\n'
                      'ready = "healthcheck"\n')
    assert "(and healthcheck = false)" in str(err.value)


def test_no_default_without_a_server_or_a_held_socket(tmp_path: Path) -> None:
    p = web(tmp_path, 'command = "gunicorn --bind 127.0.0.1:8000 app:wsgi"\nserver = "gunicorn"\n')
    assert p.healthcheck is None and p.ready == Ready.NOTIFY
    p = web(tmp_path, 'command = "myserver"\nsockets = ["web"]\n')
    assert p.healthcheck is None and p.ready == Ready.STARTSECS


def test_a_socket_defined_in_an_included_file_is_found(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "sockets.toml").write_text(TCP)
    config = load(tmp_path, 'include = ["conf.d/*.toml"]\n\n[program.web]\ncommand = "gunicorn app:wsgi"\nserver = "gunicorn"\n'
                            'sockets = ["web"]\n')
    hc = config.programs[0].healthcheck
    assert hc is not None and hc.url == "http://127.0.0.1:8000/"


def test_check_describes_the_default_and_its_switch(tmp_path: Path) -> None:
    cfg = tmp_path / "procguard.toml"
    cfg.write_text(HEADER + TCP + '[socket.api]\nbind = "tcp://127.0.0.1:8002"\n\n'
                   '[program.web]\ncommand = ["sleep", "1"]\nserver = "gunicorn"\nsockets = ["web"]\n\n'
                   '[program.api]\ncommand = ["sleep", "1"]\nserver = "uvicorn"\nsockets = ["api"]\nhealthcheck = false\n')
    r = subprocess.run([sys.executable, "-m", "procguard", "-c", str(cfg), "--check"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    web_part = r.stdout.split("[program.web]")[1]
    api_part = r.stdout.split("[program.api]")[1].split("[program.")[0]
    assert ("healthcheck = http http://127.0.0.1:8000/, Host localhost, expect 100-499, every 10s, unhealthy after 3: "
            "restart  (the default of server = gunicorn; write [program.web.healthcheck] to change it, "
            "healthcheck = false to turn it off)") in web_part
    assert "healthcheck = none (healthcheck = false turns off the default of server = uvicorn)" in api_part
