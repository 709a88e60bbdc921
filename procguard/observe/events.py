"""The event stream: what the daemon logs under a stable name is also an event, kept in a ring and pushed.

One place both logs and publishes: `publisher(bus)` is a structlog processor, so every
`log.info("process_state_changed", program=..., ...)` anywhere in the daemon (the supervisor, output,
a deploy engine) becomes an event with no second call to forget. Only the names in STABLE_EVENTS are
published: they and their fields are documented (docs/observability.md, "Events") and scripts, the
control socket's `events` command and the alerts consume them.

The log level does not decide what is published: the daemon's logger lets info and above through to
the processors, the publisher takes its events, and procguard.log's `level_filter` drops what the
configured level hides only after that (a daemon at loglevel "error" still streams every state change).
"""

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from procguard.log import EventDict, Processor, WrappedLogger, get_logger

log = get_logger()

# How many events the daemon keeps for `procguardctl events` (about 0.3 KiB each).
RING_SIZE = 1000

# The published names (docs/observability.md lists their fields). The deploy_* names are logged by the
# deploy engine through the same path: they become events with no code here.
STABLE_EVENTS: frozenset[str] = frozenset({
    "process_state_changed", "health_changed", "process_restarting", "process_recycled",
    "process_reload_signalled", "program_blocked", "output_dropped", "output_recovered",
    "config_reloaded", "config_reload_refused", "daemon_started", "shutdown_requested",
    "deploy_started", "deploy_step", "deploy_succeeded", "deploy_failed",
    "alert_sent", "alert_failed",
})
# Keys of the log event that are the event's envelope, not its fields.
_ENVELOPE = frozenset({"event", "level", "program", "process", "pid", "timestamp", "exc_info"})


def _jsonable(value: object) -> Any:
    """A JSON-safe copy: tuples and sets become lists, anything exotic its str()."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


@dataclass(frozen=True, slots=True)
class Event:
    """One published event (docs/observability.md, "The event object")."""

    seq: int
    time: float  # epoch seconds
    event: str
    level: str
    program: str | None
    process: str | None
    pid: int | None
    fields: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "event": self.event, "level": self.level,
                "program": self.program, "process": self.process, "pid": self.pid, "fields": dict(self.fields)}

    def matches(self, names: Iterable[str]) -> bool:
        """Is it about one of `names` (program, program:process, program:*, all)? Empty matches everything."""
        names = tuple(names)
        if not names or "all" in names:
            return True
        if self.program is None:
            return False
        for name in names:
            prog, _, proc = name.partition(":")
            if prog == self.program and (proc in ("", "*") or name == self.process or proc == self.process):
                return True
            if name == self.process:
                return True
        return False


Subscriber = Callable[[Event], None]


class EventBus:
    """The ring of recent events and their live subscribers.

    Subscribers are called on the event loop's thread, in `seq` order, and must not block (push and
    return). One that raises is logged and stays subscribed. Publishing from another thread hands the
    event to the loop (call_soon_threadsafe) once `attach` has named it.
    """

    def __init__(self, size: int = RING_SIZE) -> None:
        self._ring: deque[Event] = deque(maxlen=size)
        self._subscribers: list[Subscriber] = []
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on this loop from now on (call from the loop's own thread)."""
        self._loop = loop
        self._thread = threading.get_ident()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` with every event published from now on; return the unsubscribe function."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def recent(self, names: Iterable[str] = (), limit: int | None = None) -> list[Event]:
        """The ring's events about `names`, oldest first; the last `limit` of them."""
        names = tuple(names)
        found = [e for e in self._ring if e.matches(names)]
        return found[-limit:] if limit is not None and limit < len(found) else found

    def publish(self, name: str, level: str, values: Mapping[str, Any]) -> None:
        """Publish a log event's name, level and key-values (the envelope keys are taken out of them)."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.publish, name, level, dict(values))
            return
        pid = values.get("pid")
        event = Event(
            seq=next(self._seq), time=time.time(), event=name, level=level,
            program=None if values.get("program") is None else str(values["program"]),
            process=None if values.get("process") is None else str(values["process"]),
            pid=pid if isinstance(pid, int) else None,
            fields={k: _jsonable(v) for k, v in values.items() if k not in _ENVELOPE},
        )
        self._ring.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # a subscriber bug must not break the code that logged
                log.exception("event_subscriber_failed", subscriber=repr(subscriber))


def publisher(bus: EventBus) -> Processor:
    """A structlog processor publishing STABLE_EVENTS to `bus`; the event goes on to the log unchanged.

    Place it after add_log_level and before anything that renders or drops.
    """

    def publish(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        name = event_dict.get("event")
        if name in STABLE_EVENTS:
            bus.publish(str(name), str(event_dict.get("level", method)), event_dict)
        return event_dict

    return publish
