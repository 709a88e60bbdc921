"""Server profiles fill in what experts know; lints name the traps (issue #6)."""

import signal
import textwrap
from pathlib import Path

from procguard.config.load import load_config
from procguard.config.model import Ready

HEADER = '[procguard]\nlogdir = "logs"\n\n'


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "procguard.toml"
    cfg.write_text(HEADER + textwrap.dedent(body))
    return load_config(cfg, environ={"PATH": "/usr/bin:/bin"})


def program(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    config = load(tmp_path, "[program.web]\n" + textwrap.dedent(body))
    return config.programs[0], [i.message for i in config.lints]


def test_gunicorn_profile(tmp_path: Path) -> None:
    p, lints = program(tmp_path, 'command = "gunicorn --no-control-socket app:wsgi"\nserver = "gunicorn"\n')
    assert (p.stopsignal, p.stopwaitsecs, p.reload_signal, p.ready) == (signal.SIGTERM, 35.0, signal.SIGHUP, Ready.NOTIFY)
    assert lints == []


def test_gunicorn_graceful_timeout_sets_stopwaitsecs(tmp_path: Path) -> None:
    p, _ = program(tmp_path, 'command = "gunicorn --graceful-timeout=90 app:wsgi"\nserver = "gunicorn"\n')
    assert p.stopwaitsecs == 95.0


GRACEFUL = '"--hook-master-start", "unix_signal:15 gracefully_kill_them_all"'
BRUTAL = "uWSGI stops brutally (requests in flight are cut off on every stop and restart)"


def test_uwsgi_stop_signal_follows_die_on_term_and_the_graceful_hook(tmp_path: Path) -> None:
    p, lints = program(tmp_path, 'command = "uwsgi --master --need-app --socket :3031"\nserver = "uwsgi"\n')
    assert (p.stopsignal, p.stopwaitsecs, p.reload_signal, p.ready) == (signal.SIGQUIT, 65.0, signal.SIGHUP, Ready.NOTIFY)
    assert [m for m in lints if m.startswith(BRUTAL)] == lints and len(lints) == 1
    p, lints = program(tmp_path, 'command = "uwsgi --master --need-app --die-on-term"\nserver = "uwsgi"\n')
    assert p.stopsignal == signal.SIGTERM and len(lints) == 1 and lints[0].startswith(BRUTAL)
    # The hook makes TERM a graceful stop (tests/servers/test_django.py restarts it under load).
    p, lints = program(tmp_path, f'command = ["uwsgi", "--master", "--need-app", {GRACEFUL}]\nserver = "uwsgi"\n')
    assert (p.stopsignal, p.stopwaitsecs) == (signal.SIGTERM, 65.0) and lints == []
    p, lints = program(tmp_path, 'command = ["uwsgi", "--master", "--need-app", '
                                 '"--hook-master-start=unix_signal:15  gracefully_kill_them_all"]\nserver = "uwsgi"\n')
    assert p.stopsignal == signal.SIGTERM and lints == []
    # Its graceful stop waits up to --worker-reload-mercy (60 s by default): a shorter stopwaitsecs is a trap.
    _, lints = program(tmp_path, f'command = ["uwsgi", "--master", "--need-app", {GRACEFUL}]\nserver = "uwsgi"\n'
                                 'stopwaitsecs = 20\n')
    assert lints == ["stopwaitsecs (20s) is shorter than uwsgi's own graceful timeout (60s): requests in flight "
                     "are killed; set stopwaitsecs = 65"]


def test_asgi_profiles(tmp_path: Path) -> None:
    p, _ = program(tmp_path, 'command = "daphne app.asgi:application"\nserver = "daphne"\n')
    assert (p.stopsignal, p.stopwaitsecs, p.reload_signal, p.ready) == (signal.SIGTERM, 15.0, None, Ready.STARTSECS)
    p, _ = program(tmp_path, 'command = "uvicorn app:asgi --workers 4"\nserver = "uvicorn"\n')
    assert (p.stopwaitsecs, p.reload_signal) == (35.0, signal.SIGHUP)
    p, _ = program(tmp_path, 'command = "uvicorn app:asgi"\nserver = "uvicorn"\n')
    assert p.reload_signal is None
    p, _ = program(tmp_path, 'command = "hypercorn app:asgi"\nserver = "hypercorn"\n')
    assert (p.stopsignal, p.stopwaitsecs, p.reload_signal) == (signal.SIGTERM, 10.0, None)


def test_every_default_can_be_overridden(tmp_path: Path) -> None:
    p, _ = program(tmp_path, 'command = "gunicorn app:wsgi"\nserver = "gunicorn"\nstopsignal = "INT"\n'
                             'stopwaitsecs = 60\nreload_signal = "USR1"\nready = "startsecs"\n')
    assert (p.stopsignal, p.stopwaitsecs, p.reload_signal, p.ready) == (signal.SIGINT, 60.0, signal.SIGUSR1, Ready.STARTSECS)


def test_unknown_server_is_refused(tmp_path: Path) -> None:
    from procguard.errors import ConfigError

    try:
        load(tmp_path, '[program.web]\ncommand = "waitress-serve app:wsgi"\nserver = "waitress"\n')
    except ConfigError as exc:
        assert "[program.web] server: expected one of uwsgi, gunicorn, daphne, uvicorn, hypercorn, got 'waitress'" in str(exc)
    else:
        raise AssertionError("accepted")


def test_uwsgi_lints(tmp_path: Path) -> None:
    _, lints = program(tmp_path, 'command = "uwsgi --socket :3031 --daemonize /tmp/u.log"\nstopsignal = "TERM"\n')
    assert any("without --master" in m for m in lints)
    assert any("without --need-app" in m for m in lints)
    assert any("reloads on SIGTERM without --die-on-term" in m and "gracefully_kill_them_all" in m for m in lints)
    assert any("--daemonize" in m for m in lints)
    assert any(m.startswith(BRUTAL) for m in lints)
    _, lints = program(tmp_path, 'command = "uwsgi --master --need-app --die-on-term"\nstopsignal = "QUIT"\n'
                                 'stopwaitsecs = 70\n')
    assert lints[0] == 'uWSGI with --die-on-term treats QUIT as a reload; use stopsignal = "TERM"'
    _, lints = program(tmp_path, f'command = ["uwsgi", "--master", "--need-app", {GRACEFUL}]\nstopsignal = "TERM"\n'
                                 'stopwaitsecs = 70\n')
    assert lints == []  # the fixed config: no lint


def test_gunicorn_lints(tmp_path: Path) -> None:
    _, lints = program(tmp_path, 'command = "gunicorn -D --no-control-socket app:wsgi"\nserver = "gunicorn"\n'
                                 'reload_signal = "USR2"\nstopwaitsecs = 10\n')
    assert any("--daemon forks away" in m for m in lints)
    assert any("USR2 upgrade" in m for m in lints)
    assert any("stopwaitsecs (10s) is shorter than gunicorn's own graceful timeout (30s)" in m for m in lints)
    config = load(tmp_path, '[program.a]\ncommand = "gunicorn a:wsgi"\nserver = "gunicorn"\n'
                            '[program.b]\ncommand = "/srv/venv/bin/gunicorn b:wsgi"\n')
    assert any("programs a, b run gunicorn as the same user" in i.message for i in config.lints)


def test_health_check_host_lint(tmp_path: Path) -> None:
    _, lints = program(tmp_path, 'command = "gunicorn --no-control-socket app:wsgi"\nserver = "gunicorn"\n'
                                 '[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:8000/health/"\n')
    assert any("Host: 127.0.0.1; Django answers 400 unless it is in ALLOWED_HOSTS" in m for m in lints)
    _, lints = program(tmp_path, 'command = "gunicorn --no-control-socket app:wsgi"\nserver = "gunicorn"\n'
                                 '[program.web.healthcheck]\ntype = "http"\nurl = "http://127.0.0.1:8000/health/"\n'
                                 'host = "www.example.com"\n')
    assert lints == []


def test_check_prints_lints_as_warnings_and_accepts(tmp_path: Path) -> None:
    import subprocess
    import sys

    fake = tmp_path / "bin" / "uwsgi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexec sleep 1000\n")
    fake.chmod(0o755)
    cfg = tmp_path / "procguard.toml"
    cfg.write_text(HEADER + f'[program.u]\ncommand = ["{fake}", "--master", "--need-app"]\nstopsignal = "TERM"\n')
    (tmp_path / "logs").mkdir()
    r = subprocess.run([sys.executable, "-m", "procguard", "-c", str(cfg), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warnings (known traps; the config is accepted):" in r.stderr
    assert "[program.u]: uWSGI reloads on SIGTERM without --die-on-term" in r.stderr


def test_drain_timeout_defaults_to_the_servers_grace_where_a_stop_cuts_off_accepted_connections(tmp_path: Path) -> None:
    sock = '[socket.s]\nbind = "tcp://127.0.0.1:8000"\n'
    expected = {"uwsgi --master --need-app --worker-reload-mercy 20": 20.0, "daphne app:asgi": 10.0,
                "uvicorn app:asgi --timeout-graceful-shutdown 7": 7.0, "hypercorn app:asgi": 5.0,
                "gunicorn --no-control-socket app:wsgi": 0.0}  # gunicorn answers what its workers took
    for command, drain in expected.items():
        server = command.split()[0]
        config = load(tmp_path, sock + f'[program.web]\ncommand = "{command}"\nserver = "{server}"\nsockets = ["s"]\n')
        assert config.programs[0].drain_timeout == drain, command
    config = load(tmp_path, sock + '[program.web]\ncommand = "daphne app:asgi"\nserver = "daphne"\nsockets = ["s"]\n'
                                   'drain_timeout = "2s"\n')
    assert config.programs[0].drain_timeout == 2.0


def test_drain_timeout_without_held_sockets_is_refused(tmp_path: Path) -> None:
    from procguard.errors import ConfigError

    try:
        load(tmp_path, '[program.web]\ncommand = "daphne app:asgi"\ndrain_timeout = "5s"\n')
    except ConfigError as exc:
        assert "[program.web] drain_timeout: applies to programs with held sockets" in str(exc)
    else:
        raise AssertionError("accepted")
