"""`procguardctl import-supervisor`: supervisord configs from tests/supervisord_corpus -> procguard TOML (issue #8).

Each corpus config is converted into tmp_path; the TOML is read back with tomllib and compared value by
value, then loaded with procguard.config.load.load_config to prove procguard accepts it. The report (stderr and
IMPORT-REPORT.txt) is asserted as the lines an operator reads. Nothing here starts a process.
"""

import configparser
import dataclasses
import os
import pwd
import shlex
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from procguard.config.load import load_config
from procguard.config.model import AutoRestart, Config
from procguard.errors import ConfigError
from procguardctl.importer import datatypes, expansions, logfiles, tomlout
from procguardctl.importer.report import Report
from procguardctl.__main__ import main as ctl_main
from tests.supervisord_parser import SupervisordRefused, supervisord_view

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "supervisord_corpus"
SEED_HAND_PORT = Path(__file__).resolve().with_name("seed_supervisor_recipe.toml")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHON": sys.executable}

SEED_ARGV = [
    "/python/beginningdjango/bin/uwsgi", "--socket", "127.0.0.1:27000", "--listen", "128", "--chdir", "/www/STORE/",
    "--pythonpath", "/python/beginningdjango/lib/python3.8/site-packages/:/www/STORE/", "--module",
    "coffeehouse.wsgi", "--processes", "3", "--uid", "www-data", "--gid", "www-data", "--vacuum", "--master",
    "--enable-threads", "--harakiri", "180", "--max-requests", "1000", "--disable-logging", "--single-interpreter",
]


@dataclasses.dataclass
class Imported:
    code: int
    report: str
    out: Path

    @property
    def main(self) -> dict[str, Any]:
        return tomllib.loads((self.out / "procguard.toml").read_text())

    def file(self, name: str) -> dict[str, Any]:
        return tomllib.loads((self.out / "conf.d" / name).read_text())

    def text(self, name: str) -> str:
        return (self.out / "conf.d" / name).read_text()

    @property
    def programs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((self.out / "conf.d").glob("*.toml")):
            out.update(tomllib.loads(path.read_text()).get("program", {}))
        return out

    @property
    def sockets(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((self.out / "conf.d").glob("*.toml")):
            out.update(tomllib.loads(path.read_text()).get("socket", {}))
        return out

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((self.out / "conf.d").glob("*.toml")):
            out.update(tomllib.loads(path.read_text()).get("group", {}))
        return out

    def load(self, environ: dict[str, str] | None = None) -> Config:
        return load_config(self.out / "procguard.toml", environ=ENV if environ is None else environ)

    def section(self, title: str) -> list[str]:
        """The report lines under one heading ("Not carried over", "Errors", ...)."""
        lines = self.report.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith(title)), None)
        if start is None:
            return []
        out = []
        for line in lines[start + 1:]:
            if not line.startswith("  "):
                break
            out.append(line.strip())
        return out


