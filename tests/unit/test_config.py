"""Config files in tmp_path -> resolved programs, refusals, reload diffs and `procguard --check`.

Errors are asserted as the lines an operator reads (`file: [program.NAME] key: message`), not as
private fields. Nothing here starts a process.
"""

import grp
import os
import pwd
import signal
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from procguard import daemon
from procguard.config.diff import diff_configs
from procguard.config.load import load_config
from procguard.config.model import LOG_INHERIT, LOG_NONE, AutoRestart, Config, ConfigDiff, ProgramConfig
from procguard.config.values import parse_duration, parse_signal, parse_size, parse_umask
from procguard.errors import ConfigError

SEED = Path(__file__).resolve().with_name("seed_supervisor_recipe.toml")
# The daemon's environment in these tests: SECRET_KEY must never reach a child.
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "APP_PORT": "8000", "SECRET_KEY": "hunter2"}
HEADER = '[procguard]\nlogdir = "logs"\n\n'


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def main_file(tmp_path: Path) -> Path:
    return tmp_path / "procguard.toml"


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    """Write text as the main file and load it."""
    return load_config(write(main_file(tmp_path), text), environ=ENV if environ is None else environ)


def load_program(tmp_path: Path, body: str, name: str = "web", environ: dict[str, str] | None = None) -> ProgramConfig:
    """Load a main file holding one [program.NAME] table with body; return that program."""
    prog = load(tmp_path, HEADER + f"[program.{name}]\n" + textwrap.dedent(body), environ).program(name)
    assert prog is not None
    return prog


def refusal(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    """Write text as the main file; return the refusal's lines (ConfigError must be raised)."""
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, text, environ)
    return str(excinfo.value).splitlines()


def refused_key(
    tmp_path: Path, body: str, key: str, name: str = "web", environ: dict[str, str] | None = None
) -> list[str]:
    """Refuse one [program.NAME] table; return the lines naming the main file, the program and key."""
    lines = refusal(tmp_path, HEADER + f"[program.{name}]\n" + textwrap.dedent(body), environ)
    prefix = f"{main_file(tmp_path)}: [program.{name}] {key}: "
    hits = [line for line in lines if line.startswith(prefix)]
    assert hits, f"no line starts with {prefix!r} in {lines}"
    return hits


def env_of(prog: ProgramConfig, index: int = 0) -> dict[str, str]:
    return dict(prog.processes[index].environment)


# ------------------------------------------------------------------------------ [program.NAME] keys


def test_command_string_is_split_like_a_shell(tmp_path: Path) -> None:
    prog = load_program(tmp_path, r'''command = "sh -c 'echo hello  world' --flag=\"a b\" plain"''')
    assert prog.processes[0].command == ("sh", "-c", "echo hello  world", "--flag=a b", "plain")


def test_command_array_is_taken_verbatim(tmp_path: Path) -> None:
    prog = load_program(tmp_path, """command = ["/bin/echo", "a  b", "'quoted'", "$HOME"]""")
    assert prog.processes[0].command == ("/bin/echo", "a  b", "'quoted'", "$HOME")


