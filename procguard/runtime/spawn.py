"""How a child starts: the only Popen in procguard, for programs, exec health checks and helper commands.

Every child gets its own process group, /dev/null on stdin, default signal dispositions, no descriptor
beyond 0/1/2 and those passed to it, and the configured user, groups, umask and directory, all through
Popen's keywords: not preexec_fn, which is unsafe once threads exist (pyzmq starts some). Popen runs in
a thread, as trio does: a large daemon's fork can take milliseconds.

A program's child (`ChildStarter`) gets what it inherits through one call each: its output pipes
(io/output.py), its NOTIFY_SOCKET (io/notify.py) and its held sockets (io/handover.py); its environment
was resolved with the config (config/).

Held sockets: Popen cannot place descriptors at chosen numbers without preexec_fn, so the child first
runs a few lines of Python (SHIM) that move the inherited fds to 3.., set LISTEN_PID to its own pid
(which exec keeps) and exec the real command.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from procguard.config.model import ProcessConfig, ProgramConfig
from procguard.errors import SpawnError
from procguard.log import get_logger

if TYPE_CHECKING:
    from procguard.engine.process import Process
    from procguard.io.handover import Handover
    from procguard.io.notify import NotifySockets
    from procguard.io.output import Output, SpawnPipes
    from procguard.runtime.reaper import Reaper

log = get_logger()

SHIM = """\
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
n = len(fds)
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + n) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i)
    os.close(fd)
if os.environ.get("LISTEN_FDNAMES") is not None:
    os.environ["LISTEN_FDS"] = str(n)
    os.environ["LISTEN_PID"] = str(os.getpid())
argv = sys.argv[2:]
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("procguard: cannot run %s: %s\\n" % (argv[0], exc.strerror))
    os._exit(127)