def run_import(conf: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Imported:
    """`procguardctl import-supervisor CONF -o OUT` in-process; the report is what it printed on stderr."""
    code = ctl_main(["import-supervisor", str(conf), "--output-dir", str(out), *extra])
    captured = capsys.readouterr()
    assert captured.out == ""
    return Imported(code, captured.err, out)


def corpus(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Imported:
    return run_import(CORPUS / name / "supervisord.conf", tmp_path / "out", capsys)


# ---------------------------------------------------------------------------------------- the seed recipe


def test_seed_recipe_converts_key_for_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("debian", tmp_path, capsys)
    assert imp.code == 0, imp.report
    prog = imp.file("coffeehouseuwsgi.toml")["program"]["coffeehouseuwsgi"]
    assert isinstance(prog["command"], str)  # kept a string: procguard splits it with shlex, as supervisord
    assert shlex.split(prog["command"]) == SEED_ARGV
    assert {k: prog[k] for k in ("user", "autostart", "autorestart", "stdout_logfile", "redirect_stderr",
                                 "stopsignal", "directory", "umask")} == {
        "user": "www-data", "autostart": True, "autorestart": True,
        "stdout_logfile": "/www/logs/supervisor_coffeehose_uwsgi.log", "redirect_stderr": True,
        "stopsignal": "QUIT", "directory": "/www/", "umask": "022"}
    # supervisord's defaults where procguard's differ, written out so nothing changes underfoot
    assert (prog["startretries"], prog["stopasgroup"], prog["killasgroup"]) == (3, False, False)
    text = imp.text("coffeehouseuwsgi.toml")
    assert "Delete this line for procguard's default" in text
    # the recipe's `#` comment lines survive as comments
    assert '#   DONT USE DAEMONIZE FLAG "--daemonize /www/logs/coffeehouse_uwsgi.log"' in text
    assert set(prog) == {"command", "user", "autostart", "autorestart", "stdout_logfile", "redirect_stderr",
                         "stopsignal", "directory", "umask", "startretries", "stopasgroup", "killasgroup"}


def test_seed_recipe_resolves_like_the_hand_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same argv, user, umask, directory, stop signal and log file as tests/unit/seed_supervisor_recipe.toml."""
    converted = corpus("debian", tmp_path, capsys).load().program("coffeehouseuwsgi")
    hand = load_config(SEED_HAND_PORT, environ=ENV).program("coffeehouseuwsgi")
    assert converted is not None and hand is not None
    (proc,) = converted.processes
    assert proc.command == tuple(SEED_ARGV)
    assert (proc.directory, proc.stdout_logfile) == ("/www/", "/www/logs/supervisor_coffeehose_uwsgi.log")
    assert (converted.user, converted.umask, converted.stopsignal) == ("www-data", 0o022, signal.SIGQUIT)
    # The hand port differs only where the converter keeps supervisord's behaviour (and the log name).
    expected = dataclasses.replace(
        hand, startretries=3, stopasgroup=False, killasgroup=False,
        processes=(dataclasses.replace(hand.processes[0], stdout_logfile=proc.stdout_logfile),))
    assert converted == expected


def test_seed_recipe_passes_procguard_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("debian", tmp_path, capsys)
    r = subprocess.run([sys.executable, "-m", "procguard", "-c", str(imp.out / "procguard.toml"), "--check"],
                       capture_output=True, text=True, env={**os.environ, **ENV}, timeout=60)
    assert "refusing" not in r.stderr, r.stderr
    # This machine has no /python or /www: those are the only problems --check may report.
    problems = r.stderr.split("problems on this machine:")[-1].strip().splitlines() if r.returncode else []
    assert all(("/python/beginningdjango/bin/uwsgi" in p or "/www" in p) for p in problems), r.stderr
    assert "process coffeehouseuwsgi" in r.stdout and "stopsignal = SIGQUIT" in r.stdout


def test_debian_main_file_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("debian", tmp_path, capsys)
    assert imp.main == {"procguard": {"include": ["conf.d/*.toml"], "logdir": "/var/log/supervisor",
                                      "loglevel": "info", "control": "ipc:///run/procguard/procguard.sock"}}
    assert (imp.out / "IMPORT-REPORT.txt").read_text() in imp.report
    dropped = "\n".join(imp.section("Not carried over"))
    for key in ("[supervisord] logfile", "[supervisord] pidfile", "[rpcinterface:supervisor] "
                "supervisor.rpcinterface_factory", "[supervisorctl] serverurl"):
        assert key in dropped
    changed = "\n".join(imp.section("Carried over with a difference"))
    assert "[unix_http_server] file" in changed and "[unix_http_server] chmod = 0700" in changed
    assert str(CORPUS / "debian" / "conf.d" / "coffeehouse.conf") in imp.report  # the include was read
    assert "procguard knows uwsgi" in imp.report


# ------------------------------------------------------------------------------------------- the corpus


def test_channels_daphne_fcgi_program_becomes_a_held_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("channels", tmp_path, capsys)
    assert imp.code == 0, imp.report
    assert imp.sockets == {"asgi": {"bind": "tcp://localhost:8000"}}
    prog = imp.programs["asgi"]
    assert prog["sockets"] == ["asgi"]
    assert prog["command"] == ("daphne -u /run/daphne/daphne{process_num}.sock --fd {socket.asgi.fd} "
                               "--access-log - --proxy-headers mysite.asgi:application")
    assert (prog["process_name"], prog["numprocs"], prog["directory"]) == ("asgi{process_num}", 4, "/my/app/path")
    assert "supervisord passed the socket as fd 0" in imp.text("asgi.toml")
    assert "#   Each process needs to have a separate socket file, so we use process_num" in imp.text("asgi.toml")
    assert "[fcgi-program:asgi] command: supervisord passed the socket as fd 0" in imp.report


def test_channels_fcgi_program_loads_with_the_socket_fd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = corpus("channels", tmp_path, capsys).load().program("asgi")
    assert prog is not None and prog.sockets == ("asgi",)
    assert [p.name for p in prog.processes] == ["asgi:asgi0", "asgi:asgi1", "asgi:asgi2", "asgi:asgi3"]
    assert prog.processes[2].command[:5] == ("daphne", "-u", "/run/daphne/daphne2.sock", "--fd", "3")


def test_fcgi_program_reading_stdin_runs_through_a_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("fcgi_roundtrip", tmp_path, capsys)
    here = CORPUS / "fcgi_roundtrip"
    assert imp.sockets == {"echo": {"bind": f"unix:{here}/echo.sock", "mode": "0700"},  # supervisord's default
                           "stdin": {"bind": f"unix:{here}/stdin.sock", "mode": "0660"}}
    assert shlex.split(imp.programs["stdin"]["command"]) == [
        "/bin/sh", "-c", f"exec {{ENV_PYTHON}} {here}/fcgi_app.py 0<&{{socket.stdin.fd}}"]
    assert ("[fcgi-program:stdin] command: supervisord passed the socket as fd 0" in imp.report
            and "The shell reads each {ENV_X} value as shell words" in imp.report)
    # %(ENV_PYTHON)s: expanded before the split at load, as supervisord did (issue #14)
    assert imp.programs["echo"]["command"] == f"{{ENV_PYTHON:split}} {here}/fcgi_app.py --fd {{socket.echo.fd}}"


def test_numprocs_templates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("numprocs", tmp_path, capsys)
    assert imp.code == 0, imp.report
    prog = imp.programs["celeryworker"]
    assert prog["process_name"] == "{program_name}_{process_num:02d}"
    assert prog["command"] == ("/srv/app/venv/bin/celery -A proj worker --loglevel=INFO "
                               "-n worker{process_num:02d}@%h --pidfile=")  # %% is a literal %
    assert prog["stdout_logfile"] == "/var/log/celery/{program_name}-{process_num:02d}.log"
    assert prog["environment"] == {"WORKER_INDEX": "{process_num}", "C_FORCE_ROOT": "false", "HOME": "{ENV_HOME}"}
    assert (prog["numprocs"], prog["numprocs_start"], prog["exitcodes"]) == (3, 1, [0, 2])
    assert (prog["stdout_logfile_maxbytes"], prog["stdout_logfile_backups"]) == ("10MB", 5)
    assert (prog["stopasgroup"], prog["killasgroup"], prog["startretries"]) == (True, True, 3)
    assert imp.main["procguard"]["loglevel"] == "warning"  # supervisord's "warn"

    loaded = imp.load().program("celeryworker")
    assert loaded is not None
    assert [p.name for p in loaded.processes] == [f"celeryworker:celeryworker_0{n}" for n in (1, 2, 3)]
    second = loaded.processes[1]
    assert "worker02@%h" in second.command
    assert second.stdout_logfile == "/var/log/celery/celeryworker-02.log"
    env = dict(second.environment)
    assert (env["WORKER_INDEX"], env["HOME"]) == ("2", "/root")


def test_groups_are_kept_as_group_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """[group:x] programs=a,b priority=N -> [group.x]; members keep their own tables and priority (issue #14)."""
    imp = corpus("groups", tmp_path, capsys)
    assert imp.code == 0, imp.report
    shop = imp.file("shop.toml")
    assert shop["group"] == {"shop": {"programs": ["shopweb", "shopbeat"], "priority": 100}}
    assert list(shop["program"]) == ["shopweb", "shopbeat"]
    web, beat = shop["program"]["shopweb"], shop["program"]["shopbeat"]
    # supervisord: the group's priority orders the group, each member's its place inside it
    sv = supervisord_view(CORPUS / "groups" / "supervisord.conf")
    priority, members = sv.groups["shop"]
    assert (priority, sorted(members)) == (shop["group"]["shop"]["priority"], sorted(shop["group"]["shop"]["programs"]))
    assert (beat["priority"], "priority" in web) == (sv.processes["shopbeat"].priority, False) == (5, False)
    assert sv.processes["shopweb"].priority == 999
    assert web["command"].endswith("--name shop-{program_name}")  # %(group_name)s is the group
    assert web["stdout_logfile"] == "/var/log/shop/shop-web.log" == sv.processes["shopweb"].stdout_logfile
    assert beat["startretries"] == 10 and "killasgroup" in beat
    text = imp.text("shop.toml")
    assert text.index("[group.shop]") < text.index("[program.shopweb]")
    assert "`procguardctl restart\n# shop:*` restarts them all" in text
    # a comment block right above a header belongs to that section
    beat_table = text.index("[program.shopbeat]")
    assert text.index("#   the celery beat scheduler: one process only") in range(text.index("[program.shopweb]"), beat_table)
    assert text.index("[program:shopbeat]") < text.index("#   the celery beat scheduler")
    assert "group" not in imp.file("standalone.toml")
    assert imp.file("standalone.toml")["program"]["standalone"]["priority"] == 200
    # [supervisord] umask reached every program that had none (its children inherited it)
    assert {p["umask"] for p in imp.programs.values()} == {"002"}
    assert "procguard has no groups" not in imp.report
    assert "[group:shop]: kept as [group.shop] (programs shopweb, shopbeat): processes are named shop:NAME" in (
        "\n".join(imp.section("Notes")))


def test_groups_load_with_supervisorctl_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = corpus("groups", tmp_path, capsys).load()
    names = {proc.name for prog in config.programs for proc in prog.processes}
    assert {"shop:shopweb", "shop:shopbeat", "standalone"} <= names


def test_includes_here_and_log_destinations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("includes", tmp_path, capsys)
    assert imp.code == 0, imp.report
    inc = CORPUS / "includes"
    assert imp.main["procguard"]["logdir"] == f"{inc}/childlogs"
    alpha = imp.programs["alpha"]
    # %(here)s in an included file is that file's directory, as in supervisord
    assert alpha["command"] == f"{inc}/conf.d/bin/alpha --config {inc}/conf.d/alpha.ini"
    assert (alpha["directory"], alpha["stdout_logfile"], alpha["stderr_logfile"]) == (f"{inc}/conf.d", "AUTO", "NONE")
    beta, gamma = imp.programs["beta"], imp.programs["gamma"]  # gamma came from the second, multi-line glob
    assert (beta["stdout_logfile"], beta["stderr_logfile"]) == ("journal", "inherit")
    assert (gamma["stdout_logfile"], gamma["stdout_logfile_maxbytes"], gamma["stopsignal"]) == ("inherit", 0, "INT")
    dropped = "\n".join(imp.section("Not carried over"))
    for key in ("[program:beta] stdout_events_enabled = true", "[program:beta] stdout_capture_maxbytes = 1MB",
                "[program:gamma] serverurl = AUTO"):
        assert key in dropped
    assert "an [include] inside an included file is ignored" in imp.report
    assert [p.name for p in imp.load().programs] == ["alpha", "beta", "gamma"]


def test_environment_quoting_as_supervisord_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = run_import(CORPUS / "environment" / "supervisord.conf", tmp_path / "out", capsys)
    assert imp.code == 0, imp.report
    env = imp.programs["envtest"]["environment"]
    assert env == {
        "LANG": "C.UTF-8",  # the program's own wins over [supervisord] environment
        "LC_ALL": "en_US.UTF-8",  # from [supervisord] environment: procguard has no global one
        "DJANGO_SETTINGS_MODULE": "coffeehouse.settings.production",
        "DATABASE_URL": "postgres://app:pw@db.internal:5432/app?sslmode=require",
        "ALLOWED_HOSTS": "example.com,www.example.com",
        "SINGLE": "single quoted, with a comma",
        "EMPTY": "",
        "SPACES": "two  spaces",
        "PERCENT": "100%",
        "PATH": "/srv/app/venv/bin:{ENV_PATH}",
        "APP_HOME": f"{CORPUS}/environment/app",
    }
    # %(ENV_X)s of the config's own environment= is its value; supervisord expanded before splitting
    assert imp.programs["envref"]["command"] == "/bin/echo hello world en_US.UTF-8"
    envref = imp.load().program("envref")
    assert envref is not None
    assert list(envref.processes[0].command) == supervisord_view(CORPUS / "environment" / "supervisord.conf").argv(
        "envref") == ["/bin/echo", "hello", "world", "en_US.UTF-8"]
    assert "LC_ALL: from [supervisord] environment" in imp.text("envtest.toml")
    loaded = imp.load().program("envtest")
    assert loaded is not None
    assert dict(loaded.processes[0].environment)["PATH"] == "/srv/app/venv/bin:/usr/bin:/bin"


def test_eventlisteners_become_programs_that_do_not_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("eventlisteners", tmp_path, capsys)
    assert imp.code == 0, imp.report
    for name in ("memmon", "crashmail"):
        prog = imp.programs[name]
        assert (prog["autostart"], prog["priority"]) == (False, -1)
        assert "procguard has no events" in imp.text(f"{name}.toml")
    assert imp.programs["memmon"]["command"] == "memmon -p web=200MB -m ops@example.com"
    dropped = "\n".join(imp.section("Not carried over"))
    assert "[eventlistener:memmon] events = TICK_60" in dropped
    assert "[eventlistener:crashmail] buffer_size = 100" in dropped
    assert 'max_memory = "200MB"' in imp.report
    assert {p.name for p in imp.load().programs} == {"web", "memmon", "crashmail"}


def test_http_servers_never_carry_a_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    imp = corpus("http_servers", tmp_path, capsys)
    assert imp.code == 0, imp.report
    assert imp.main["procguard"]["control"] == "ipc:///run/procguard/procguard.sock"
    assert imp.main["procguard"]["control_group"] == "adm"  # chown=root:adm with chmod=0770
    written = "".join(p.read_text() for p in imp.out.rglob("*") if p.is_file()) + imp.report
    for secret in ("correct-horse-battery-staple", "e9d71f5ee7c92d6dc9e92ffdad17b8bd49418f98"):
        assert secret not in written
    main_text = (imp.out / "procguard.toml").read_text()
    assert "procguardctl keygen /etc/procguard/curve server" in main_text  # what replaced inet_http_server
    assert "checks the peer's uid" in main_text  # what replaced the unix socket's password
    dropped = "\n".join(imp.section("Not carried over"))
    for where in ("[unix_http_server] password", "[inet_http_server] password", "[supervisorctl] password",
                  "[inet_http_server] port = 127.0.0.1:9001", "[supervisord] nodaemon = true",
                  "[supervisord] minfds = 4096"):
        assert where in dropped
    assert "ZAP" in dropped and "CURVE" in dropped
    assert imp.load().control_group == "adm"


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir() if (p / "supervisord.conf").exists()))
def test_no_key_is_dropped_silently(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every key of every section is written, or named in the report."""
    imp = corpus(name, tmp_path, capsys)
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    paths = [CORPUS / name / "supervisord.conf", *sorted((CORPUS / name).glob("*/*.conf"))]
    for path in paths:
        parser.read(path)
    programs, sockets = imp.programs, imp.sockets
    mapped = {"supervisord": {"loglevel", "childlogdir"}, "include": {"files"}}
    for section in parser.sections():
        kind, _, pname = section.partition(":")
        table = programs.get(pname, {})
        for key in parser.options(section):
            if kind in ("program", "fcgi-program", "eventlistener") and key in table:
                continue
            if kind == "group" and key in imp.groups.get(pname, {}):
                continue
            if kind == "fcgi-program" and key.startswith("socket") and pname in sockets:
                continue
            if key == "environment" and "environment" in table:
                continue
            if key in mapped.get(kind, set()):
                continue
            if kind == "unix_http_server" and key in ("file", "chmod", "chown"):
                assert f"[{section}] {key}" in imp.report
                continue
            assert f"[{section}] {key}" in imp.report, f"[{section}] {key} was dropped silently"


# ------------------------------------------------------------------------------------------- refusals


def write_conf(tmp_path: Path, text: str, name: str = "supervisord.conf") -> Path:
    path = tmp_path / "sv" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------- silent mis-conversions found on real configs (#14)


@pytest.mark.parametrize("value", ["--workers 4 --bind '127.0.0.1:8000'", "", "-v", '--name="a b" -x'])
def test_env_in_a_command_is_split_as_supervisord_splits_it(value: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Real images put option lists (and whole commands) in variables: expand, then split (issue #14)."""
    conf = write_conf(tmp_path, """\
        [supervisord]
        [program:opts]
        command=/bin/echo %(ENV_OPTS)s --end
        [program:whole]
        command=%(ENV_CMD)s
        """)
    imp = run_import(conf, tmp_path / "out", capsys)
    assert imp.code == 0, imp.report
    assert imp.programs["opts"]["command"] == "/bin/echo {ENV_OPTS:split} --end"
    changed = "\n".join(imp.section("Carried over with a difference"))
    assert ("[program:opts] command: OPTS: read from procguard's own environment when it loads the config" in changed
            and "{ENV_X:split} is expanded before the command is split, as supervisord did" in changed)
    environ = {"OPTS": value, "CMD": f"/bin/echo {value} tail"}
    sv = supervisord_view(conf, environ)
    loaded = imp.load({**ENV, **environ})
    for name in ("opts", "whole"):
        prog = loaded.program(name)
        assert prog is not None
        assert list(prog.processes[0].command) == sv.argv(name)


SV_FROM_ENV = """\
    [supervisord]
    [program:app]
    command=/bin/sleep 100
    process_name=%(program_name)s_%(process_num)02d
    user=%(ENV_APP_USER)s
    numprocs=%(ENV_WORKERS)s
    autostart=%(ENV_AUTOSTART)s
    autorestart=%(ENV_AUTORESTART)s
    priority=%(ENV_PRIORITY)s
    startsecs=%(ENV_STARTSECS)s
    startretries=%(ENV_RETRIES)s
    stopwaitsecs=%(ENV_WAIT)s
    stopsignal=%(ENV_SIGNAL)s
    stopasgroup=%(ENV_GROUPSTOP)s
    exitcodes=%(ENV_CODES)s
    umask=%(ENV_UMASK)s
    """
SV_VALUES = {"APP_USER": "nobody", "WORKERS": "3", "AUTOSTART": "no", "AUTORESTART": "true", "PRIORITY": "42",
             "STARTSECS": "0", "RETRIES": "7", "WAIT": "5", "SIGNAL": "INT", "GROUPSTOP": "on", "CODES": "0,3",
             "UMASK": "027"}


def test_env_in_user_numprocs_autostart_is_read_at_load_and_fails_closed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Never dropped or defaulted: a program meant to run as nobody never runs as root (issue #14)."""
    from supervisor.datatypes import RestartUnconditionally

    # A daemon not run as root can only run programs as itself (as supervisord).
    values = dict(SV_VALUES, APP_USER="nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
    conf = write_conf(tmp_path, SV_FROM_ENV)
    imp = run_import(conf, tmp_path / "out", capsys)  # this process's environment has none of the variables
    assert imp.code == 0, imp.report
    prog = imp.programs["app"]
    for key, var in (("user", "APP_USER"), ("numprocs", "WORKERS"), ("autostart", "AUTOSTART"),
                     ("umask", "UMASK"), ("stopsignal", "SIGNAL"), ("stopasgroup", "GROUPSTOP")):
        assert prog[key] == f"{{ENV_{var}}}"
        assert (f"[program:app] {key}: written as '{{ENV_{var}}}': procguard reads the variable from its own "
                "environment when it loads the config") in "\n".join(imp.section("Carried over with a difference"))
    assert prog["killasgroup"] == "{ENV_GROUPSTOP}"  # supervisord's default: as stopasgroup

    sv = supervisord_view(conf, values)
    loaded = imp.load({**ENV, **values}).program("app")
    assert loaded is not None
    assert [p.name for p in loaded.processes] == [f"app:{n}" for n in sorted(sv.processes)] == [
        "app:app_00", "app:app_01", "app:app_02"]
    one = sv.processes["app_01"]
    uid = pwd.getpwnam(values["APP_USER"]).pw_uid
    assert (loaded.uid, loaded.autostart, loaded.priority) == (one.uid, one.autostart, one.priority) == (uid, False, 42)
    assert (loaded.autorestart == AutoRestart.ALWAYS) and one.autorestart is RestartUnconditionally
    assert (loaded.startsecs, loaded.startretries, loaded.stopwaitsecs) == (one.startsecs, one.startretries,
                                                                           one.stopwaitsecs) == (0, 7, 5)
    assert (loaded.stopsignal, loaded.umask, list(loaded.exitcodes)) == (one.stopsignal, one.umask, one.exitcodes)
    assert (loaded.stopasgroup, loaded.killasgroup) == (one.stopasgroup, one.killasgroup) == (True, True)

    # Without the variable both refuse: supervisord at its start, procguard at load (file, program, key named).
    missing = {k: v for k, v in values.items() if k != "APP_USER"}
    with pytest.raises(SupervisordRefused, match="'%\\(ENV_APP_USER\\)s' for 'program:app.user' contains names"):
        supervisord_view(conf, missing)
    with pytest.raises(ConfigError) as info:
        imp.load({**ENV, **missing})
    conf_d = imp.out / "conf.d" / "app.toml"
    assert str(info.value).splitlines() == [
        f"{conf_d}: [program.app] user: {{ENV_APP_USER}}: the daemon's environment has no APP_USER"]


def test_numprocs_from_the_environment_keeps_supervisords_process_name_rule(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, "[supervisord]\n[program:one]\ncommand=/bin/sleep 100\nnumprocs=%(ENV_N)s\n")
    imp = run_import(conf, tmp_path / "out", capsys)
    assert imp.code == 0, imp.report
    assert (imp.programs["one"]["numprocs"], imp.programs["one"]["process_name"]) == ("{ENV_N}", "{program_name}")
    loaded = imp.load({**ENV, "N": "1"}).program("one")
    assert loaded is not None and [p.name for p in loaded.processes] == list(supervisord_view(conf, {"N": "1"}).processes)
    with pytest.raises(SupervisordRefused, match="must be present within process_name when numprocs > 1"):
        supervisord_view(conf, {"N": "2"})
    with pytest.raises(ConfigError, match="with numprocs = 2 it must contain {process_num}"):
        imp.load({**ENV, "N": "2"})


def test_log_paths_naming_supervisords_own_descriptors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/fd/1, /proc/self/fd/2, stderr_logfile=/dev/stdout: supervisord's own stdout/stderr (issue #14).

    Kept as paths they fail under systemd, where stdout is the journal's socket: every byte would be lost.
    """
    conf = write_conf(tmp_path, """\
        [supervisord]
        [program:fd]
        command=/bin/true
        stdout_logfile=/dev/fd/1
        stderr_logfile=/dev/fd/2
        [program:proc]
        command=/bin/true
        stdout_logfile=/proc/self/fd/1
        stderr_logfile=/proc/self/fd/2
        [program:cross]
        command=/bin/true
        stdout_logfile=/dev/stdout
        stderr_logfile=/dev/stdout
        [program:other]
        command=/bin/true
        stdout_logfile=/dev/fd/97
        [program:pidone]
        command=/bin/true
        stdout_logfile=/proc/1/fd/1
        """)
    imp = run_import(conf, tmp_path / "out", capsys)
    sv = supervisord_view(conf)
    progs = imp.programs
    for name in ("fd", "proc", "cross"):
        for stream in ("stdout", "stderr"):
            # supervisord opened /dev/fd/N in its own process: its own descriptor N; procguard's is "inherit"
            assert progs[name][f"{stream}_logfile"] == "inherit"
            assert logfiles.own_fd(getattr(sv.processes[name], f"{stream}_logfile")) in (1, 2)
    changed = "\n".join(imp.section("Carried over with a difference"))
    assert "[program:cross] stderr_logfile: /dev/stdout is supervisord's stdout; \"inherit\" is procguard's stderr" in changed
    assert "[program:pidone] stdout_logfile: /proc/1/fd/1: a descriptor of that pid" in changed
    assert imp.code == 1
    assert ("[program:other] stdout_logfile: /dev/fd/97 is supervisord's own descriptor 97; procguard has nothing "
            "meaningful there") in "\n".join(imp.section("Errors"))
    with pytest.raises(ConfigError, match=r"\[program.other\] stdout_logfile: /dev/fd/97 is the daemon's own descriptor"):
        imp.load()  # (nothing is open on fd 97 here)


def test_relative_paths_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Their meaning changes with the working directory (/ under systemd): the report says so (issue #14)."""
    conf = write_conf(tmp_path, """\
        [supervisord]
        [program:rel]
        command=venv/bin/gunicorn app:wsgi
        directory=srv/app
        stdout_logfile=logs/rel.log
        stderr_logfile=/var/log/rel.err
        [program:abs]
        command=/bin/true ./relative/arg
        stdout_logfile=AUTO
        """)
    imp = run_import(conf, tmp_path / "out", capsys)
    changed = "\n".join(imp.section("Carried over with a difference"))
    assert "[program:rel] command: 'venv/bin/gunicorn' is relative" in changed
    assert "[program:rel] directory: 'srv/app' is relative" in changed
    assert "[program:rel] stdout_logfile: 'logs/rel.log' is relative" in changed
    assert "stderr_logfile" not in changed and "[program:abs]" not in changed


def test_an_fcgi_program_whose_socket_cannot_be_converted_is_refused_at_load(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Fail closed: never a program that runs without the socket supervisord gave it on fd 0."""
    conf = write_conf(tmp_path, "[supervisord]\n[fcgi-program:app]\ncommand=/bin/cat\nsocket=%(ENV_NO_SUCH_SOCKET_PG)s\n")
    imp = run_import(conf, tmp_path / "out", capsys)
    assert imp.code == 1
    assert "[fcgi-program:app] socket: %(ENV_NO_SUCH_SOCKET_PG)s: this machine's environment has no" in imp.report
    assert imp.programs["app"]["sockets"] == ["app"] and imp.sockets == {}
    with pytest.raises(ConfigError, match=r"\[program.app\] sockets: no \[socket.app\] table"):
        imp.load()


def test_what_supervisord_refuses_is_reported_as_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, """\
        [supervisord]
        [program:date]
        command=date +%Y-%m-%d
        [program:many]
        command=/bin/sleep 10
        numprocs=2
        [program:groups]
        command=/bin/sleep 10
        stopasgroup=true
        killasgroup=false
        [program:odd]
        command=/bin/echo %(nosuchname)s
        autostart=perhaps
        stopsignal=NOPE
        """)
    imp = run_import(conf, tmp_path / "out", capsys)
    assert imp.code == 1
    errors = "\n".join(imp.section("Errors"))
    assert "[program:date] command: '+%Y-%m-%d'" in errors or "[program:date] command: 'date +%Y-%m-%d'" in errors
    assert "a lone '%'" in errors
    assert "[program:many] process_name: numprocs > 1 needs %(process_num)" in errors
    assert "[program:groups] killasgroup: stopasgroup=true with killasgroup=false" in errors
    assert "[program:odd] command: %(nosuchname)s: supervisord has no such expansion" in errors
    assert "[program:odd] autostart: not a valid boolean value: 'perhaps'" in errors
    assert "[program:odd] stopsignal: not a valid signal name: 'NOPE'" in errors
    # The rest of each program is still written for review.
    assert imp.programs["many"]["numprocs"] == 2


def test_invalid_ini_is_refused_with_the_file_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, "command=/bin/true\n")
    code = ctl_main(["import-supervisor", str(conf), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and str(conf) in err and "supervisord could not parse this either" in err
    assert not (tmp_path / "out").exists()
    assert ctl_main(["import-supervisor", str(tmp_path / "missing.conf"), "-o", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_an_earlier_import_is_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = CORPUS / "debian" / "supervisord.conf"
    assert run_import(conf, tmp_path / "out", capsys).code == 0
    again = run_import(conf, tmp_path / "out", capsys)
    assert again.code == 2 and "--force" in again.report
    assert run_import(conf, tmp_path / "out", capsys, "--force").code == 0


def test_output_keeps_a_private_source_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, "[supervisord]\n[program:web]\ncommand=/bin/sleep 1\nenvironment=TOKEN=\"x\"\n")
    conf.chmod(0o600)
    imp = run_import(conf, tmp_path / "out", capsys)
    assert (imp.out / "conf.d" / "web.toml").stat().st_mode & 0o777 == 0o600
    assert (imp.out / "procguard.toml").stat().st_mode & 0o777 == 0o600


def test_names_procguard_cannot_take_are_renamed_and_reported(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_conf(tmp_path, """\
        [supervisord]
        [program:api@v2]
        command=/bin/echo %(program_name)s %(host_node_name)s
        """)
    imp = run_import(conf, tmp_path / "out", capsys)
    prog = imp.programs["api_v2"]
    assert shlex.split(prog["command"])[1] == "api@v2"  # supervisord's name, not a template of the new one
    assert "the program is named 'api_v2' in procguard" in imp.report
    assert "%(host_node_name)s has no procguard equivalent" in imp.report


# ----------------------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("text, expected", [
    ('A="1",B="2"', {"A": "1", "B": "2"}),
    ('A="x,y",B=z', {"A": "x,y", "B": "z"}),
    ("A='it has spaces'", {"A": "it has spaces"}),
    ('A=""', {"A": ""}),
    ("URL=http://host:8000/path,N=-1", {"URL": "http://host:8000/path", "N": "-1"}),
    ('\nA="1",\nB="2"', {"A": "1", "B": "2"}),
])
def test_environment_lexer_matches_supervisord(text: str, expected: dict[str, str]) -> None:
    assert datatypes.sv_environment(text) == expected


def test_environment_lexer_refuses_what_supervisord_refuses() -> None:
    with pytest.raises(ValueError, match="unexpected end of key/value pairs"):
        datatypes.sv_environment("A=1,B")


@pytest.mark.parametrize("value", [
    "plain", 'say "hi"', "it's", "back\\slash", "both ' and \"", "new\nline", "tab\tand\x01control\x7f", "ünïcode",
    "{ENV_HOME}/x",
])
def test_toml_strings_read_back_unchanged(value: str) -> None:
    assert tomllib.loads(f"v = {tomlout.toml_str(value)}")["v"] == value


@pytest.mark.parametrize("spec, expected", [
    ("%(process_num)02d", "{process_num:02d}"), ("%(process_num)d", "{process_num}"),
    ("%(process_num)s", "{process_num}"), ("%(process_num)3d", "{process_num:3d}"),
    ("%(process_num)-3d", "{process_num:<3d}"),
])
def test_process_num_formats(spec: str, expected: str) -> None:
    exp = expansions.Expander(here="/h", where="w", report=Report(), program_name="p", per_process=True)
    assert exp.template(spec, "process_name") == expected


def test_importer_writes_the_keys_and_flags_the_templates_config_reads() -> None:
    """One vocabulary (procguard.config.keys, issue #15): every supervisord key the importer carries over is a
    procguard key, and every brace config would expand is flagged in text the importer writes literally."""
    from procguard.config import keys
    from procguardctl.importer.programs import DEFERRABLE_KEYS

    assert keys.SUPERVISOR_PROGRAM_KEYS <= keys.PROGRAM_KEYS
    assert DEFERRABLE_KEYS == keys.SUPERVISOR_PROGRAM_KEYS - keys.PER_PROCESS_KEYS - {"environment"}
    expanded_by_config = ["{here}", "{program_name}", "{group_name}", "{process_num:02d}", "{ENV_X}",
                          "{ENV_X:split}", "{socket.web.fd}"]
    for text in expanded_by_config:
        assert keys.TEMPLATE_RE.search(text) or keys.ENV_RE.search(text), text
        assert keys.TEMPLATE_ANY_SPEC_RE.search(text), text
    # The importer flags more than config expands: {here:x} is left as written by config, still refused here.
    assert keys.TEMPLATE_ANY_SPEC_RE.search("{here:x}") and not keys.TEMPLATE_RE.search("{here:x}")
    exp = expansions.Expander(here="/h", where="w", report=Report(), program_name="p", per_process=True)
    exp.literal("echo {here:x} {process_num}", "user")
    assert [f.message for f in exp.report.findings if f.level == "error"] == [
        "'echo {here:x} {process_num}' contains a procguard template ({...}) that procguard would expand; "
        "rewrite it by hand"]


# --------------------------------------------------------------------------------- supervisorctl spellings


def test_a_command_word_with_spaces_is_split_as_supervisorctl_joins_its_arguments() -> None:
    # Ansible's supervisorctl module sends `signal HUP` as one argument (issue #14).
    from procguardctl.cli import split_command

    assert split_command(["-c", "my conf.toml", "signal HUP", "web"]) == ["-c", "my conf.toml", "signal", "HUP", "web"]
    assert split_command(["--json", "status"]) == ["--json", "status"]


def test_maintail_refuses_a_bad_argument_as_supervisorctl(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl_main(["maintail", "100"]) == 1
    assert capsys.readouterr().out == "Error: bad argument 100\n"
