"""One process's state machine: events in, calls on the OS seam out. No I/O here.

States are supervisor's, so scripts that parse `supervisorctl status` keep working:

    STOPPED --start--> STARTING --ready (startsecs up)--> RUNNING
    STARTING --exit / spawn failure--> BACKOFF --delay--> STARTING    (or FATAL once startretries is used up)
    RUNNING --exit--> EXITED --autorestart says so--> STARTING (at once after a stable run, else after a delay)
    STARTING/RUNNING --stop--> STOPPING --leader, group and strays gone--> STOPPED
    BACKOFF --stop--> STOPPED;  EXITED/FATAL --start--> STARTING

Events: `start`, `stop`, `spawned`, `spawn_failed`, `exited`, `child_reaped`, and timers the machine sets
itself through the seam. Every transition is reported to `on_change(process, old, new)`.
"""

import random
import signal
from collections.abc import Callable, Iterable

from procguard.config.model import OnUnhealthy, ProcessConfig, ProgramConfig, ProgramType, Ready
from procguard.engine import policy
from procguard.engine.orphans import OrphanGroups
from procguard.engine.stopping import StopSequence
from procguard.engine.states import (
    RESTING_STATES, ExitReason, Health, Hold, ProcessState, ReplaceTrigger, StopIntent,
)
from procguard.runtime.seam import OSApi, Timer, describe_exit

# A health transition or recycle, for the supervisor's log (no I/O here): (process, event, fields).
OnEvent = Callable[["Process", str, dict[str, object]], None]
# Asks for an overlapping replace (health, max_age, max_memory); False: none could begin.
OnReplace = Callable[["Process", str, ReplaceTrigger], bool]


