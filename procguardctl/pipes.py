"""End quietly when the reader of our output goes away (`procguardctl status | head -1`)."""

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

from procguardctl import exits

P = ParamSpec("P")


def quiet_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a CLI main so a closed stdout ends it without a traceback, with exit status exits.BROKEN_PIPE.

    Python ignores SIGPIPE, so a write to a pipe whose reader has gone raises BrokenPipeError wherever
    it happens (a status line, a `tail -f` chunk); catching it here, once, covers every command. stdout
    is then pointed at /dev/null so the interpreter's own flush at exit cannot raise it again
    (docs.python.org/3/library/signal.html, "Note on SIGPIPE").
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()  # what is still buffered fails here, not in the interpreter's exit
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return exits.BROKEN_PIPE

    return wrapper
