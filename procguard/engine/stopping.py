"""How one process's stop ends: stop signal, stray scans, SIGKILL after stopwaitsecs, until all is gone.

A stop is over only once the leader, its process group (stopasgroup) and every stray (a descendant
that left the group) are gone, and a last scan begun after that found nothing new. No I/O here: the
signals, scans and timers go through the OS seam, like `process.Process`, which owns one of these.
"""

import enum
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from procguard.engine.states import ProcessState
from procguard.runtime.seam import OSApi, Timer

if TYPE_CHECKING:
    from procguard.engine.process import Process

# Stop signals that need no SIGCONT after them to reach a stopped process.
_WAKES_ITSELF = frozenset({signal.SIGKILL, signal.SIGCONT})


class _Scan(enum.Enum):
    """Which stray scan of a stop is under way."""

    FIRST = enum.auto()  # at the stop signal, while the leader may still live
    SWEEP = enum.auto()  # once the leader, its group and every known stray are gone


class StopSequence:
    """The signals, scans and escalation of one process's stops (one at a time)."""

    def __init__(self, process: "Process", osapi: OSApi) -> None:
        self._proc = process
        self._os = osapi
        self.strays: set[int] = set()
        self._scan: _Scan | None = None  # a find_strays call not answered yet
        self._swept = False  # a scan begun once leader, group and known strays were gone found nothing
        self._killing = False  # the stop escalated to SIGKILL
        self._timer: Timer | None = None

    def begin(self) -> None:
        """Send the stop signal (and SIGCONT), arm stopwaitsecs, and scan for strays."""
        program = self._proc.program
        self._swept = False
        self._killing = False
        self._signal_all(program.stopsignal, group=program.stopasgroup)
        if program.stopsignal not in _WAKES_ITSELF:
            # A stopped (SIGSTOP, Ctrl-Z, a debugger) process would only see its stop signal at the
            # SIGKILL; SIGCONT right after lets it run its handler, as systemd does (systemd.kill(5)).
            self._signal_all(signal.SIGCONT, group=program.stopasgroup)
        self._timer = self._os.call_later(program.stopwaitsecs, self._timed_out)
        self._find_strays(_Scan.FIRST)

    def answer(self, pids: Iterable[int], *, stopping: bool) -> bool:
        """A stray scan's answer: signal what it found (as the group was); True when the stop goes on."""
        scan, self._scan = self._scan, None
        if not stopping:
            return False
        found = set(pids)
        if scan == _Scan.SWEEP and not found:
            self._swept = True
        new = found - self.strays
        self.strays |= new
        sig = signal.SIGKILL if self._killing else self._proc.program.stopsignal
        if new and self._killing:
            self._mark_killed()
        for pid in new:
            self._os.send_signal(pid, sig, group=False)
            if sig not in _WAKES_ITSELF:
                self._os.send_signal(pid, signal.SIGCONT, group=False)
        return True

    def is_over(self) -> bool:
        """The leader is gone: is everything else? If so the stop ends here (its timer cancelled)."""
        proc = self._proc
        if proc.pid is not None and proc.program.stopasgroup and self._os.is_group_alive(proc.pid):
            return False
        # A stray that is not our child may have been reaped by its own parent: forget it once gone.
        self.strays = {pid for pid in self.strays if self._os.is_alive(pid)}
        if self.strays or self._scan is not None:
            return False  # a scan under way may still find strays: they count as much as the group
        if not self._swept:
            # Everything known is gone; one more scan catches a descendant that escaped meanwhile (a
            # double fork racing the first scan). Over only once a scan begun now finds nothing.
            self._find_strays(_Scan.SWEEP)
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return True

    def _find_strays(self, scan: _Scan) -> None:
        self._scan = scan
        self._os.find_strays(self._proc, leader=self._proc.live_pid)

    def _timed_out(self) -> None:
        self._timer = None
        proc = self._proc
        if proc.state != ProcessState.STOPPING:
            return
        if proc.live_pid is not None or self.strays or (proc.pid is not None and self._os.is_group_alive(proc.pid)):
            # Only when something is left to kill: a stop that waits for its stray scan alone (slow on
            # a busy machine) has killed nothing, and its leader's own exit status says how it ended.
            self._mark_killed()
        self._killing = True
        self._signal_all(signal.SIGKILL, group=proc.program.killasgroup)
        for pid in self.strays:
            self._os.send_signal(pid, signal.SIGKILL, group=False)
        # Keep escalating until everything is gone (a process in D state may take a moment).
        self._timer = self._os.call_later(max(1.0, proc.program.stopwaitsecs), self._timed_out)

    def _mark_killed(self) -> None:
        self._proc.reason = f"killed: did not stop within stopwaitsecs ({self._proc.program.stopwaitsecs}s)"

    def _signal_all(self, sig: int, *, group: bool) -> None:
        pid = self._proc.pid
        if pid is None:
            return
        if self._proc.live_pid is not None or (group and self._os.is_group_alive(pid)):
            self._os.send_signal(pid, sig, group=group)


__all__ = ["StopSequence"]
