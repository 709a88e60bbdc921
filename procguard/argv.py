"""The daemon's command line (`procguard -c CONFIG [--check] ...`), read without argparse in its usual forms.

argparse (with gettext) stays in memory once imported: 0.35 MiB of a daemon's private memory for a
dozen tokens read once (issue #17, benchmarks/RESULTS.md). `parse_args` reads the plain spellings
itself (`--opt value`, `--opt=value`, `--check`) and hands anything else (help, --version, an
abbreviation, a missing or bad value) to argparse, which prints and exits exactly as it always did.
tests/unit/test_daemon_argv.py checks both paths give the same answer.
"""

import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from procguard.protocol import VERSION

if TYPE_CHECKING:
    import argparse

    from procguard.log import Format

ADOPT_FLAG = "--adopt-state-fd"  # the state a re-exec hands to the new image (upgrade/handoff.py)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json", "journal")


class Args(NamedTuple):
    config: str
    check: bool = False
    log_level: str | None = None
    log_format: "Format" = "auto"
    adopt_state_fd: int | None = None  # a re-exec's saved state (upgrade/handoff.py)


# Every option that takes a value, by its exact spelling; the value's type and allowed values.
_VALUED: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "-c": ("config", str, ()), "--config": ("config", str, ()),
    "--log-level": ("log_level", str, LOG_LEVELS), "--log-format": ("log_format", str, LOG_FORMATS),
    ADOPT_FLAG: ("adopt_state_fd", int, ()),
}


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line (default: sys.argv[1:]); argparse exits on help, --version and errors."""
    args = plain_args(sys.argv[1:] if argv is None else argv)
    if args is None:
        ns = argparser().parse_args(argv)
        args = Args(ns.config, ns.check, ns.log_level, ns.log_format, ns.adopt_state_fd)
    return args


def plain_args(argv: list[str]) -> Args | None:
    """argv read in the plain forms only; None for anything argparse must read (or refuse)."""
    found: dict[str, Any] = {}
    tokens = iter(argv)
    for token in tokens:
        if token == "--check":
            found["check"] = True
            continue
        flag, eq, value = token.partition("=")
        spec = _VALUED.get(flag)
        if spec is None or (eq and not flag.startswith("--")):
            return None
        if not eq:
            value = next(tokens, "")
        dest, kind, choices = spec
        if not value or value.startswith("-") or (choices and value not in choices):
            return None  # argparse decides what a dash or an empty value means, and says what is wrong
        try:
            found[dest] = kind(value)
        except ValueError:
            return None
    return Args(**found) if "config" in found else None


def argparser() -> "argparse.ArgumentParser":
    """The full parser: --help's text, --version, abbreviations and every error message."""
    import argparse

    from procguard.terminal import HelpFormatter

    parser = argparse.ArgumentParser(prog="procguard", description="Supervise app server processes.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="main TOML config file")
    parser.add_argument("--check", action="store_true", help="validate the config, print the programs, exit 0/1")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="override loglevel")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="auto",
                        help="auto: journal under systemd (JOURNAL_STREAM), console on a TTY, else json")
    parser.add_argument("--version", action="version", version=f"procguard {VERSION}")
    parser.add_argument(ADOPT_FLAG, type=int, metavar="FD", help=argparse.SUPPRESS)  # a re-exec's state
    return parser
