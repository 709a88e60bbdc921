"""Build the Popen call for one process: group, user, umask, directory, environment, descriptors."""

import os
import subprocess
from contextlib import ExitStack
from typing import IO

from procguard.config import LOG_INHERIT, LOG_NONE, ProcessConfig, ProgramConfig
from procguard.errors import SpawnError


def _open_log(path: str, stack: ExitStack) -> int | IO[bytes] | None:
    if path == LOG_NONE:
        return subprocess.DEVNULL
    if path == LOG_INHERIT:
        return None
    # O_APPEND: several writers (or an external logrotate copytruncate) never overwrite each other.
    return stack.enter_context(open(path, "ab", buffering=0))


def spawn_process(program: ProgramConfig, proc: ProcessConfig, logdir: str) -> subprocess.Popen[bytes]:
    """Start the child and return its Popen; blocking, so call it off the event loop.

    The child gets its own process group, the configured user/group/supplementary groups/umask/
    directory, exactly the resolved environment, /dev/null on stdin, and no descriptor beyond 0/1/2.
    Raises SpawnError with the reason (no such file, permission denied, too many open files, ...).
    """
    with ExitStack() as stack:
        try:
            if proc.stdout_logfile.startswith(logdir) or proc.stderr_logfile.startswith(logdir):
                os.makedirs(logdir, mode=0o755, exist_ok=True)
            stdout = _open_log(proc.stdout_logfile, stack)
            stderr: int | IO[bytes] | None = (
                subprocess.STDOUT if program.redirect_stderr else _open_log(proc.stderr_logfile, stack)
            )
            # Popen keywords, not preexec_fn: preexec_fn is unsafe once threads exist (pyzmq starts some).
            return subprocess.Popen(
                list(proc.command),
                cwd=proc.directory,
                env=dict(proc.environment),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                close_fds=True,
                process_group=0,
                restore_signals=True,
                user=program.uid,
                group=program.gid,
                extra_groups=list(program.extra_groups) if program.extra_groups is not None else None,
                umask=-1 if program.umask is None else program.umask,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise SpawnError(_reason(exc, proc)) from exc


def _reason(exc: BaseException, proc: ProcessConfig) -> str:
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename is not None:
            return f"{what}: {exc.filename}"
        return what
    return str(exc) or type(exc).__name__
