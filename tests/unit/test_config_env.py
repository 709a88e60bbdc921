"""{ENV_X} in every string-valued program key, {ENV_X:split} in a command, and log paths naming the daemon's
own descriptors (issue #14 item 4).

supervisord expands %(ENV_X)s in user, numprocs, autostart, ... from its own environment when it starts, and
expands a command before splitting it; procguard does the same at load, and refuses (file, program, key)
when the variable is not set: a program meant to run as an unprivileged user never runs as root because
a variable was missing.
"""

import os
import pwd
import shlex
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from procguard.config.load import load_config
from procguard.config.model import AutoRestart, ProgramConfig, RestartStrategy
from procguard.errors import ConfigError

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
HEADER = '[procguard]\nlogdir = "logs"\ncontrol = "ipc://{tmp}/control.sock"\n\n[program.web]\n'


def config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "procguard.toml"
    path.write_text(HEADER.format(tmp=tmp_path) + textwrap.dedent(body))
    return path


def load_web(tmp_path: Path, body: str, environ: dict[str, str]) -> ProgramConfig:
    prog = load_config(config_file(tmp_path, body), environ={**ENV, **environ}).program("web")
    assert prog is not None
    return prog


def refusal(tmp_path: Path, body: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, body), environ={**ENV, **environ})
    return str(info.value).splitlines()


# What an imported supervisord program looks like when its values came from %(ENV_X)s.
FROM_ENV = """\
    command = "/bin/sleep 100"
    process_name = "{program_name}_{process_num:02d}"
    user = "{ENV_APP_USER}"
    numprocs = "{ENV_N}"
    autostart = "{ENV_AUTOSTART}"
    autorestart = "{ENV_AUTORESTART}"
    priority = "{ENV_PRIO}"
    startsecs = "{ENV_STARTSECS}"
    stopwaitsecs = "{ENV_WAIT}s"
    stopsignal = "{ENV_SIG}"
    umask = "{ENV_UMASK}"
    exitcodes = "{ENV_CODES}"
    stopasgroup = "{ENV_GROUPSTOP}"
    killasgroup = "{ENV_GROUPSTOP}"
    """
VALUES = {"APP_USER": "nobody", "N": "3", "AUTOSTART": "no", "AUTORESTART": "unexpected", "PRIO": "-5",
          "STARTSECS": "0", "WAIT": "7", "SIG": "15", "UMASK": "027", "CODES": "0,2", "GROUPSTOP": "yes"}


def test_env_templates_in_program_keys_are_read_as_supervisord_reads_them(tmp_path: Path) -> None:
    user = "nobody" if os.geteuid() == 0 else pwd_name()  # a daemon not run as root can only be itself
    prog = load_web(tmp_path, FROM_ENV, dict(VALUES, APP_USER=user))
    assert (prog.user, prog.uid) == (user, pwd.getpwnam(user).pw_uid)
    assert [p.name for p in prog.processes] == ["web:web_00", "web:web_01", "web:web_02"]
    assert (prog.autostart, prog.autorestart, prog.priority) == (False, AutoRestart.UNEXPECTED, -5)
    assert (prog.startsecs, prog.stopwaitsecs, prog.stopsignal, prog.umask) == (0.0, 7.0, 15, 0o27)
    assert (prog.exitcodes, prog.stopasgroup, prog.killasgroup) == ((0, 2), True, True)


@pytest.mark.parametrize("key", ["user", "numprocs", "autostart", "autorestart", "priority", "startsecs",
                                 "stopwaitsecs", "stopsignal", "umask", "exitcodes", "stopasgroup", "killasgroup"])
def test_an_unset_variable_refuses_the_config_naming_file_program_and_key(tmp_path: Path, key: str) -> None:
    values = dict(VALUES, APP_USER=pwd_name())
    var = next(line.split("{ENV_")[1].split("}")[0] for line in FROM_ENV.splitlines() if line.strip().startswith(key + " "))
    del values[var]
    lines = refusal(tmp_path, FROM_ENV, values)
    path = tmp_path / "procguard.toml"
    expected = f"{path}: [program.web] {key}: {{ENV_{var}}}: the daemon's environment has no {var}"
    assert expected in lines, lines


def test_env_templates_in_procguards_own_replace_keys_are_expanded_too(tmp_path: Path) -> None:
    body = """\
    command = "/bin/sleep 100"
    numprocs = 3
    sockets = ["http"]
    restart_strategy = "{ENV_STRATEGY}"
    roll_batch = "{ENV_BATCH}"
    """
    sockets = "[socket.http]\nbind = \"tcp://127.0.0.1:18000\"\n"
    path = tmp_path / "procguard.toml"
    path.write_text(HEADER.format(tmp=tmp_path).replace("[program.web]", sockets + "\n[program.web]")
                    + textwrap.dedent(body))
    prog = load_config(path, environ={**ENV, "STRATEGY": "recreate", "BATCH": "2"}).program("web")
    assert prog is not None
    assert (prog.restart_strategy, prog.roll_batch) == (RestartStrategy.RECREATE, 2)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={**ENV, "BATCH": "2"})
    assert (f"{path}: [program.web] restart_strategy: {{ENV_STRATEGY}}: the daemon's environment has no STRATEGY"
            in str(info.value).splitlines())


