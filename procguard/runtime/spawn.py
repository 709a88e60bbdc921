"""Build the Popen call for one process: group, user, umask, directory, environment, descriptors."""

import subprocess

from procguard.config.model import ProcessConfig, ProgramConfig
from procguard.errors import SpawnError
from procguard.io.listeners import wrap_command


def spawn_process(program: ProgramConfig, proc: ProcessConfig, stdout: int, stderr: int | None,
                  extra_env: dict[str, str] | None = None, fds: list[int] | None = None) -> subprocess.Popen[bytes]:
    """Start the child and return its Popen; blocking, so call it off the event loop.

    stdout and stderr are the write ends of the output pipes (stderr None: redirected to stdout);
    extra_env adds what the daemon provides per spawn (NOTIFY_SOCKET); fds are held sockets, which
    the child gets at 3.. with LISTEN_FDS (sockets.wrap_command).
    The child gets its own process group, the configured user/group/supplementary groups/umask/
    directory, exactly the resolved environment, /dev/null on stdin, and no descriptor beyond 0/1/2.
    Raises SpawnError with the reason (no such file, permission denied, too many open files, ...).
    """
    try:
        env = dict(proc.environment) | (extra_env or {})
        argv = list(proc.command)
        if fds:
            argv = wrap_command(argv, fds, env.get("PATH"))
            if program.listen_env:  # the shim adds LISTEN_FDS and LISTEN_PID when this is set
                env["LISTEN_FDNAMES"] = ":".join(program.sockets)
        # Popen keywords, not preexec_fn: preexec_fn is unsafe once threads exist (pyzmq starts some).
        return subprocess.Popen(
            argv,
            pass_fds=tuple(fds or ()),
            cwd=proc.directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stderr is None else stderr,
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
