"""One reaper for every child of the daemon, and the registry of whose each pid is.

Why one reaper: the daemon is a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), so orphaned
descendants of any program become its children and must be reaped. Two reapers (pidfds for our own
children plus waitpid(-1) for orphans) would race for the same zombie, so SIGCHLD wakes the loop and
`reap()` collects every zombie with waitpid(-1, WNOHANG). Pid reuse cannot bite: a pid is not reused
until we reap it, and we mark the process gone in the same loop step.
"""

import asyncio
import contextlib
import ctypes
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from procguard.engine.process import Process

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Reaper:
    """Collects every child's exit status and gives it to whoever owns the pid.

    A process leader's exit goes to its Process (exited), a helper command's to its future, and any
    other child's (orphans, strays) to on_reaped. A child can exit before the thread that forked it
    has returned its pid: while spawns are under way (`expecting`), statuses of unknown pids are kept
    for the spawn to claim.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, on_reaped: Callable[[int], None]) -> None:
        self._loop = loop
        self._on_reaped = on_reaped
        self._by_pid: dict[int, Process] = {}
        self._popens: dict[int, subprocess.Popen[Any]] = {}
        self._command_exits: dict[int, asyncio.Future[int]] = {}
        self._early_exits: dict[int, int] = {}
        self._spawns_in_flight = 0

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Around a spawn: keep the statuses of unknown pids until it has registered its child."""
        self._spawns_in_flight += 1
        try:
            yield
        finally:
            self._spawns_in_flight -= 1
            if self._spawns_in_flight == 0:
                self._early_exits.clear()

    def add_process(self, process: Process, popen: "subprocess.Popen[Any]") -> None:
        """popen leads process; call deliver_early(pid) once the process knows its pid."""
        self._by_pid[popen.pid] = process
        self._popens[popen.pid] = popen

    def adopt(self, process: Process, pid: int) -> None:
        """pid leads process, started by a previous image of this daemon (same pid: upgrade/adopt.py).

        No Popen: its exit, even one that waits as a zombie since the exec, is reaped as any other's.
        """
        self._by_pid[pid] = process

    def add_command(self, popen: "subprocess.Popen[Any]") -> "asyncio.Future[int]":
        """A helper command: the future of its exit code."""
        exited: asyncio.Future[int] = self._loop.create_future()
        self._popens[popen.pid] = popen
        self._command_exits[popen.pid] = exited
        self.deliver_early(popen.pid)
        return exited

    def deliver_early(self, pid: int) -> None:
        """Give pid's owner the status reaped before it was registered, if there was one."""
        early = self._early_exits.pop(pid, None)
        if early is not None:
            self._deliver(pid, early)

    def reap(self) -> None:
        """Collect every zombie child; called when SIGCHLD wakes the loop."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            self._deliver(pid, os.waitstatus_to_exitcode(status))

    def _deliver(self, pid: int, code: int) -> None:
        process = self._by_pid.pop(pid, None)
        popen = self._popens.pop(pid, None)
        if popen is not None:
            popen.returncode = code  # so Popen never waits on a pid that may be reused
        command = self._command_exits.pop(pid, None)
        if command is not None:
            if not command.done():
                command.set_result(code)
        elif process is not None:
            process.exited(code)
            # A leader is no other process's group member or stray: telling every stopping process
            # (on_reaped) made a shutdown of 1000 programs O(N^2), a third of its loop time (#17).
            return
        elif self._spawns_in_flight:
            self._early_exits[pid] = code
        self._on_reaped(pid)

    def leaders(self) -> set[int]:
        """The pids of live process leaders."""
        return set(self._by_pid)

    def tracked_pids(self) -> set[int]:
        """Every child someone waits for: process leaders and helper commands."""
        return set(self._by_pid) | set(self._command_exits)