def pwd_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.parametrize("key, value, message", [
    ("numprocs", "0", "numprocs: {ENV_X}: expected an integer >= 1, got 0"),
    ("numprocs", "two", "numprocs: {ENV_X}: expected an integer, got 'two'"),
    ("autostart", "maybe", "autostart: {ENV_X}: expected true or false, got 'maybe'"),
    ("umask", "9", "umask: {ENV_X}: expected an octal umask like \"022\", got '9'"),  # never 9 read as decimal
    ("user", "no-such-user-pg", "user: no such user 'no-such-user-pg' on this machine"),
])
def test_a_bad_value_from_the_environment_is_refused(tmp_path: Path, key: str, value: str, message: str) -> None:
    lines = refusal(tmp_path, f'command = "/bin/true"\n{key} = "{{ENV_X}}"\n', {"X": value})
    assert lines == [f"{tmp_path / 'procguard.toml'}: [program.web] {message}"]


@pytest.mark.parametrize("value", ["--workers 4 --bind '127.0.0.1:80'", "", "  -v  ", "--name='a b' -x"])
def test_env_split_in_a_command_is_expanded_before_the_split_as_supervisord(tmp_path: Path, value: str) -> None:
    prog = load_web(tmp_path, 'command = "/bin/app {ENV_OPTS:split} --port {ENV_PORT} --n {process_num}"\n',
                    {"OPTS": value, "PORT": "80 81"})
    supervisord = shlex.split(f"/bin/app {value} --port PORT --n 0")  # supervisord: expand, then shlex.split
    # {ENV_X} without :split keeps its meaning: expanded inside its argument after the split.
    assert list(prog.processes[0].command) == [a.replace("PORT", "80 81") for a in supervisord]


def test_a_whole_command_from_the_environment(tmp_path: Path) -> None:
    prog = load_web(tmp_path, 'command = "{ENV_CMD:split}"\n', {"CMD": "/usr/bin/env -i FOO=1 /bin/true"})
    assert prog.processes[0].command == ("/usr/bin/env", "-i", "FOO=1", "/bin/true")
    lines = refusal(tmp_path, 'command = "{ENV_CMD:split}"\n', {"CMD": ""})
    assert lines == [f"{tmp_path / 'procguard.toml'}: [program.web] command: expected a non-empty command"]


def test_env_split_is_refused_outside_a_command(tmp_path: Path) -> None:
    lines = refusal(tmp_path, 'command = "/bin/true"\ndirectory = "/srv/{ENV_X:split}"\n', {"X": "a"})
    assert lines == [f"{tmp_path / 'procguard.toml'}: [program.web] directory: {{ENV_X:split}} is for a "
                         "command string only"]


# ------------------------------------------------------------------------------- the daemon's own fds


def check(config: Path, stdout: int, *extra: str) -> subprocess.CompletedProcess[str]:
    """`procguard -c CONFIG --check` with its stdout on the given descriptor; the report comes back on stderr."""
    return subprocess.run([sys.executable, "-m", "procguard", "-c", str(config), *extra], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60, env={**os.environ, **ENV})


@pytest.mark.parametrize("path", ["/dev/fd/1", "/proc/self/fd/1", "/dev/stdout"])
def test_a_log_path_naming_the_daemons_socket_stdout_is_refused(tmp_path: Path, path: str) -> None:
    """Under systemd the daemon's stdout is a socket to the journal: opening it by path fails (ENXIO)."""
    config = config_file(tmp_path, f'command = "/bin/true"\nstdout_logfile = "{path}"\n')
    ours, theirs = socket.socketpair()
    with ours, theirs:
        r = check(config, theirs.fileno(), "--check")
        # The daemon itself, started as systemd starts it, refuses before it starts anything.
        daemon = check(config, theirs.fileno())
    assert r.returncode == daemon.returncode == 1
    assert "procguard: refusing config" in daemon.stderr and f"stdout_logfile: {path} is the daemon's own" in daemon.stderr
    assert (f"{config}: [program.web] stdout_logfile: {path} is the daemon's own descriptor and cannot be opened "
            "here (No such device or address; under systemd stdout and stderr are a socket to the journal): "
            'write "inherit"') in r.stderr
    # The same file is fine where stdout can be opened (a pipe, a terminal, a container's log pipe).
    r = check(config, subprocess.PIPE, "--check")
    assert r.returncode == 0, r.stderr


def test_a_log_path_naming_a_closed_descriptor_is_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, 'command = "/bin/true"\nstderr_logfile = "/dev/fd/987"\n', {})
    assert lines == [f"{tmp_path / 'procguard.toml'}: [program.web] stderr_logfile: /dev/fd/987 is the "
                         "daemon's own descriptor and cannot be opened here (No such file or directory; under systemd "
                         'stdout and stderr are a socket to the journal): write "inherit" for the daemon\'s own stdout '
                         "(stdout_logfile) or stderr (stderr_logfile), or a file"]
