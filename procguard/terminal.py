"""argparse's help formatter for both command lines, without what argparse imports for it. Stdlib only.

argparse builds a HelpFormatter for every add_argument (to check the argument), and one without a
width imports shutil (and with it bz2 and lzma: 0.6 MiB of the daemon, 7 M instructions of every
procguardctl start, issue #17) and asks the terminal its size each time.
"""

import argparse
import os
import sys
from typing import Any


def _columns() -> int:
    """$COLUMNS, else the terminal's width, else 80 (shutil.get_terminal_size's rules)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (AttributeError, ValueError, OSError):
        return 80


_width: list[int] = []  # measured once per process


class HelpFormatter(argparse.HelpFormatter):
    """argparse.HelpFormatter at the terminal's width, measured once per process."""

    def __init__(self, prog: str) -> None:
        if not _width:
            _width.append(max(_columns() - 2, 20))
        super().__init__(prog, width=_width[0])


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with HelpFormatter by default (subparsers too: add_subparsers(parser_class=))."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
