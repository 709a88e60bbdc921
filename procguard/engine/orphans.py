"""The groups a crashed leader left serving: they finish what they took, then go (docs/deploys.md).

When a master of an overlapping program dies while its workers still hold requests, its replacement
starts at once on fresh sockets and the orphaned group finishes its connections first. No I/O here.
"""

import signal
from typing import TYPE_CHECKING

from procguard.runtime.seam import OSApi

if TYPE_CHECKING:
    from procguard.engine.process import Process


class OrphanGroups:
    """The orphaned process groups of one process: each drains (or ends by itself), then stops."""

    def __init__(self, process: "Process", osapi: OSApi) -> None:
        self._proc = process
        self._os = osapi
        self.groups: set[int] = set()  # draining before their stop signal

    def retire(self, pgid: int) -> None:
        """The leader of group pgid died: let the group finish, then stop it (SIGKILL at stopwaitsecs)."""
        program = self._proc.program
        self.groups.add(pgid)
        serve = program.orphans_serve
        self._proc.on_event(self._proc, "orphans_draining", {"pgid": pgid, "handover": serve})
        if serve:
            self._os.drain_orphans(self._proc, pgid, lambda: self._drained(pgid))
        else:
            # They exit by themselves after the request under way (uWSGI): no handover, so what is queued
            # on the held sockets stays for the replacement, and no stop signal (uWSGI's worker TERM
            # handler exits at once, cutting that request off); SIGKILL only if still there at stopwaitsecs.
            self._os.call_later(program.stopwaitsecs, lambda: self._timed_out(pgid))

    def _drained(self, pgid: int) -> None:
        if pgid not in self.groups:
            return
        self._os.send_signal(pgid, self._proc.program.stopsignal, group=True)
        self._os.call_later(self._proc.program.stopwaitsecs, lambda: self._timed_out(pgid))

    def _timed_out(self, pgid: int) -> None:
        self.groups.discard(pgid)
        if self._os.is_group_alive(pgid):
            self._proc.on_event(self._proc, "orphans_killed",
                                {"pgid": pgid, "stopwaitsecs": self._proc.program.stopwaitsecs})
            self._os.send_signal(pgid, signal.SIGKILL, group=True)


__all__ = ["OrphanGroups"]
