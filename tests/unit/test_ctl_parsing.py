"""procguardctl builds only the subcommand it runs, and prints uptime without datetime (issue #17)."""

import random
from datetime import timedelta

import pytest

from procguardctl.cli import build_parser, command_in
from procguardctl.render import uptime

ARGVS = [
    ["status"], ["-s", "ipc:///x", "status", "-l", "web"], ["--json", "--timeout", "3", "stop", "web", "db"],
    ["-c", "status", "start", "all"],  # a config file named like a command is still the config
    ["--server=ipc:///x", "restart", "web"], ["signal", "HUP", "web"], ["tail", "-f", "-n", "5", "web", "stderr"],
    ["reload-app", "web"], ["update"], ["avail"], ["pid"], ["logrotate"], ["keygen", "/tmp/k"],
    ["import-supervisor", "s.conf", "-o", "out", "--force"], ["maintail", "-f"], ["clear", "all"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_the_one_subcommand_parser_reads_argv_as_the_full_one(argv):
    assert build_parser(command_in(argv)).parse_args(argv) == build_parser().parse_args(argv)


@pytest.mark.parametrize("argv", [["bogus"], ["--timeout", "3", "statu"], ["-s", "ipc:///x"], ["stop"]], ids=" ".join)
def test_bad_command_lines_get_the_full_parsers_errors(argv, capsys):
    with pytest.raises(SystemExit) as lazy:
        build_parser(command_in(argv)).parse_args(argv)
    lazy_err = capsys.readouterr().err
    with pytest.raises(SystemExit) as full:
        build_parser().parse_args(argv)
    assert (lazy.value.code, lazy_err) == (full.value.code, capsys.readouterr().err)


def test_uptime_reads_as_timedelta_does():
    for s in [0, 59, 3599, 3600, 86399, 86400, 86401, 172800] + random.Random(17).sample(range(10**9), 2000):
        assert uptime(s) == str(timedelta(seconds=s))
