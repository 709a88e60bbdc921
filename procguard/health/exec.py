"""The exec check: a command, run as the program's user, must exit 0; its first line of output says why not."""

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

from procguard.config.model import DEFAULT_PATH, HealthCheckConfig
from procguard.health.failed import CheckFailed
from procguard.runtime.seam import CommandSpawner, describe_exit
from procguard.runtime.spawn import spawn_watched

MAX_OUTPUT = 4 * 1024  # bytes of an exec check's output kept


class _Capture:
    """Drain a pipe's read end into at most `limit` bytes; the rest is read and dropped.

    Reading on, past the limit, keeps a chatty command from blocking on a full pipe.
    """

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.data = bytearray()
        self.is_eof = False

    def on_readable(self) -> None:
        self._read_once()

    def drain(self) -> None:
        """Take what is already in the pipe without waiting; bounded for a writer that never stops."""
        for _ in range(64):
            if self.is_eof or not self._read_once():
                return

    def _read_once(self) -> bool:
        if self.is_eof:
            return False
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.is_eof = True
            asyncio.get_running_loop().remove_reader(self.fd)
            return False
        room = self.limit - len(self.data)
        if room > 0:
            self.data += data[:room]
        return True


async def check_exec(
    hc: HealthCheckConfig,
    *,
    uid: int | None,
    gid: int | None,
    extra_groups: tuple[int, ...] | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    spawner: CommandSpawner | None = None,
) -> None:
    if not hc.command:
        raise CheckFailed("exec check has no command")
    loop = asyncio.get_running_loop()
    # Our own pipe, read until the command exits rather than until EOF: a background grandchild
    # holding stdout would delay EOF forever.
    read_fd, write_fd = os.pipe()
    capture = _Capture(read_fd, MAX_OUTPUT)
    # spawn.popen: in its own process group, so a timeout kills what it started too; stderr into stdout.
    popen_kwargs: dict[str, Any] = dict(
        stdout=write_fd, env=dict(env) if env is not None else {"PATH": DEFAULT_PATH}, cwd=cwd,
        user=uid, group=gid, extra_groups=list(extra_groups) if extra_groups is not None else None,
    )
    pid: int | None = None
    exited: asyncio.Future[int] | None = None
    try:
        try:
            pid, exited = await (spawner or spawn_watched)(list(hc.command), **popen_kwargs)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            raise CheckFailed(_cannot_run(exc, hc.command[0], cwd)) from None
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        loop.add_reader(read_fd, capture.on_readable)
        code = await asyncio.shield(exited)
        # Everything the command wrote is in the pipe by now; take it without waiting for EOF,
        # which a background process still holding the pipe could withhold.
        capture.drain()
    finally:
        loop.remove_reader(read_fd)
        os.close(read_fd)
        if pid is not None and exited is not None and not exited.done():
            # Timeout or cancel: kill the command and all it started in its group. The id cannot
            # name a stranger's group while ours has a member: POSIX does not reuse a process group
            # id before the group is empty.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            # Shielded, as trio does: a second cancel ends our waiting, never the reaping.
            await asyncio.shield(exited)
    _judge(code, bytes(capture.data))


def _judge(code: int, output: bytes) -> None:
    """Raise CheckFailed unless the command exited 0: how it ended, and its first line of output."""
    if code == 0:
        return
    first = _first_line(output)
    what = describe_exit(code, signalled="killed by")
    raise CheckFailed(f"{what}: {first}" if first else what)


def _cannot_run(exc: BaseException, program: str, cwd: str | None) -> str:
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if cwd is not None and exc.filename == cwd:
            return f"cannot run {program}: directory {cwd}: {what}"
        return f"cannot run {program}: {what}"
    return f"cannot run {program}: {exc}"


def _first_line(output: bytes) -> str:
    for line in output.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= 200 else line[:200] + "..."
    return ""
