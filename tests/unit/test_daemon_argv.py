"""The daemon's command line is read without argparse in its usual forms, with argparse's answers (#17)."""

import subprocess
import sys

import pytest

from procguard.argv import ADOPT_FLAG, Args, argparser, parse_args, plain_args

PLAIN = [
    ["-c", "/etc/procguard.toml"],
    ["--config", "a.toml", "--check"],
    ["--check", "--config=a b.toml"],
    ["-c", "x.toml", "--log-level", "debug", "--log-format", "journal"],
    ["--log-format=json", "--log-level=error", "-c", "x.toml"],
    ["-c", "first.toml", "-c", "second.toml"],  # the last one wins, as with argparse
    ["-c", "x.toml", ADOPT_FLAG, "7"],
    ["-c", "x.toml", f"{ADOPT_FLAG}=12", "--check", "--check"],
]

# Forms left to argparse: it accepts some (abbreviations, attached values, a negative number) and refuses
# the rest with its usual message and exit status 2.
FOR_ARGPARSE = [
    ["--conf", "x.toml"],
    ["-cx.toml"],
    ["-c=x.toml"],
    ["-c", "x.toml", ADOPT_FLAG, "-1"],
    ["-c", "x.toml", "--log-lev", "info"],
    [],
    ["--check"],
    ["-c"],
    ["-c", "--check"],
    ["-c", "x.toml", "--log-level", "loud"],
    ["-c", "x.toml", "--log-format="],
    ["-c", "x.toml", ADOPT_FLAG, "seven"],
    ["-c", "x.toml", "extra"],
    ["-c", "x.toml", "--", "y"],
    ["--check=yes", "-c", "x.toml"],
    ["--config="],
]


def by_argparse(argv: list[str]) -> Args:
    ns = argparser().parse_args(argv)
    return Args(ns.config, ns.check, ns.log_level, ns.log_format, ns.adopt_state_fd)


@pytest.mark.parametrize("argv", PLAIN)
def test_plain_command_lines_read_as_argparse_reads_them(argv):
    assert plain_args(argv) == by_argparse(argv)
    assert parse_args(argv) == by_argparse(argv)


@pytest.mark.parametrize("argv", FOR_ARGPARSE)
def test_other_command_lines_get_argparse_answer(argv, capsys):
    assert plain_args(argv) is None
    try:
        expected: Args | int = by_argparse(argv)
    except SystemExit as exc:
        expected = int(exc.code or 0)
    want_err = capsys.readouterr().err
    try:
        got: Args | int = parse_args(argv)
    except SystemExit as exc:
        got = int(exc.code or 0)
    assert got == expected
    assert capsys.readouterr().err == want_err


def test_usual_command_line_does_not_import_argparse():
    code = ("import sys; from procguard.argv import parse_args; "
            "a = parse_args(['-c', 'x.toml', '--log-format', 'json']); "
            "print(a.config, a.log_format, 'argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["x.toml", "json", "False"]
