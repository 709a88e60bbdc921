"""The engine's states and the enums its decisions read (never the human-readable reasons)."""

import enum


class ProcessState(enum.StrEnum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


class ExitReason(enum.StrEnum):
    """How a process's leader ended, for the exits counter (metrics: procguard_process_exits_total)."""

    EXPECTED = "expected"  # ran, exited with a code in exitcodes (a oneshot that completed)
    UNEXPECTED = "unexpected"  # ran, exited with a code not in exitcodes
    SIGNAL = "signal"  # ran, killed by a signal procguard did not send (the OOM killer, kill -9)
    EARLY = "early"  # exited before it was ready (startsecs, READY=1, health check) or a oneshot failed
    STOPPED = "stopped"  # exited while procguard was stopping it


# States from which a process is not running and no timer will start it by itself.
RESTING_STATES = frozenset({ProcessState.STOPPED, ProcessState.EXITED, ProcessState.FATAL})


class ReplaceTrigger(enum.StrEnum):
    """Why a process is being replaced by its next generation."""

    DEPLOY = "deploy"
    RESTART = "restart"
    RELOAD = "reload"
    HEALTH = "health"
    MAX_AGE = "max_age"
    MAX_MEMORY = "max_memory"


class ReplacePhase(enum.StrEnum):
    """Where a replace by a next generation is (replace.py)."""

    JOBS = "jobs"  # a deploy runs the program's one-shot dependencies again first
    PREPARING = "preparing"
    STARTING = "starting"
    SWITCHING = "switching"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Health(enum.StrEnum):
    """A checked process's health, as status and events show it (Docker's: unknown until a check decides)."""

    STARTING = "starting"  # unknown: spawned, no check has passed yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class StopIntent(enum.Enum):
    """What a stop the state machine began by itself leads to once everything is gone."""

    RESTART = enum.auto()  # health, max_age, max_memory: start again at once
    FAIL = enum.auto()  # not ready within start_timeout (or a trial refused): counts as a failed start


class Hold(enum.Enum):
    """What a process's reason says, for the code that must decide on it (the text is for people)."""

    NONE = enum.auto()
    COMPLETED = enum.auto()  # a oneshot exited with a code in exitcodes: "completed (exit status 0)"
    WAITING = enum.auto()  # at rest until its dependencies are up: "waiting for db"
    BLOCKED = enum.auto()  # a dependency failed: "blocked: dependency db failed: ..."


__all__ = ["RESTING_STATES", "ExitReason", "Health", "Hold", "ProcessState", "ReplacePhase", "ReplaceTrigger",
           "StopIntent"]
