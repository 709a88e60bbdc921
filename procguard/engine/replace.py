"""Two generations of one process: the next one starts beside the current one and takes over once ready.

No I/O here: `Replacement` takes the next generation's state changes and acts through the OS seam,
like `Process`. One replacement, for one running process:

    PREPARING  fresh sockets for the next generation, receiving no public traffic (OSApi.prepare_next)
    STARTING   the next generation runs beside the current one, until ready by its own rule (READY=1,
               its health check, which reaches it through its own sockets, or startsecs) within
               start_timeout
    SWITCHING  new connections go to the next generation in one step; the current one answers what it
               had taken (OSApi.switch_to_next)
    STOPPING   the current generation stops with its own stop signal (its group and strays too)
    SUCCEEDED  the next generation is the process now

    PREPARING/STARTING --sockets refused, next exits or is not ready in time--> FAILED: the next
    generation is stopped (group and strays), its sockets closed; the current one never noticed.

The next generation is a `Process` of its own with `trial` set (no retry, no restart) whose state
machine does the starting, readiness and stopping; the supervisor swaps it in on SUCCEEDED.
"""

from collections.abc import Callable

from procguard.engine.process import Process
from procguard.engine.states import RESTING_STATES, ProcessState, ReplacePhase, ReplaceTrigger
from procguard.runtime.seam import OSApi

DONE_PHASES = frozenset({ReplacePhase.SUCCEEDED, ReplacePhase.FAILED})


class Replacement:
    """Replace `current` by `nxt` (a fresh trial Process of the same slot, not started yet)."""

    def __init__(self, current: Process, nxt: Process, osapi: OSApi, trigger: ReplaceTrigger,
                 on_phase: Callable[["Replacement"], None]) -> None:
        self.current = current
        self.next = nxt
        self.trigger = trigger
        self._os = osapi
        self._on_phase = on_phase  # after every phase change (the supervisor logs and wakes waiters)
        self.phase = ReplacePhase.PREPARING
        self.reason = ""  # why it failed
        self.failed_in = ReplacePhase.PREPARING  # the phase it failed in
        self._sockets_prepared = False
        self._finished = False
        nxt.trial = True
        nxt.generation = current.generation + 1

    @property
    def done(self) -> bool:
        return self.phase in DONE_PHASES

    def begin(self) -> None:
        self._set(ReplacePhase.PREPARING)
        self._os.prepare_next(self.next, self._prepared)

    def abort(self, reason: str) -> None:
        """Give up before the switch (the daemon stops, the operator stopped the program)."""
        if self.phase in (ReplacePhase.PREPARING, ReplacePhase.STARTING):
            self._fail(reason)

    # -------------------------------------------------------------------------------------- events

    def _prepared(self, reason: str | None) -> None:
        if self.phase != ReplacePhase.PREPARING:
            return  # aborted meanwhile
        if reason is not None:
            self._fail(reason)
            return
        self._sockets_prepared = True
        if self.current.state != ProcessState.RUNNING:
            self._fail(f"the current generation is {self.current.state} now")
            return
        self._set(ReplacePhase.STARTING)
        self.next.start()

    def next_changed(self, new: ProcessState) -> None:
        """The next generation changed state."""
        if self.phase == ReplacePhase.STARTING:
            if new == ProcessState.RUNNING:
                self._set(ReplacePhase.SWITCHING)
                self.next.trial = False  # from now on it is the one that serves: it restarts as any process
                self.current.retiring = True
                self._os.switch_to_next(self.current, self.next, self._switched)
            elif new in (*RESTING_STATES, ProcessState.BACKOFF):
                self._fail(self.next.reason)
        elif self.phase == ReplacePhase.FAILED and new in (*RESTING_STATES, ProcessState.BACKOFF):
            self._finish_failed()

    def current_changed(self, new: ProcessState) -> None:
        """The current generation changed state."""
        if self.phase in (ReplacePhase.SWITCHING, ReplacePhase.STOPPING) and new in RESTING_STATES:
            self._set(ReplacePhase.SUCCEEDED)  # stopped, or (retiring) exited by itself meanwhile
        elif self.phase in (ReplacePhase.PREPARING, ReplacePhase.STARTING) and new != ProcessState.RUNNING:
            # Stopped by the operator, or crashed (it restarts in place by its own rules): no replace now.
            self._fail(f"the current generation went {new} ({self.current.reason})")

    def _switched(self) -> None:
        """The current generation has answered what it had taken: stop it."""
        if self.phase != ReplacePhase.SWITCHING:
            return
        self._set(ReplacePhase.STOPPING)
        if self.current.state in RESTING_STATES or not self.current.stop():
            self._set(ReplacePhase.SUCCEEDED)

    # ------------------------------------------------------------------------------------- helpers

    def _fail(self, reason: str) -> None:
        self.reason = reason
        self.failed_in = self.phase
        self._set_phase_only(ReplacePhase.FAILED)
        if self.next.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING):
            self.next.reason = reason
            self.next.stop()  # its whole group and strays (Process.stop); _finish_failed once at rest
            if self.next.state not in (*RESTING_STATES, ProcessState.BACKOFF):
                return
        self._finish_failed()

    def _finish_failed(self) -> None:
        if self._finished:
            return
        self._finished = True
        if self._sockets_prepared:
            self._sockets_prepared = False
            self._os.discard_next(self.next)
        self._os.forget(self.next)
        self._on_phase(self)

    def _set_phase_only(self, phase: ReplacePhase) -> None:
        self.phase = phase

    def _set(self, phase: ReplacePhase) -> None:
        self.phase = phase
        self._on_phase(self)


__all__ = ["DONE_PHASES", "Replacement"]