"""


def popen(argv: list[str], *, stdout: int, stderr: int | None = None, env: dict[str, str], cwd: str | None = None,
          user: int | None = None, group: int | None = None, extra_groups: list[int] | None = None,
          umask: int = -1, pass_fds: tuple[int, ...] = ()) -> "subprocess.Popen[bytes]":
    """Start argv as a child (module doc); blocking, so call it off the event loop.

    stderr None: into stdout. Raises what Popen raises (OSError, SubprocessError, ValueError).
    """
    return subprocess.Popen(
        argv,
        pass_fds=pass_fds,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stderr is None else stderr,
        close_fds=True,
        process_group=0,
        restore_signals=True,
        user=user,
        group=group,
        extra_groups=extra_groups,
        umask=umask,
    )


def spawn_process(program: ProgramConfig, proc: ProcessConfig, stdout: int, stderr: int | None,
                  extra_env: dict[str, str] | None = None, fds: list[int] | None = None) -> "subprocess.Popen[bytes]":
    """Start one process of a program and return its Popen; blocking, so call it off the event loop.

    stdout and stderr are the write ends of the output pipes (stderr None: redirected to stdout);
    extra_env adds what the daemon provides per spawn (NOTIFY_SOCKET); fds are held sockets, which
    the child gets at 3.. with LISTEN_FDS (wrap_command). The child gets exactly the resolved
    environment. Raises SpawnError with the reason (no such file, permission denied, too many open
    files, ...).
    """
    try:
        env = dict(proc.environment) | (extra_env or {})
        argv = list(proc.command)
        if fds:
            argv = wrap_command(argv, fds, env.get("PATH"))
            if program.listen_env:  # the shim adds LISTEN_FDS and LISTEN_PID when this is set
                env["LISTEN_FDNAMES"] = ":".join(program.sockets)
        return popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=proc.directory, user=program.uid,
                     group=program.gid,
                     extra_groups=list(program.extra_groups) if program.extra_groups is not None else None,
                     umask=-1 if program.umask is None else program.umask, pass_fds=tuple(fds or ()))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SpawnError(_reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.filename is not None:
            return f"{what}: {exc.filename}"
        return what
    return str(exc) or type(exc).__name__


def wrap_command(argv: list[str], fds: list[int], path: str | None) -> list[str]:
    """The argv that runs `argv` with `fds` at 3.. (see SHIM). Raises FileNotFoundError early, as Popen would."""
    import shutil  # here: shutil brings bz2 and lzma, 0.6 MiB an idle daemon without sockets never needs (#17)

    if "/" not in argv[0] and shutil.which(argv[0], path=path) is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    return [sys.executable, "-S", "-c", SHIM, ",".join(map(str, fds)), *argv]


# ------------------------------------------------------------------------------ helper commands


async def start_command(argv: Sequence[str], adopt: "Callable[[subprocess.Popen[bytes]], None]",
                        **popen_kwargs: Any) -> "subprocess.Popen[bytes]":
    """popen(argv, **popen_kwargs) off the loop. Raises what popen raises.

    Cancelled while forking, the child exists all the same: `adopt(child)` takes it (kills its group
    and sees that its exit is collected), then CancelledError propagates.
    """
    started = asyncio.ensure_future(asyncio.to_thread(popen, list(argv), **popen_kwargs))
    try:
        return await asyncio.shield(started)
    except asyncio.CancelledError:
        try:
            child = await started
        except Exception:
            raise asyncio.CancelledError from None
        adopt(child)
        raise


async def spawn_watched(argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]":
    """A helper command outside the daemon (no reaper owns the children): its pid, and a future of its
    exit code (negative: killed by that signal) that a thread waiting on it sets."""
    child = await start_command(argv, _kill_unwatched, **popen_kwargs)
    return child.pid, asyncio.ensure_future(asyncio.to_thread(child.wait))


def _kill_unwatched(child: "subprocess.Popen[bytes]") -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    threading.Thread(target=child.wait, name=f"reap-{child.pid}", daemon=True).start()


# ------------------------------------------------------------------------------ program children


class ChildStarter:
    """Starts the children of programs: gathers what each inherits, runs Popen off the loop, hands the
    pid to the reaper, and tells the process (spawned or spawn_failed) and then on_spawned."""

    def __init__(self, output: "Output", notify: "NotifySockets", handover: "Handover", reaper: "Reaper",
                 on_spawned: "Callable[[Process], None]") -> None:
        self._output = output
        self._notify = notify
        self._handover = handover
        self._reaper = reaper
        self._on_spawned = on_spawned

    async def start(self, process: "Process") -> None:
        await self._handover.settled(process)  # the sockets move away from a crashed leader's orphans first
        with self._reaper.expecting():
            inherited = self._inherited(process)
            if inherited is not None:
                await self._fork(process, *inherited)

    def _inherited(self, process: "Process") -> "tuple[SpawnPipes, dict[str, str]] | None":
        """The child's output pipes and extra environment (NOTIFY_SOCKET); None when one of them cannot be
        made (the process was told why)."""
        try:
            # A generation on trial keeps its own last output too: a failed deploy's reply shows its last words.
            tap = self._output.trial_tail(process.program, process.config, process.generation,
                                          lambda: process.trial) if process.trial else None
            pipes = self._output.open_pipes(process.program, process.config, tap)
        except OSError as exc:
            reason = f"cannot create output pipes: {exc.strerror or exc}"
            log.warning("spawn_failed", program=process.program.name, process=process.name, reason=reason)
            process.spawn_failed(reason)
            return None
        try:
            return pipes, self._notify.env_for(process)
        except OSError as exc:
            pipes.abandon()
            process.spawn_failed(f"cannot create its NOTIFY_SOCKET: {exc.strerror or exc}")
            return None

    async def _fork(self, process: "Process", pipes: "SpawnPipes", extra_env: dict[str, str]) -> None:
        try:
            fds = self._handover.fds_for(process)
            child = await asyncio.to_thread(spawn_process, process.program, process.config,
                                            pipes.stdout, pipes.stderr, extra_env, fds)
        except SpawnError as exc:
            pipes.abandon()
            log.warning("spawn_failed", program=process.program.name, process=process.name, reason=str(exc))
            process.spawn_failed(str(exc))
            return
        except BaseException:
            pipes.abandon()
            raise
        pipes.attach()
        self._reaper.add_process(process, child)
        log.info("process_spawned", program=process.program.name, process=process.name, pid=child.pid)
        process.spawned(child.pid)
        self._on_spawned(process)
        self._reaper.deliver_early(child.pid)  # it may have died before the spawn thread returned