def test_directory_is_parsed_and_defaults_to_none(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"\ndirectory = "/srv/app"').processes[0].directory == "/srv/app"
    assert load_program(tmp_path, 'command = "/bin/true"').processes[0].directory is None


def test_user_gets_that_users_uid_groups_and_login_environment(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    prog = load_program(tmp_path, 'command = "/bin/true"\nuser = "nobody"')
    assert (prog.user, prog.uid, prog.gid) == ("nobody", nobody.pw_uid, nobody.pw_gid)
    assert prog.extra_groups == tuple(sorted(set(os.getgrouplist("nobody", nobody.pw_gid))))
    assert 0 not in (prog.extra_groups or ())  # never root's groups
    env = env_of(prog)
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
        nobody.pw_dir, "nobody", "nobody", nobody.pw_shell,
    )


def test_user_given_as_uid_is_looked_up(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    prog = load_program(tmp_path, f'command = "/bin/true"\nuser = "{nobody.pw_uid}"')
    assert (prog.uid, env_of(prog)["USER"]) == (nobody.pw_uid, "nobody")


def test_group_sets_the_gid(tmp_path: Path) -> None:
    try:
        nogroup = grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no group 'nogroup' on this machine")
    prog = load_program(tmp_path, 'command = "/bin/true"\nuser = "nobody"\ngroup = "nogroup"')
    assert prog.gid == nogroup.gr_gid
    assert load_program(tmp_path, 'command = "/bin/true"\ngroup = "nogroup"').gid == nogroup.gr_gid


def test_user_and_group_default_to_the_daemons(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"')
    assert (prog.user, prog.uid, prog.gid, prog.extra_groups) == (None, None, None, None)
    assert env_of(prog)["USER"] == pwd.getpwuid(os.geteuid()).pw_name


@pytest.mark.parametrize(("value", "expected"), [('"022"', 0o22), ('"22"', 0o22), ('"0777"', 0o777), ("0o27", 0o27)])
def test_umask_is_an_octal_string_or_an_integer(tmp_path: Path, value: str, expected: int) -> None:
    assert load_program(tmp_path, f'command = "/bin/true"\numask = {value}').umask == expected


def test_umask_defaults_to_the_daemons(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').umask is None


def test_environment_table_is_added_to_the_base_environment(tmp_path: Path) -> None:
    prog = load_program(
        tmp_path,
        """\
        command = "/bin/true"
        environment = { DJANGO_SETTINGS_MODULE = "app.settings", WORKERS = 4, DEBUG = false, PORT = "{ENV_APP_PORT}", PATH = "/opt/bin" }
        """,
    )
    env = env_of(prog)
    assert env["DJANGO_SETTINGS_MODULE"] == "app.settings"
    assert (env["WORKERS"], env["DEBUG"], env["PORT"]) == ("4", "false", "8000")
    assert env["PATH"] == "/opt/bin"  # the table wins over the base environment


def test_environment_base_passes_only_listed_daemon_variables(tmp_path: Path) -> None:
    env = env_of(load_program(tmp_path, 'command = "/bin/true"'))
    assert (env["PATH"], env["LANG"]) == ("/usr/bin:/bin", "C.UTF-8")
    assert (env["SUPERVISOR_ENABLED"], env["SUPERVISOR_PROCESS_NAME"], env["SUPERVISOR_GROUP_NAME"]) == ("1", "web", "web")
    assert env["PROCGUARD_PROCESS"] == "web"
    assert "SECRET_KEY" not in env and "APP_PORT" not in env


def test_path_defaults_when_the_daemon_has_none(tmp_path: Path) -> None:
    env = env_of(load_program(tmp_path, 'command = "/bin/true"', environ={}))
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_autostart_defaults_true_and_can_be_false(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').autostart is True
    assert load_program(tmp_path, 'command = "/bin/true"\nautostart = false').autostart is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", AutoRestart.ALWAYS), ("false", AutoRestart.NEVER), ('"unexpected"', AutoRestart.UNEXPECTED)],
)
def test_autorestart_accepts_true_false_and_unexpected(tmp_path: Path, value: str, expected: AutoRestart) -> None:
    assert load_program(tmp_path, f'command = "/bin/true"\nautorestart = {value}').autorestart is expected


def test_autorestart_defaults_to_unexpected(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').autorestart is AutoRestart.UNEXPECTED


@pytest.mark.parametrize("value", ["[0, 2]", '"0,2"', '"0, 2"'])
def test_exitcodes_accept_a_list_or_supervisors_comma_string(tmp_path: Path, value: str) -> None:
    assert load_program(tmp_path, f'command = "/bin/true"\nexitcodes = {value}').exitcodes == (0, 2)


def test_exitcodes_default_to_zero(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').exitcodes == (0,)


@pytest.mark.parametrize("key", ["startsecs", "stopwaitsecs", "backoff_initial", "backoff_max", "backoff_reset"])
@pytest.mark.parametrize(
    ("value", "seconds"), [("10", 10.0), ("2.5", 2.5), ('"500ms"', 0.5), ('"10s"', 10.0), ('"2m"', 120.0)]
)
def test_durations_accept_seconds_and_units(tmp_path: Path, key: str, value: str, seconds: float) -> None:
    prog = load_program(tmp_path, f'command = "/bin/true"\n{key} = {value}')
    assert getattr(prog, key) == pytest.approx(seconds)


def test_durations_have_documented_defaults(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"')
    assert (prog.startsecs, prog.stopwaitsecs) == (1.0, 10.0)
    assert (prog.backoff_initial, prog.backoff_max, prog.backoff_reset) == (1.0, 60.0, 10.0)


def test_startretries_defaults_to_none_meaning_retry_forever(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').startretries is None
    assert load_program(tmp_path, 'command = "/bin/true"\nstartretries = 3').startretries == 3
    assert load_program(tmp_path, 'command = "/bin/true"\nstartretries = 0').startretries == 0


@pytest.mark.parametrize("value", ['"QUIT"', '"SIGQUIT"', '"quit"', "3"])
def test_stopsignal_accepts_a_name_with_or_without_sig_or_a_number(tmp_path: Path, value: str) -> None:
    assert load_program(tmp_path, f'command = "/bin/true"\nstopsignal = {value}').stopsignal == signal.SIGQUIT


def test_stopsignal_defaults_to_term(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').stopsignal == signal.SIGTERM


def test_stopasgroup_and_killasgroup_default_true(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"')
    assert (prog.stopasgroup, prog.killasgroup) == (True, True)
    prog = load_program(tmp_path, 'command = "/bin/true"\nstopasgroup = false\nkillasgroup = false')
    assert (prog.stopasgroup, prog.killasgroup) == (False, False)


def test_priority_defaults_to_999(tmp_path: Path) -> None:
    assert load_program(tmp_path, 'command = "/bin/true"').priority == 999
    assert load_program(tmp_path, 'command = "/bin/true"\npriority = -5').priority == -5


def test_single_process_is_named_after_its_program(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"')
    assert [p.name for p in prog.processes] == ["web"]
    assert prog.processes[0].process_num == 0
    assert not prog.is_group


def test_numprocs_makes_processes_named_by_process_name(tmp_path: Path) -> None:
    prog = load_program(
        tmp_path,
        """\
        command = "/bin/true"
        numprocs = 3
        numprocs_start = 1
        process_name = "{program_name}-{process_num:02d}"
        """,
        name="worker",
    )
    assert [p.name for p in prog.processes] == ["worker:worker-01", "worker:worker-02", "worker:worker-03"]
    assert [p.process_num for p in prog.processes] == [1, 2, 3]
    assert env_of(prog, 1)["SUPERVISOR_PROCESS_NAME"] == "worker-02"
    assert env_of(prog, 1)["PROCGUARD_PROCESS"] == "worker:worker-02"
    assert prog.is_group


def test_numprocs_default_process_name_is_program_underscore_two_digits(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"\nnumprocs = 2', name="worker")
    assert [p.name for p in prog.processes] == ["worker:worker_00", "worker:worker_01"]


def test_single_process_with_own_process_name_is_a_group_member(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"\nprocess_name = "main"')
    assert [p.name for p in prog.processes] == ["web:main"]
    assert prog.is_group


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"/var/log/web.log"', "/var/log/web.log"),
        ('"NONE"', LOG_NONE),
        ('"none"', LOG_NONE),
        ('"inherit"', LOG_INHERIT),
        ('"journal"', LOG_INHERIT),
    ],
)
def test_logfile_takes_a_path_none_or_inherit(tmp_path: Path, stream: str, value: str, expected: str) -> None:
    prog = load_program(tmp_path, f'command = "/bin/true"\n{stream}_logfile = {value}')
    assert getattr(prog.processes[0], f"{stream}_logfile") == expected


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize("body", ["", '{stream}_logfile = "AUTO"\n', '{stream}_logfile = "auto"\n'])
def test_auto_logfile_goes_under_logdir_relative_to_the_main_file(tmp_path: Path, stream: str, body: str) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"\n' + body.format(stream=stream))
    expected = tmp_path.resolve() / "logs" / f"web-{stream}.log"
    assert getattr(prog.processes[0], f"{stream}_logfile") == str(expected)


def test_auto_logfile_of_a_group_process_replaces_the_colon(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"\nnumprocs = 2', name="worker")
    assert prog.processes[1].stdout_logfile == str(tmp_path.resolve() / "logs" / "worker_worker_01-stdout.log")


def test_redirect_stderr_leaves_no_separate_stderr_file(tmp_path: Path) -> None:
    prog = load_program(tmp_path, 'command = "/bin/true"\nredirect_stderr = true\nstdout_logfile = "/tmp/web.log"')
    assert prog.redirect_stderr is True
    assert (prog.processes[0].stdout_logfile, prog.processes[0].stderr_logfile) == ("/tmp/web.log", LOG_NONE)
    assert load_program(tmp_path, 'command = "/bin/true"').redirect_stderr is False


def test_logfile_maxbytes_and_backups_are_accepted(tmp_path: Path) -> None:
    # Validated only until rotation lands (issue #4): ProgramConfig has no field for them yet.
    load_program(
        tmp_path,
        """\
        command = "/bin/true"
        stdout_logfile_maxbytes = "50MB"
        stderr_logfile_maxbytes = 1024
        stdout_logfile_backups = 5
        stderr_logfile_backups = 0
        """,
    )
    assert parse_size("50MB") == 50 * 1024 * 1024


# -------------------------------------------------------------------------------------- variables


def test_variables_expand_in_command_directory_environment_and_log_paths(tmp_path: Path) -> None:
    write(main_file(tmp_path), HEADER.replace("\n\n", '\ninclude = ["conf.d/*.toml"]\n\n'))
    write(
        tmp_path / "conf.d" / "app.toml",
        """\
        [program.app]
        command = "{here}/bin/app --name {program_name} --group {group_name} --num {process_num} --port {ENV_APP_PORT}"
        directory = "{here}/{program_name}/{process_num}"
        numprocs = 2
        numprocs_start = 7
        process_name = "{program_name}_{process_num}"
        environment = { SLOT = "{ENV_APP_PORT}-{process_num:03d}" }
        stdout_logfile = "{here}/logs/{program_name}-{process_num:02d}.log"
        stderr_logfile = "/var/tmp/{ENV_APP_PORT}-{process_num}.err"
        """,
    )
    prog = load_config(main_file(tmp_path), environ=ENV).program("app")
    assert prog is not None
    here = str((tmp_path / "conf.d").resolve())  # the defining file's directory, not the main file's
    second = prog.processes[1]
    assert second.name == "app:app_8"
    assert second.command == (f"{here}/bin/app", "--name", "app", "--group", "app", "--num", "8", "--port", "8000")
    assert second.directory == f"{here}/app/8"
    assert dict(second.environment)["SLOT"] == "8000-008"
    assert second.stdout_logfile == f"{here}/logs/app-08.log"
    assert second.stderr_logfile == "/var/tmp/8000-8.err"


def test_other_braces_are_left_as_written(tmp_path: Path) -> None:
    prog = load_program(
        tmp_path,
        """\
        command = "awk '{print $1}' {here}/data.txt"
        directory = "/srv/{unknown}/{ENV-X}"
        environment = { FMT = "${HOME} {} {0} {process_num:x}" }
        """,
    )
    here = str(tmp_path.resolve())
    assert prog.processes[0].command == ("awk", "{print $1}", f"{here}/data.txt")
    assert prog.processes[0].directory == "/srv/{unknown}/{ENV-X}"
    assert env_of(prog)["FMT"] == "${HOME} {} {0} {process_num:x}"


def test_here_in_logdir_and_include_is_the_main_files_directory(tmp_path: Path) -> None:
    write(main_file(tmp_path), '[procguard]\nlogdir = "{here}/var/log"\ninclude = ["{here}/conf.d/*.toml"]\n')
    write(tmp_path / "conf.d" / "web.toml", '[program.web]\ncommand = "/bin/true"\n')
    config = load_config(main_file(tmp_path), environ=ENV)
    assert config.logdir == str(tmp_path.resolve() / "var" / "log")
    assert [p.name for p in config.programs] == ["web"]


# ------------------------------------------------------------------------------------------ errors


def test_unknown_key_is_named_with_file_and_program(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nstopsignl = "QUIT"', "stopsignl")
    assert lines == [f"{main_file(tmp_path)}: [program.web] stopsignl: unknown key (did you mean 'stopsignal'?)"]


def test_unknown_key_without_a_close_match_has_no_suggestion(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nzzzzzz = 1', "zzzzzz")
    assert lines == [f"{main_file(tmp_path)}: [program.web] zzzzzz: unknown key"]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("command", "42", "expected a string or an array of strings, got 42"),
        ("command", '["/bin/echo", 1]', "expected a string or an array of strings"),
        ("command", '""', "expected a non-empty command"),
        ("command", '"echo \'unterminated"', "cannot split command"),
        ("directory", "5", "expected a string, got 5"),
        ("user", "true", "expected a string, got True"),
        ("numprocs", '"two"', "expected an integer, got 'two'"),
        ("numprocs", "0", "expected an integer >= 1, got 0"),
        ("numprocs_start", "-1", "expected an integer >= 0, got -1"),
        ("priority", "1.5", "expected an integer, got 1.5"),
        ("startretries", "-1", "expected an integer >= 0, got -1"),
        ("autostart", '"yes"', "expected true or false, got 'yes'"),
        ("stopasgroup", "1", "expected true or false, got 1"),
        ("redirect_stderr", '"on"', "expected true or false, got 'on'"),
        ("autorestart", '"sometimes"', "expected true, false or \"unexpected\", got 'sometimes'"),
        ("exitcodes", "[0, 300]", "expected a list of exit codes (0-255) like [0, 2], got [0, 300]"),
        ("exitcodes", '"0,two"', "expected a list of exit codes like [0, 2], got '0,two'"),
        ("exitcodes", "[]", "expected a list of exit codes (0-255)"),
        ("environment", '"A=1"', "expected a table like"),
        ("environment", '{ "BAD-NAME" = "1" }', "expected variable names of letters, digits and _, got 'BAD-NAME'"),
        ("environment", "{ A = [1] }", "expected string values, got A = [1]"),
        ("process_name", "7", "expected a string, got 7"),
        ("stdout_logfile", "false", "expected a string, got False"),
        ("stdout_logfile_maxbytes", '"fifty"', "expected a size like 1048576 or \"50MB\", got 'fifty'"),
        ("stderr_logfile_maxbytes", "-1", "expected a size like"),
        ("stderr_logfile_backups", "-1", "expected an integer >= 0, got -1"),
    ],
)
def test_wrong_type_or_value_names_file_program_key_and_expectation(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    body = f"{key} = {value}" if key == "command" else f'command = "/bin/true"\n{key} = {value}'
    lines = refused_key(tmp_path, body, key)
    assert len(lines) == 1 and expected in lines[0], lines


def test_bad_duration_is_reported_as_the_docs_show(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nstopwaitsecs = "ten"', "stopwaitsecs")
    assert lines == [
        f"{main_file(tmp_path)}: [program.web] stopwaitsecs: "
        """expected a duration like 10, "500ms", "10s" or "2m", got 'ten'"""
    ]


@pytest.mark.parametrize(("value", "expected"), [("-1", "expected a duration >= 0, got -1"), ("true", "got True"),
                                                 ('"10 seconds"', "got '10 seconds'"), ('"-5s"', "got '-5s'")])
def test_negative_or_malformed_duration_is_refused(tmp_path: Path, value: str, expected: str) -> None:
    lines = refused_key(tmp_path, f'command = "/bin/true"\nstartsecs = {value}', "startsecs")
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"BOGUS"', """expected a signal name like "TERM" or "QUIT", got 'BOGUS'"""),
        ("99", "expected a signal name or number, got 99"),
        ("0", "expected a signal name or number, got 0"),
        ("true", "got True"),
    ],
)
def test_bad_stopsignal_is_refused(tmp_path: Path, value: str, expected: str) -> None:
    lines = refused_key(tmp_path, f'command = "/bin/true"\nstopsignal = {value}', "stopsignal")
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("value", ['"999"', '"abc"', '"0o22"', '"00022"', "0o1000", "-1"])
def test_bad_umask_is_refused(tmp_path: Path, value: str) -> None:
    lines = refused_key(tmp_path, f'command = "/bin/true"\numask = {value}', "umask")
    assert len(lines) == 1 and 'expected an octal umask like "022"' in lines[0], lines


def test_missing_command_is_required(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'directory = "/srv"', "command")
    assert lines == [f"{main_file(tmp_path)}: [program.web] command: is required"]


def test_numprocs_above_one_needs_process_num_in_process_name(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nnumprocs = 2\nprocess_name = "web"', "process_name")
    assert any("with numprocs = 2 it must contain {process_num}, got 'web'" in line for line in lines), lines


def test_stderr_logfile_with_redirect_stderr_is_refused(tmp_path: Path) -> None:
    body = 'command = "/bin/true"\nredirect_stderr = true\nstderr_logfile = "/tmp/e.log"'
    lines = refused_key(tmp_path, body, "stderr_logfile")
    assert lines == [
        f"{main_file(tmp_path)}: [program.web] stderr_logfile: is ignored with redirect_stderr = true; remove one of them"
    ]


def test_killasgroup_false_with_stopasgroup_true_is_refused(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nkillasgroup = false', "killasgroup")
    assert lines == [f"{main_file(tmp_path)}: [program.web] killasgroup: must be true when stopasgroup is true (as in supervisor)"]


def test_program_name_with_odd_characters_is_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program."web app"]\ncommand = "/bin/true"\n')
    assert lines == [f"{main_file(tmp_path)}: [program.web app]: program names may use only letters, digits, '_', '.' and '-'"]


def test_program_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program]\nweb = "/bin/true"\n')
    assert lines == [f"{main_file(tmp_path)}: [program.web]: expected a table, got '/bin/true'"]


def test_unknown_user_is_refused(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nuser = "no-such-user-pg"', "user")
    assert lines == [f"{main_file(tmp_path)}: [program.web] user: no such user 'no-such-user-pg' on this machine"]


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\ngroup = "no-such-group-pg"', "group")
    assert lines == [f"{main_file(tmp_path)}: [program.web] group: no such group 'no-such-group-pg' on this machine"]


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("command", 'command = "/bin/echo {ENV_NOPE}"'),
        ("directory", 'command = "/bin/true"\ndirectory = "/srv/{ENV_NOPE}"'),
        ("stdout_logfile", 'command = "/bin/true"\nstdout_logfile = "/var/log/{ENV_NOPE}.log"'),
        ("stderr_logfile", 'command = "/bin/true"\nstderr_logfile = "/var/log/{ENV_NOPE}.log"'),
        ("environment", 'command = "/bin/true"\nenvironment = { X = "{ENV_NOPE}" }'),
        ("process_name", 'command = "/bin/true"\nprocess_name = "p{ENV_NOPE}"'),
    ],
)
def test_undefined_env_variable_is_refused(tmp_path: Path, key: str, line: str) -> None:
    lines = refused_key(tmp_path, line, key)
    assert lines == [f"{main_file(tmp_path)}: [program.web] {key}: {{ENV_NOPE}}: the daemon's environment has no NOPE"]


def test_duplicate_program_across_files_names_both_files(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "web.toml", '[program.web]\ncommand = "/bin/true"\n')
    lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n\n[program.web]\ncommand = "/bin/true"\n')
    assert lines == [f"{inc}: [program.web]: program defined twice: also in {main_file(tmp_path)}"]


def test_missing_include_file_is_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/missing.toml"]\n')
    missing = tmp_path.resolve() / "conf.d" / "missing.toml"
    assert lines == [f"{main_file(tmp_path)}: [procguard] include: 'conf.d/missing.toml': no such file {missing}"]


def test_include_glob_matching_nothing_is_fine(tmp_path: Path) -> None:
    config = load(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml", "other/[ab].toml"]\n')
    assert config.programs == ()


def test_include_must_be_a_list_of_strings(tmp_path: Path) -> None:
    lines = refusal(tmp_path, "[procguard]\ninclude = [1]\n")
    assert lines == [f"{main_file(tmp_path)}: [procguard] include: expected a list of globs, got [1]"]


@pytest.mark.parametrize("where", ["main", "included"])
def test_invalid_toml_names_the_file(tmp_path: Path, where: str) -> None:
    bad = "[program.web\ncommand = \n"
    if where == "main":
        lines = refusal(tmp_path, bad)
        bad_file = main_file(tmp_path)
    else:
        bad_file = write(tmp_path / "conf.d" / "web.toml", bad)
        lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    assert len(lines) == 1 and lines[0].startswith(f"{bad_file}: invalid TOML: "), lines


def test_missing_main_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "nope.toml", environ=ENV)
    assert str(excinfo.value) == f"{tmp_path / 'nope.toml'}: no such file"


def test_procguard_table_in_an_included_file_is_refused(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "web.toml", '[procguard]\nloglevel = "debug"\n')
    lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    assert lines == [f"{inc}: procguard: [procguard] belongs in the main file"]


def test_unknown_table_in_an_included_file_is_refused(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "web.toml", '[programs.web]\ncommand = "/bin/true"\n')
    lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    assert lines == [f"{inc}: programs: unknown table (expected [program.NAME], [group.NAME], [socket.NAME] "
                     "or [alert.NAME])"]


def test_unknown_top_level_table_is_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, '[programs.web]\ncommand = "/bin/true"\n')
    assert lines == [f"{main_file(tmp_path)}: programs: unknown table (expected [procguard], [program.NAME], "
                     "[group.NAME], [socket.NAME] or [alert.NAME])"]


def test_unknown_procguard_key_is_named_with_did_you_mean(tmp_path: Path) -> None:
    lines = refusal(tmp_path, '[procguard]\nincludes = ["conf.d/*.toml"]\n')
    assert lines == [f"{main_file(tmp_path)}: [procguard] includes: unknown key (did you mean 'include'?)"]


@pytest.mark.parametrize("value", ['"verbose"', "10"])
def test_bad_loglevel_is_refused(tmp_path: Path, value: str) -> None:
    lines = refusal(tmp_path, f"[procguard]\nloglevel = {value}\n")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{main_file(tmp_path)}: [procguard] loglevel: expected one of debug, info, warning, error, critical, got ")


def test_loglevel_is_case_insensitive_and_defaults_to_info(tmp_path: Path) -> None:
    assert load(tmp_path, '[procguard]\nloglevel = "WARNING"\n').loglevel == "warning"
    assert load(tmp_path, "").loglevel == "info"


def test_every_bad_key_in_every_file_is_reported_in_one_error(tmp_path: Path) -> None:
    main = write(
        main_file(tmp_path),
        """\
        [procguard]
        include = ["conf.d/*.toml"]
        loglevel = "loud"

        [program.web]
        command = "/bin/true"
        stopwaitsecs = "ten"
        stopsignl = "QUIT"
        """,
    )
    api = write(
        tmp_path / "conf.d" / "api.toml",
        """\
        [program.api]
        command = "/bin/true"
        umask = "999"
        user = "no-such-user-pg"

        [program.cron]
        command = "/bin/true"
        autorestart = "maybe"
        """,
    )
    broken = write(tmp_path / "conf.d" / "broken.toml", "[program.x\n")
    worker = write(tmp_path / "conf.d" / "worker.toml", '[program.worker]\ncommand = "/bin/true"\nnumprocs = "two"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_config(main, environ=ENV)
    lines = str(excinfo.value).splitlines()
    expected_prefixes = [
        f"{main}: [procguard] loglevel: ",
        f"{main}: [program.web] stopwaitsecs: ",
        f"{main}: [program.web] stopsignl: ",
        f"{api}: [program.api] umask: ",
        f"{api}: [program.api] user: ",
        f"{api}: [program.cron] autorestart: ",
        f"{broken}: invalid TOML: ",
        f"{worker}: [program.worker] numprocs: ",
    ]
    assert sorted(p for p in expected_prefixes if not any(line.startswith(p) for line in lines)) == [], lines
    assert len(lines) == len(expected_prefixes), lines


# ---------------------------------------------------------------------------------------- includes


def test_include_globs_are_relative_to_the_including_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    write(etc / "procguard.toml", '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    write(etc / "conf.d" / "web.toml", '[program.web]\ncommand = "/bin/true"\n')
    write(tmp_path / "conf.d" / "decoy.toml", '[program.decoy]\ncommand = "/bin/true"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/procguard.toml", environ=ENV)
    assert [p.name for p in config.programs] == ["web"]
    assert config.programs[0].source == str((etc / "conf.d" / "web.toml").resolve())


def test_included_files_are_read_in_sorted_order(tmp_path: Path) -> None:
    # Written b before a: the second definition (the one refused) must still be b's.
    b = write(tmp_path / "conf.d" / "b.toml", '[program.web]\ncommand = "/bin/true"\n')
    a = write(tmp_path / "conf.d" / "a.toml", '[program.web]\ncommand = "/bin/true"\n')
    lines = refusal(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    assert lines == [f"{b.resolve()}: [program.web]: program defined twice: also in {a.resolve()}"]


def test_programs_are_sorted_by_priority_then_name(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "a.toml", '[program.zeta]\ncommand = "/bin/true"\npriority = 1\n')
    write(tmp_path / "conf.d" / "b.toml", '[program.mid]\ncommand = "/bin/true"\npriority = 500\n')
    config = load(
        tmp_path,
        """\
        [procguard]
        include = ["conf.d/*.toml"]

        [program.alpha]
        command = "/bin/true"

        [program.beta]
        command = "/bin/true"
        priority = 1
        """,
    )
    assert [p.name for p in config.programs] == ["beta", "zeta", "mid", "alpha"]


def test_each_program_records_the_file_that_defines_it(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "api.toml", '[program.api]\ncommand = "/bin/true"\n')
    config = load(tmp_path, '[procguard]\ninclude = ["conf.d/*.toml"]\n\n[program.web]\ncommand = "/bin/true"\n')
    sources = {p.name: p.source for p in config.programs}
    assert sources == {"web": str(main_file(tmp_path)), "api": str(inc.resolve())}


def test_a_file_matched_twice_is_read_once(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "web.toml", '[program.web]\ncommand = "/bin/true"\n')
    text = '[procguard]\ninclude = ["conf.d/*.toml", "conf.d/web.toml", "*.toml"]\n\n[program.main]\ncommand = "/bin/true"\n'
    assert sorted(p.name for p in load(tmp_path, text).programs) == ["main", "web"]


def test_includes_are_read_in_the_order_of_the_patterns(tmp_path: Path) -> None:
    z = write(tmp_path / "z.toml", '[program.web]\ncommand = "/bin/true"\n')
    a = write(tmp_path / "a.toml", '[program.web]\ncommand = "/bin/true"\n')
    lines = refusal(tmp_path, '[procguard]\ninclude = ["z.toml", "a.toml"]\n')
    assert lines == [f"{a.resolve()}: [program.web]: program defined twice: also in {z.resolve()}"]


# -------------------------------------------------------------------------------------------- diff


def test_diff_reports_added_changed_and_removed_programs(tmp_path: Path) -> None:
    old = load(
        tmp_path,
        HEADER + '[program.web]\ncommand = "/bin/true"\n[program.worker]\ncommand = "/bin/true"\n'
        '[program.cron]\ncommand = "/bin/true"\n',
    )
    new = load(
        tmp_path,
        HEADER + '[program.web]\ncommand = "/bin/true"\nstopwaitsecs = 30\n[program.worker]\ncommand = "/bin/true"\n'
        '[program.api]\ncommand = "/bin/true"\n',
    )
    assert diff_configs(old, new) == ConfigDiff(added=("api",), changed=("web",), removed=("cron",))


def test_diff_of_an_identical_reload_is_empty(tmp_path: Path) -> None:
    text = HEADER + '[program.web]\ncommand = "/bin/true"\n'
    assert diff_configs(load(tmp_path, text), load(tmp_path, text)) == ConfigDiff(added=(), changed=(), removed=())


def test_diff_sees_a_change_in_any_process(tmp_path: Path) -> None:
    old = load(tmp_path, HEADER + '[program.web]\ncommand = "/bin/true"\nnumprocs = 2\n')
    new = load(tmp_path, HEADER + '[program.web]\ncommand = "/bin/true"\nnumprocs = 3\n')
    assert diff_configs(old, new).changed == ("web",)


def test_moving_an_unchanged_program_to_another_file_is_not_a_change(tmp_path: Path) -> None:
    table = '[program.web]\ncommand = "/bin/sleep 60"\nstopwaitsecs = "30s"\n'
    old = load(tmp_path, HEADER + table)
    write(tmp_path / "conf.d" / "web.toml", table)
    new = load(tmp_path, HEADER.replace("\n\n", '\ninclude = ["conf.d/*.toml"]\n\n'))
    assert old.programs[0].source != new.programs[0].source
    assert diff_configs(old, new) == ConfigDiff(added=(), changed=(), removed=())


# ------------------------------------------------------------------------------ units (properties)


@given(st.one_of(st.integers(0, 10**12), st.floats(0, 1e12, allow_nan=False, allow_infinity=False)))
def test_parse_duration_takes_non_negative_numbers_as_seconds(value: float) -> None:
    assert parse_duration(value) == float(value)


@given(st.integers(0, 10**9), st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0)]), st.sampled_from(["", " "]))
def test_parse_duration_reads_ms_s_and_m_suffixes(n: int, unit: tuple[str, float], space: str) -> None:
    suffix, factor = unit
    assert parse_duration(f"{n}{space}{suffix}") == pytest.approx(n * factor)


@given(st.integers(0, 10**6), st.integers(0, 99))
def test_parse_duration_reads_decimal_seconds(whole: int, hundredths: int) -> None:
    assert parse_duration(f"{whole}.{hundredths:02d}s") == pytest.approx(whole + hundredths / 100)


@given(st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9, allow_infinity=False)))
def test_parse_duration_refuses_negative_numbers(value: float) -> None:
    with pytest.raises(Exception, match="expected a duration >= 0"):
        parse_duration(value)


@given(
    st.integers(0, 2**20),
    st.sampled_from([("KB", 1024), ("MB", 1024**2), ("GB", 1024**3), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)]),
    st.booleans(),
)
def test_parse_size_units_are_powers_of_1024(n: int, unit: tuple[str, int], lower: bool) -> None:
    suffix, factor = unit
    assert parse_size(f"{n}{suffix.lower() if lower else suffix}") == n * factor


@given(st.integers(0, 2**62))
def test_parse_size_takes_plain_integers_as_bytes(n: int) -> None:
    assert parse_size(n) == n


@given(st.sampled_from(sorted(signal.Signals.__members__)), st.booleans(), st.booleans())
def test_parse_signal_round_trips_every_signal_name(name: str, with_sig: bool, lower: bool) -> None:
    text = name if with_sig else name.removeprefix("SIG")
    assert parse_signal(text.lower() if lower else text) == signal.Signals[name].value


@given(st.sampled_from(list(signal.Signals)))
def test_parse_signal_takes_every_signal_number(sig: signal.Signals) -> None:
    assert parse_signal(int(sig)) == int(sig)


@given(st.integers(0, 0o777))
def test_parse_umask_reads_three_octal_digits(mask: int) -> None:
    assert parse_umask(f"{mask:03o}") == mask
    assert parse_umask(mask) == mask


# ------------------------------------------------------------------------------ procguard --check


def test_check_prints_the_resolved_program_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(main_file(tmp_path), HEADER + '[program.sleeper]\ncommand = "/bin/sleep 60"\nstopsignal = "INT"\n')
    assert daemon.main(["-c", str(path), "--check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"[program.sleeper]  ({path})" in out
    assert "    command = /bin/sleep 60" in out
    assert "  stopsignal = SIGINT" in out
    assert "  startretries = forever" in out
    assert f"    stdout_logfile = {tmp_path.resolve() / 'logs' / 'sleeper-stdout.log'}" in out
    assert out.rstrip().endswith("config OK")


def test_check_refuses_a_bad_config_naming_file_program_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(main_file(tmp_path), HEADER + '[program.web]\ncommand = "/bin/sleep 60"\nstopwaitsecs = "ten"\n')
    assert daemon.main(["-c", str(path), "--check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"procguard: refusing config {path}:",
        f"  {path}: [program.web] stopwaitsecs: " """expected a duration like 10, "500ms", "10s" or "2m", got 'ten'""",
    ]


def test_check_refuses_a_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.toml"
    assert daemon.main(["-c", str(path), "--check"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"procguard: refusing config {path}:", f"  {path}: no such file"]


def test_check_reports_a_command_missing_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(main_file(tmp_path), HEADER + '[program.web]\ncommand = "no-such-binary-pg --serve"\n')
    assert daemon.main(["-c", str(path), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "[program.web]" in out and "config OK" not in out
    assert f"  {path}: [program.web] command: no-such-binary-pg: not found on PATH=" in err


def test_supervisor_seed_config_loads_with_supervisors_meanings() -> None:
    try:
        www = pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no user www-data on this machine")
    prog = load_config(SEED, environ=ENV).program("coffeehouseuwsgi")
    assert prog is not None
    assert (prog.user, prog.uid, prog.gid, prog.umask) == ("www-data", www.pw_uid, www.pw_gid, 0o22)
    assert (prog.autostart, prog.autorestart, prog.stopsignal) == (True, AutoRestart.ALWAYS, signal.SIGQUIT)
    proc = prog.processes[0]
    assert proc.command[:3] == ("/python/beginningdjango/bin/uwsgi", "--socket", "127.0.0.1:27000")
    assert proc.command[-1] == "--single-interpreter" and len(proc.command) == 26
    assert (proc.directory, proc.stdout_logfile) == ("/www/", "/www/logs/supervisor_coffeehouse_uwsgi.log")
    assert prog.redirect_stderr and proc.stderr_logfile == LOG_NONE


def test_check_on_supervisor_seed_config_reports_only_missing_paths(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no user www-data on this machine")
    assert daemon.main(["-c", str(SEED), "--check"]) == 1
    out, err = capsys.readouterr()
    assert "refusing" not in err
    assert "[program.coffeehouseuwsgi]" in out and "  user = www-data" in out and "  umask = 022" in out
    where = f"{SEED}: [program.coffeehouseuwsgi]"
    assert err.splitlines() == [
        "",
        "warnings (known traps; the config is accepted):",
        f"  {where}: uWSGI without --need-app starts even when the app fails to import and serves 500s; "
        "add --need-app",
        f"  {where}: uWSGI stops brutally (requests in flight are cut off on every stop and restart); add "
        '"--hook-master-start", "unix_signal:15 gracefully_kill_them_all" to the command: TERM then waits for them',
        "",
        "problems on this machine:",
        f"  {where} command: /python/beginningdjango/bin/uwsgi: no such file",
        f"  {where} directory: /www/: no such directory",
        f"  {where} stdout_logfile: /www/logs: no such directory for /www/logs/supervisor_coffeehouse_uwsgi.log",
    ]


# ------------------------------------------------ regressions: bugs found while writing these tests


def test_nan_duration_is_refused(tmp_path: Path) -> None:
    lines = refused_key(tmp_path, 'command = "/bin/true"\nstopwaitsecs = nan', "stopwaitsecs")
    assert len(lines) == 1


def test_includes_work_when_the_config_directory_has_glob_characters(tmp_path: Path) -> None:
    etc = tmp_path / "conf[1]"
    write(etc / "procguard.toml", '[procguard]\ninclude = ["conf.d/*.toml"]\n')
    write(etc / "conf.d" / "web.toml", '[program.web]\ncommand = "/bin/true"\n')
    assert [p.name for p in load_config(etc / "procguard.toml", environ=ENV).programs] == ["web"]


def test_check_finds_a_relative_command_in_the_programs_directory(tmp_path: Path) -> None:
    script = write(tmp_path / "app" / "bin" / "run", "#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    config = load(tmp_path, HEADER + '[program.web]\ncommand = "./bin/run"\ndirectory = "{here}/app"\n')
    assert config.warnings == ()


def test_absurd_size_is_refused_not_crashed(tmp_path: Path) -> None:
    refused_key(tmp_path, f'command = "/bin/true"\nstdout_logfile_maxbytes = "{"9" * 400}"', "stdout_logfile_maxbytes")


def test_undefined_env_variable_with_numprocs_is_reported_once(tmp_path: Path) -> None:
    body = 'command = "/bin/echo {ENV_NOPE}"\nnumprocs = 3'
    assert len(refused_key(tmp_path, body, "command")) == 1


# ------------------------------------------------------------------ control socket settings (#3)


def test_control_defaults_to_a_private_ipc_socket(tmp_path: Path) -> None:
    config = load(tmp_path, '[procguard]\n')
    expected = "/run/procguard/procguard.sock" if os.geteuid() == 0 else None
    assert config.control.startswith("ipc://") and config.control.endswith("/procguard/procguard.sock")
    if expected:
        assert config.control == f"ipc://{expected}"
    assert (config.control_group, config.control_gid, config.curve) == (None, None, None)


def test_a_relative_ipc_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load(tmp_path, '[procguard]\ncontrol = "ipc://run/ctl.sock"\n')
    assert config.control == f"ipc://{tmp_path}/run/ctl.sock"


def test_control_group_resolves_to_its_gid(tmp_path: Path) -> None:
    name = grp.getgrgid(os.getgid()).gr_name
    config = load(tmp_path, f'[procguard]\ncontrol_group = "{name}"\n')
    assert (config.control_group, config.control_gid) == (name, os.getgid())


def test_bad_control_settings_are_each_named(tmp_path: Path) -> None:
    lines = refusal(tmp_path, '[procguard]\ncontrol = "http://x"\ncontrol_group = "no-such-group-pg"\n')
    f = main_file(tmp_path)
    assert lines == [
        f'{f}: [procguard] control: expected "ipc:///path/to/socket" or "tcp://127.0.0.1:PORT", got \'http://x\'',
        f"{f}: [procguard] control_group: no such group 'no-such-group-pg' on this machine",
    ]


def test_tcp_control_without_curve_keys_is_refused(tmp_path: Path) -> None:
    [line] = refusal(tmp_path, '[procguard]\ncontrol = "tcp://127.0.0.1:7000"\n')
    assert line.startswith(f"{main_file(tmp_path)}: [procguard] control: tcp://127.0.0.1:7000: a tcp:// endpoint "
                           "needs CURVE keys in [procguard.curve]")


def test_curve_keys_must_exist_and_be_known(tmp_path: Path) -> None:
    lines = refusal(tmp_path, '[procguard]\ncontrol = "tcp://127.0.0.1:7000"\n[procguard.curve]\n'
                              'server_secret_key = "keys/server.key_secret"\nauthorised_clients = "keys/ok"\n')
    f = main_file(tmp_path)
    assert lines == [
        f"{f}: [procguard.curve] authorised_clients: unknown key (did you mean 'authorized_clients'?)",
        f"{f}: [procguard.curve] server_secret_key: {tmp_path}/keys/server.key_secret: no such file",
        f"{f}: [procguard.curve] authorized_clients: is required: a directory of clients' public NAME.key files",
    ]


def test_curve_keys_resolve_against_the_config_file(tmp_path: Path) -> None:
    write(tmp_path / "keys" / "server.key_secret", "x")
    (tmp_path / "keys" / "clients").mkdir()
    config = load(tmp_path, '[procguard]\ncontrol = "tcp://127.0.0.1:7000"\n[procguard.curve]\n'
                            'server_secret_key = "keys/server.key_secret"\nauthorized_clients = "keys/clients"\n')
    assert config.curve is not None
    assert config.curve.server_secret_key == f"{tmp_path}/keys/server.key_secret"
    assert config.curve.authorized_clients == f"{tmp_path}/keys/clients"


# ------------------------------------------------------------------------ output keys (#4)


def test_output_keys_default_like_supervisor_plus_tail_and_timestamps(tmp_path: Path) -> None:
    p = load_program(tmp_path, 'command = "/bin/true"')
    assert (p.stdout_logfile_maxbytes, p.stdout_logfile_backups) == (50 * 1024 * 1024, 10)
    assert (p.stderr_logfile_maxbytes, p.stderr_logfile_backups) == (50 * 1024 * 1024, 10)
    assert (p.stdout_logfile_timestamps, p.stderr_logfile_timestamps) == (False, False)
    assert (p.stdout_tail_maxbytes, p.stderr_tail_maxbytes) == (65536, 65536)


def test_output_keys_are_parsed(tmp_path: Path) -> None:
    p = load_program(tmp_path, 'command = "/bin/true"\nstdout_logfile_maxbytes = "1KB"\nstdout_logfile_backups = 0\n'
                               'stderr_logfile_timestamps = true\nstdout_tail_maxbytes = "1MB"\n')
    assert (p.stdout_logfile_maxbytes, p.stdout_logfile_backups) == (1024, 0)
    assert p.stderr_logfile_timestamps is True and p.stdout_tail_maxbytes == 1024 * 1024


def test_bad_output_keys_are_each_named(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program.web]\ncommand = "/bin/true"\nstdout_logfile_timestamps = "yes"\n'
                              'stderr_tail_maxbytes = "1GB"\n')
    f = main_file(tmp_path)
    assert lines == [
        f"{f}: [program.web] stdout_logfile_timestamps: expected true or false, got 'yes'",
        f"{f}: [program.web] stderr_tail_maxbytes: at most 64MB (it is kept in memory per process), got 1073741824",
    ]


# ------------------------------------------------- readiness, health, dependencies, guards (#5)


def test_readiness_defaults_follow_the_health_check(tmp_path: Path) -> None:
    from procguard.config.model import Ready
    plain = load_program(tmp_path, 'command = "/bin/true"')
    assert (plain.ready, plain.healthcheck, plain.type, plain.depends_on) == (Ready.STARTSECS, None, "simple", ())
    checked = load_program(tmp_path, 'command = "/bin/true"\n[program.web.healthcheck]\ntype = "tcp"\n'
                                     'address = "127.0.0.1:8000"\n')
    assert checked.ready == Ready.HEALTHCHECK and checked.healthcheck is not None
    assert (checked.healthcheck.interval, checked.healthcheck.timeout, checked.healthcheck.retries) == (10.0, 5.0, 3)
    notify = load_program(tmp_path, 'command = "/bin/true"\nready = "notify"\nstart_timeout = "90s"\n')
    assert notify.ready == Ready.NOTIFY and notify.start_timeout == 90.0


def test_http_healthcheck_keys_are_parsed(tmp_path: Path) -> None:
    p = load_program(tmp_path, 'command = "/bin/true"\n[program.web.healthcheck]\ntype = "http"\n'
                               'url = "http://127.0.0.1:8000/health/"\nhost = "example.com"\nexpect_status = [200, 204]\n'
                               'expect_body = "ok"\ninterval = "5s"\ntimeout = "2s"\nretries = 2\nstart_period = "30s"\n'
                               'on_unhealthy = "none"\nmethod = "head"\n')
    hc = p.healthcheck
    assert hc is not None
    assert (hc.url, hc.host, hc.expect_status, hc.expect_body, hc.method) == (
        "http://127.0.0.1:8000/health/", "example.com", (200, 204), "ok", "HEAD")
    assert (hc.interval, hc.timeout, hc.retries, hc.start_period, hc.on_unhealthy) == (5.0, 2.0, 2, 30.0, "none")


def test_bad_healthcheck_tables_name_each_key(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program.web]\ncommand = "/bin/true"\n[program.web.healthcheck]\n'
                              'type = "http"\nurl = "https://x/"\nexpect_status = 99\nretries = 0\ninterva = "1s"\n')
    f = main_file(tmp_path)
    assert lines == [
        f"{f}: [program.web] healthcheck.interva: unknown key (did you mean 'interval'?)",
        f"{f}: [program.web] healthcheck.url: expected \"http://host:port/path\" (plain HTTP), got 'https://x/'",
        f"{f}: [program.web] healthcheck.expect_status: expected an HTTP status or a list of them like [200, 204], got 99",
        f"{f}: [program.web] healthcheck.retries: expected an integer >= 1, got 0",
    ]


def test_healthcheck_type_needs_its_target(tmp_path: Path) -> None:
    for body, key in (('type = "tcp"', "healthcheck.address"), ('type = "exec"', "healthcheck.command"),
                      ('type = "uwsgi"', "healthcheck.address"), ('type = "http"', "healthcheck.url"),
                      ('type = "smtp"', "healthcheck.type")):
        [line] = refusal(tmp_path, HEADER + f'[program.web]\ncommand = "/bin/true"\n[program.web.healthcheck]\n{body}\n')
        assert f"[program.web] {key}: " in line, line


def test_ready_healthcheck_without_a_check_and_oneshot_misuse_are_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program.web]\ncommand = "/bin/true"\nready = "healthcheck"\n'
                              '[program.job]\ncommand = "/bin/true"\ntype = "oneshot"\nready = "notify"\n'
                              'max_age = "1d"\n[program.x]\ncommand = "/bin/true"\nready = "soon"\ntype = "daemon"\n')
    joined = "\n".join(lines)
    assert "[program.web] ready: is \"healthcheck\" but there is no [program.NAME.healthcheck] table" in joined
    assert "[program.job] type: a oneshot is done when it exits; ready and healthcheck do not apply" in joined
    assert "[program.job] type: max_memory and max_age restart services" in joined
    assert "[program.x] ready: expected \"startsecs\", \"notify\" or \"healthcheck\", got 'soon'" in joined
    assert "[program.x] type: expected \"simple\"" in joined


def test_unknown_dependencies_and_cycles_are_refused(tmp_path: Path) -> None:
    lines = refusal(tmp_path, HEADER + '[program.a]\ncommand = "/bin/true"\ndepends_on = ["b"]\n'
                              '[program.b]\ncommand = "/bin/true"\ndepends_on = ["c"]\n'
                              '[program.c]\ncommand = "/bin/true"\ndepends_on = ["a"]\n'
                              '[program.d]\ncommand = "/bin/true"\ndepends_on = ["dd", "d"]\n')
    f = main_file(tmp_path)
    assert f"{f}: [program.d] depends_on: no such program 'dd' (did you mean 'd'?)" in lines
    assert f"{f}: [program.d] depends_on: a program cannot depend on itself" in lines
    assert f"{f}: [program.a] depends_on: dependency cycle: a -> b -> c -> a" in lines
    assert len(lines) == 3


def test_resource_guards_are_parsed(tmp_path: Path) -> None:
    p = load_program(tmp_path, 'command = "/bin/true"\nmax_memory = "512MB"\nmax_age = "1d"\nmax_age_jitter = "1h"\n'
                               'resource_check_interval = "5s"\n')
    assert (p.max_memory, p.max_age, p.max_age_jitter, p.resource_check_interval) == (512 * 1024**2, 86400.0, 3600.0, 5.0)


def test_logdir_with_dot_dot_is_normalised(tmp_path: Path) -> None:
    """Regression (#6): output.py compares directories; "../var/log" kept its ".." and was never created."""
    config = load(tmp_path, '[procguard]\nlogdir = "x/../var/log"\n')
    assert config.logdir == str(tmp_path / "var" / "log")