class Process:
    """State machine for one process of a program."""

    def __init__(
        self,
        program: ProgramConfig,
        config: ProcessConfig,
        osapi: OSApi,
        on_change: Callable[["Process", ProcessState, ProcessState], None],
        *,
        on_event: "OnEvent | None" = None,
        on_replace: "OnReplace | None" = None,
    ) -> None:
        self.program = program
        self.config = config
        self._os = osapi
        self._on_change = on_change
        self.state = ProcessState.STOPPED
        self.pid: int | None = None
        self.spawned_at: float | None = None  # monotonic
        self.exit_status: int | None = None  # os.waitstatus_to_exitcode of the last exit
        self._reason = "not started"
        self.hold = Hold.NONE  # what the reason says, for code (set_reason); any other reason clears it
        self.failures = 0  # consecutive quick exits (drive the backoff delay)
        self.failed_starts = 0  # consecutive exits before RUNNING (drive FATAL, as supervisor's backoff)
        self.retry_at: float | None = None  # monotonic, while in BACKOFF
        self._stop = StopSequence(self, osapi)
        self._leader_alive = False
        self._timer: Timer | None = None
        self._spawn_pending = False
        self._stop_after_spawn = False
        self.health: Health | None = None
        self.health_reason = ""
        self.health_failures = 0
        self.status_text = ""
        # Counters for metrics and top; they live as long as the Process (a reload of a changed program
        # starts them again). restarts: spawns procguard began by itself (after an exit, each BACKOFF
        # retry, unhealthy, max_age, max_memory), not an operator's start.
        self.restarts = 0
        self.exits: dict[ExitReason, int] = dict.fromkeys(ExitReason, 0)
        self.health_check_s: float | None = None  # how long the last health check took
        # After a stop we did not begin for the operator (None: the operator's, it ends STOPPED).
        self._after_stop: StopIntent | None = None
        self._pending_reason = ""
        self._age_timer: Timer | None = None
        self._draining = 0  # non-zero while a restart drains (drain_timeout); the token of that drain
        self._drains = 0
        # Health transitions and recycling go to the supervisor's log through this (no I/O here).
        self.on_event: OnEvent = on_event or (lambda p, event, fields: None)
        # Generations: 1 for the first process of a slot, +1 per overlapping replace. A trial is a next
        # generation not yet switched to: it gets no retry (a failed start ends the replace) and no restart.
        self.generation = 1
        self.trial = False
        self.retiring = False  # a newer generation has taken over: this one stops and never restarts
        self.orphans = OrphanGroups(self, osapi)  # groups of a crashed leader, finishing their requests
        # A recycle (health, max_age, max_memory) of an overlapping program asks for a replace through
        # this; False: none could begin, so restart() stops and starts in place.
        self.on_replace: OnReplace = on_replace or (lambda p, why, trigger: False)

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"<Process {self.name} {self.state} pid={self.pid}>"

    @property
    def reason(self) -> str:
        """Why the process is in its state, for people (status, logs); code reads `hold` instead."""
        return self._reason

    @reason.setter
    def reason(self, text: str) -> None:
        self._reason = text
        self.hold = Hold.NONE

    def set_reason(self, hold: Hold, text: str) -> None:
        """Set a reason whose meaning code decides on (a completed job, a dependency wait or block)."""
        self._reason = text
        self.hold = hold

    @property
    def live_pid(self) -> int | None:
        """The leader's pid while it runs (None once it exited, though its group may still be stopping)."""
        return self.pid if self._leader_alive else None

    @property
    def is_satisfied(self) -> bool:
        """As a dependency: a RUNNING service, or a oneshot that completed."""
        if self.program.type == ProgramType.ONESHOT:
            return self.state == ProcessState.EXITED and self.hold == Hold.COMPLETED
        return self.state == ProcessState.RUNNING

    @property
    def has_given_up(self) -> bool:
        """No longer on its way up: FATAL, or at rest without having completed."""
        return self.state == ProcessState.FATAL or (self.state in RESTING_STATES and not self.is_satisfied)

    @property
    def draining(self) -> bool:
        """True while a restart waits for the process to finish its connections (drain_timeout)."""
        return self._draining != 0

    # ------------------------------------------------------------------------------------ commands

    def start(self) -> bool:
        """Begin starting; return False if the process is already starting, running or stopping."""
        if self.state in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING):
            return False
        if self.state in RESTING_STATES:
            # An operator's start is a fresh start: forget earlier failures (supervisor does the same).
            self.failures = 0
            self.failed_starts = 0
        self._cancel_timer()
        self._spawn(restart=False)
        return True

    def stop(self, *, drain: bool = False) -> bool:
        """Begin stopping; return False if there is nothing to stop.

        drain: a restart (the operator's, or health, max_age, max_memory): with drain_timeout, the
        stop signal waits until the process has finished its connections (OSApi.drain).
        """
        if self.state == ProcessState.STOPPING and self._after_stop is not None:
            # The operator's stop wins over a restart or failed start already under way.
            self._after_stop = None
            self.reason = "stopped"
            if self._draining and not drain:
                self._draining = 0
                self._begin_stop()
            return True
        if self.state == ProcessState.STOPPING and self._draining and not drain:
            self._draining = 0  # a plain stop does not wait for a restart's drain
            self._begin_stop()
            return True
        if self.state == ProcessState.BACKOFF:
            self._cancel_timer()
            self.reason = "stopped while waiting to retry"
            self._set(ProcessState.STOPPED)
            return True
        if self.state in (ProcessState.EXITED, ProcessState.FATAL):
            # Nothing runs, but the operator said stop: show it (supervisorctl does the same).
            self._set(ProcessState.STOPPED)
            return True
        if self.state not in (ProcessState.STARTING, ProcessState.RUNNING):
            return False
        self._cancel_timer()
        # restart() and _start_timed_out() set _after_stop first: the STOPPING event shows their reason.
        self.reason = self._pending_reason if self._after_stop else "stopped"
        if self._spawn_pending:
            # The pid is not known yet: stop as soon as the spawn reports back.
            self._stop_after_spawn = True
            self._set(ProcessState.STOPPING)
            return True
        self._set(ProcessState.STOPPING)
        if drain and self.program.drain_timeout > 0 and self.program.sockets:
            self._drains += 1
            self._draining = token = self._drains
            self._os.drain(self, lambda: self._drained(token))
            return True
        self._begin_stop()
        return True

    def _drained(self, token: int) -> None:
        if self._draining != token:
            return  # a stop cut the drain short, or the process exited meanwhile
        self._draining = 0
        if self.state == ProcessState.STOPPING and self._leader_alive:
            self._begin_stop()

    def _begin_stop(self) -> None:
        self._stop.begin()
        self._check_stopped()

    def send(self, sig: int) -> bool:
        """Send an arbitrary signal to the running process; False when there is no process."""
        if self.pid is None or not self._leader_alive:
            return False
        self._os.send_signal(self.pid, sig, group=False)
        return True

    # -------------------------------------------------------------------------------------- events

    def spawned(self, pid: int) -> None:
        self._spawn_pending = False
        self.pid = pid
        self._leader_alive = True
        self.spawned_at = self._os.monotonic()
        if self._stop_after_spawn:
            self._stop_after_spawn = False
            self._begin_stop()
            return
        if self.program.healthcheck is not None:
            self.health = Health.STARTING
            self.health_failures = 0
        if self.program.type == ProgramType.ONESHOT:
            return  # done when it exits
        if self.program.ready == Ready.STARTSECS and self.program.startsecs <= 0:
            self._become_running()
        else:
            self._arm_start(0.0)

    def _arm_start(self, elapsed_s: float) -> None:
        """Time the way to RUNNING of a leader spawned elapsed_s ago."""
        if self.program.ready != Ready.STARTSECS:
            # Ready when it says so (READY=1) or its health check first passes; not by then = failed.
            self._timer = self._os.call_later(max(0.0, self.program.start_timeout - elapsed_s), self._start_timed_out)
        else:
            self._timer = self._os.call_later(max(0.0, self.program.startsecs - elapsed_s), self._startsecs_elapsed)

    def resume(self, *, leader_alive: bool) -> None:
        """Re-arm the timers of a process whose fields an adopting image restored (upgrade/adopt.py).

        The deadlines are those the previous image set: CLOCK_MONOTONIC goes on across exec.
        """
        self._leader_alive = leader_alive
        now = self._os.monotonic()
        if self.state == ProcessState.BACKOFF and self.retry_at is not None:
            self._timer = self._os.call_later(max(0.0, self.retry_at - now), self._retry)
        elif self.spawned_at is None or not leader_alive:
            return
        elif self.state == ProcessState.STARTING and self.program.type != ProgramType.ONESHOT:
            self._arm_start(now - self.spawned_at)
        elif self.state == ProcessState.RUNNING and self.program.max_age is not None:
            self._age_timer = self._os.call_later(max(0.0, self.spawned_at + self.program.max_age - now),
                                                  self._age_exceeded)

    def notified(self, fields: dict[str, str]) -> None:
        """A message on the process's NOTIFY_SOCKET (READY=1, STATUS=...)."""
        if "STATUS" in fields:
            self.status_text = fields["STATUS"][:200]
        if fields.get("READY") == "1" and self.state == ProcessState.STARTING and self._leader_alive \
                and self.program.ready == Ready.NOTIFY:
            self._cancel_timer()
            self._become_running()

    def health_result(self, ok: bool, reason: str, *, answered: bool = False) -> None:
        """A health check finished. Drives readiness, health and, after `retries` failures, a restart.

        answered: the server answered and the answer fails the check (an HTTP status not expected). A
        next generation on trial (ready by its check) whose check fails so `retries` times in a row is
        refused at once instead of at start_timeout; a refused connection or a timeout only waits.
        """
        hc = self.program.healthcheck
        if hc is None or self.state not in (ProcessState.STARTING, ProcessState.RUNNING) or not self._leader_alive:
            return
        if self.state == ProcessState.STARTING:
            if ok and self.program.ready == Ready.HEALTHCHECK:
                self.health_failures = 0
                self._set_health(Health.HEALTHY, "")
                self._cancel_timer()
                self._become_running()
            elif not ok:
                self.health_reason = reason  # not ready yet: shown in status
                warming = self.spawned_at is not None and self._os.monotonic() - self.spawned_at < hc.start_period
                self.health_failures = self.health_failures + 1 if answered and not warming else 0
                if self.trial and self.program.ready == Ready.HEALTHCHECK and self.health_failures >= hc.retries:
                    self._cancel_timer()
                    self._after_stop = StopIntent.FAIL
                    self._pending_reason = f"health check failed {self.health_failures} times in a row: {reason}"
                    self.stop()
            return
        if ok:
            self.health_failures = 0
            self._set_health(Health.HEALTHY, "")
            return
        self.health_reason = reason
        if self.spawned_at is not None and self._os.monotonic() - self.spawned_at < hc.start_period:
            return  # still warming up: failures do not count
        self.health_failures += 1
        if self.health_failures >= hc.retries and self.health != Health.UNHEALTHY:
            self._set_health(Health.UNHEALTHY, reason)
            if hc.on_unhealthy == OnUnhealthy.RESTART:
                self.restart(f"unhealthy: {reason}", ReplaceTrigger.HEALTH)

    def _set_health(self, new: Health, reason: str) -> None:
        old = self.health
        self.health = new
        self.health_reason = reason
        if old != new:
            self.on_event(self, "health_changed", {"old": None if old is None else str(old), "new": str(new),
                                                   "reason": reason, "failures": self.health_failures})

    def restart(self, why: str, trigger: ReplaceTrigger = ReplaceTrigger.RESTART, *, overlap: bool = True) -> bool:
        """Replace the process (health, max_age, max_memory): by an overlapping next generation where the
        program is on held sockets (on_replace), else stop gracefully and start again. False when not
        running. overlap=False: stop and start in place (an overlapping replace failed)."""
        if self.state not in (ProcessState.STARTING, ProcessState.RUNNING) or self._spawn_pending or self.trial \
                or self.retiring:
            return False
        if overlap and self.program.overlaps and self.state == ProcessState.RUNNING \
                and self.on_replace(self, why, trigger):
            return True
        self._after_stop = StopIntent.RESTART  # before stop(): a leader already gone is STOPPED within it
        self._pending_reason = f"restarting: {why}"
        self.stop(drain=True)
        return True

    def _start_timed_out(self) -> None:
        self._timer = None
        if self.state != ProcessState.STARTING:
            return
        why = "no READY=1" if self.program.ready == Ready.NOTIFY else f"health check: {self.health_reason or 'never passed'}"
        self._after_stop = StopIntent.FAIL
        self._pending_reason = f"not ready within start_timeout ({self.program.start_timeout:g}s; {why})"
        self.stop()

    def _age_exceeded(self) -> None:
        self._age_timer = None
        if self.state == ProcessState.RUNNING and self.spawned_at is not None:
            age = self._os.monotonic() - self.spawned_at
            self.on_event(self, "process_recycled", {"reason": "max_age", "age_s": round(age, 1),
                                                     "max_age_s": self.program.max_age})
            self.restart(f"max_age ({self.program.max_age:g}s) reached", ReplaceTrigger.MAX_AGE)

    def spawn_failed(self, reason: str) -> None:
        self._spawn_pending = False
        self.pid = None
        self.reason = f"spawn failed: {reason}"
        if self._stop_after_spawn:
            self._stop_after_spawn = False
            self._set(ProcessState.STOPPED)
            return
        self._failed_start()

    def exited(self, status: int) -> None:
        """The leader was reaped; `status` is os.waitstatus_to_exitcode (negative: killed by signal)."""
        self._leader_alive = False
        self.exit_status = status
        ran_s = self._os.monotonic() - (self.spawned_at or self._os.monotonic())
        what = describe_exit(status)
        self.exits[policy.exit_reason(self.program, self.state, status)] += 1
        if self.state == ProcessState.STOPPING:
            self._check_stopped()
            return
        self._cancel_timer()
        expected = status in self.program.exitcodes
        orphans = False
        if self.program.killasgroup and self.pid is not None and self._os.is_group_alive(self.pid):
            if self._will_restart(expected) and self.state == ProcessState.RUNNING and self.program.overlaps:
                # A master died while its workers still hold requests: the replacement starts at once (on
                # fresh sockets where the orphans keep serving), and the orphans finish what they have.
                orphans = True
                self.orphans.retire(self.pid)
            else:
                # The leader died but left workers behind: they would hold its port and block the restart.
                self._os.send_signal(self.pid, signal.SIGKILL, group=True)
        if self.state == ProcessState.STARTING and self.program.type == ProgramType.ONESHOT:
            if status in self.program.exitcodes:
                self.failed_starts = 0
                self.failures = 0
                self.set_reason(Hold.COMPLETED, f"completed ({what})")
                self._set(ProcessState.EXITED)
            else:
                self.reason = f"failed ({what})"
                self._failed_start()
            return
        if self.state == ProcessState.STARTING:
            self.reason = f"exited too quickly ({what})" if self.program.ready == Ready.STARTSECS \
                else f"exited before it was ready ({what})"
            self._failed_start()
            return
        # RUNNING -> EXITED, then maybe restart.
        self.reason = f"{what}{'' if expected else ', not expected'}"
        self._set(ProcessState.EXITED)
        if not self._will_restart(expected):
            return
        if ran_s >= self.program.backoff_reset or orphans:
            # A crash after a long healthy run: restart at once.
            self.failures = 0
            self._spawn()
        else:
            self.failures += 1
            self._backoff()

    def _will_restart(self, expected: bool) -> bool:
        return policy.will_restart(self.program, expected, trial=self.trial, retiring=self.retiring)

    def child_reaped(self, pid: int) -> None:
        """Some other child of the daemon was reaped: maybe one of our strays or group members."""
        self._stop.strays.discard(pid)
        if self.state == ProcessState.STOPPING:
            self._check_stopped()

    def add_strays(self, pids: Iterable[int]) -> None:
        """A stray scan's answer: signal what it found (as the group was) and wait for those too."""
        if self._stop.answer(pids, stopping=self.state == ProcessState.STOPPING):
            self._check_stopped()

    # ------------------------------------------------------------------------------------- helpers

    def _spawn(self, *, restart: bool = True) -> None:
        """Spawn the leader; restart=False only for an operator's (or autostart's) start."""
        if restart:
            self.restarts += 1
        self.pid = None
        self.retry_at = None
        self.exit_status = None
        self._spawn_pending = True
        self.reason = "starting"
        self._set(ProcessState.STARTING)
        self._os.spawn(self)

    def _become_running(self) -> None:
        self.failed_starts = 0
        self.reason = ""
        self._set(ProcessState.RUNNING)
        if self.program.max_age is not None:
            jitter = random.uniform(0.0, self.program.max_age_jitter)
            self._age_timer = self._os.call_later(self.program.max_age + jitter, self._age_exceeded)
        # The backoff counter resets only after a stable run (see exited()): a process that dies
        # right after reaching RUNNING is still a crash loop.

    def _startsecs_elapsed(self) -> None:
        self._timer = None
        if self.state == ProcessState.STARTING and self._leader_alive:
            self._become_running()

    def _failed_start(self) -> None:
        self.failures += 1
        self.failed_starts += 1
        limit = policy.start_limit(self.program, trial=self.trial)
        if limit is not None and self.failed_starts > limit and self.trial:
            self._set(ProcessState.FATAL)
            return
        if limit is not None and self.failed_starts > limit:
            self.reason = f"{self.reason}; gave up after {self.failed_starts} failed starts (startretries = {limit})"
            self._set(ProcessState.FATAL)
            return
        self._backoff()

    def _backoff(self) -> None:
        delay_s = policy.backoff_delay(self.program, self.failures)
        self.retry_at = self._os.monotonic() + delay_s
        self._set(ProcessState.BACKOFF)
        self._timer = self._os.call_later(delay_s, self._retry)

    def _retry(self) -> None:
        self._timer = None
        if self.state == ProcessState.BACKOFF:
            self._spawn()

    def _check_stopped(self) -> None:
        if self.state != ProcessState.STOPPING or self._leader_alive or self._spawn_pending:
            return
        self._draining = 0
        if not self._stop.is_over():
            return
        after, self._after_stop = self._after_stop, None
        if after == StopIntent.RESTART:
            self._set(ProcessState.STOPPED)
            self._spawn()
        elif after == StopIntent.FAIL:
            self.reason = self._pending_reason
            self._failed_start()
        else:
            self._set(ProcessState.STOPPED)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, new: ProcessState) -> None:
        old = self.state
        self.state = new
        if new != ProcessState.RUNNING and self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
        if new not in (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING):
            self.status_text = ""
        self._on_change(self, old, new)


__all__ = ["Process"]
