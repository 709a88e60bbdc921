"""The daemon's state as one versioned JSON document, handed from one image to the next across exec.

What is saved is what the next image cannot learn from the config or the OS: each process's place in
its state machine (state, pid, spawn time, backoff counters and schedule, health), each output stream's
tail buffer and counters, and which inherited descriptor is which (output pipes, held sockets, notify
sockets, the control socket and its lock). Times are CLOCK_MONOTONIC (`time.monotonic()`), which is
system-wide and goes on across exec, so a BACKOFF keeps its schedule.

FORMAT is bumped whenever a field is added or changes meaning; `loads` reads every format in READABLE
(format 1 through `_upgrade_v1`; format 2 lacks only fields with defaults), so a newer image reads an older image's state, and refuses one it
does not know, which the pre-flight asks before anything is saved (`readable`).
"""

import base64
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT = 3
READABLE = frozenset({1, 2, 3})


class StateError(Exception):
    """A saved state this image cannot read (unknown format, malformed document)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedStream:
    """One process's stdout or stderr: what `tail` shows, its counters, and its open pipes' read ends."""

    name: str  # "stdout" or "stderr"
    tail: bytes = b""
    in_file: int = 0  # newer bytes of the tail that are only in the log file (read back when asked)
    at_line_start: bool = True  # timestamps: the next byte gets a timestamp
    offset: int = 0
    dropped: int = 0
    pipe_fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedProcess:
    """One process's state machine, as `engine.process.Process` holds it."""

    name: str
    program: str
    state: str
    pid: int | None = None
    leader_alive: bool = False
    spawned_at: float | None = None  # monotonic
    exit_status: int | None = None
    reason: str = ""
    hold: str = "NONE"  # engine.states.Hold's name: what the reason means to code (a completed oneshot)
    failures: int = 0
    failed_starts: int = 0
    retry_at: float | None = None  # monotonic, in BACKOFF
    health: str | None = None
    health_reason: str = ""
    health_failures: int = 0
    status_text: str = ""
    restarts: int = 0
    generation: int = 1
    exits: dict[str, int] = field(default_factory=dict)
    notify_fd: int | None = None
    notify_name: str | None = None
    streams: tuple[SavedStream, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SavedOutcome:
    """The last replace of one process (status: last_deploy)."""

    process: str
    pid: int | None
    at: float
    ok: bool
    trigger: str
    generation: int
    step: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one image hands the next."""

    format: int = FORMAT
    version: str  # the procguard that saved it
    pid: int
    config_path: str
    argv: tuple[str, ...]
    control_lock_fd: int | None = None
    control_listen_fd: int | None = None
    sockets: dict[str, int] = field(default_factory=dict)  # held socket name -> fd
    processes: tuple[SavedProcess, ...] = ()
    outcomes: tuple[SavedOutcome, ...] = ()
    systemd_address: str | None = None  # NOTIFY_SOCKET, removed from the environment at start-up
    watchdog_s: float | None = None
    config_fd: int | None = None  # format 3: the pre-flight's parsed config (carried.py), if it wrote one

    def fds(self) -> list[int]:
        """Every descriptor the next image must inherit."""
        out = [fd for fd in (self.control_lock_fd, self.control_listen_fd) if fd is not None]
        out += self.sockets.values()
        for p in self.processes:
            if p.notify_fd is not None:
                out.append(p.notify_fd)
            out += [fd for s in p.streams for fd in s.pipe_fds]
        return out


def dumps(snapshot: Snapshot) -> bytes:
    # json's default hook converts one level at a time: dataclasses.asdict (a deep copy) took 3/4 of the
    # time of saving 1000 processes (cProfile: 186 ms CPU in all).
    def encode(value: object) -> object:
        if isinstance(value, bytes):
            return {"b64": base64.b64encode(value).decode("ascii")}
        names = getattr(type(value), "__dataclass_fields__", None)
        if names is None:
            raise TypeError(f"cannot save {type(value).__name__}")
        return {name: getattr(value, name) for name in names}

    return json.dumps(snapshot, default=encode, separators=(",", ":")).encode()


def readable(fmt: int) -> bool:
    return fmt in READABLE


def loads(data: bytes) -> Snapshot:
    """Parse a saved state of any format in READABLE; raise StateError naming what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"saved state is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise StateError("saved state is not a JSON object")
    fmt = doc.get("format")
    if not isinstance(fmt, int) or not readable(fmt):
        raise StateError(f"saved state format {fmt!r}; this procguard reads {sorted(READABLE)}")
    if fmt == 1:
        doc = _upgrade_v1(doc)
    doc = dict(doc, format=FORMAT)  # format 2 -> 3 added config_fd only (None: load the config as usual)
    try:
        return _snapshot(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"saved state (format {fmt}) is malformed: {exc!r}") from None


def _upgrade_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (the first re-exec): one pipe per stream as `pipe_fd`, deploy outcomes and the exit counters
    not saved, held sockets as a list of {name, fd}."""
    out = dict(doc, format=2)
    out["sockets"] = {s["name"]: s["fd"] for s in doc.get("sockets", [])}
    procs = []
    for p in doc.get("processes", []):
        streams = [dict({k: v for k, v in s.items() if k != "pipe_fd"},
                        pipe_fds=[] if s.get("pipe_fd") is None else [s["pipe_fd"]])
                   for s in p.get("streams", [])]
        procs.append(dict(p, streams=streams))
    out["processes"] = procs
    return out


def _bytes(value: Any) -> bytes:
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return base64.b64decode(value["b64"])
    raise ValueError(f"expected {{'b64': ...}}, got {value!r}")


def _snapshot(doc: dict[str, Any]) -> Snapshot:
    procs = []
    for p in doc.get("processes", []):
        streams = tuple(SavedStream(**dict(s, tail=_bytes(s.get("tail", {"b64": ""})),
                                           pipe_fds=tuple(s.get("pipe_fds", ()))))
                        for s in p.get("streams", []))
        procs.append(SavedProcess(**dict(p, streams=streams, exits=dict(p.get("exits", {})))))
    return Snapshot(**dict(doc, argv=tuple(doc["argv"]), sockets=dict(doc.get("sockets", {})),
                           processes=tuple(procs),
                           outcomes=tuple(SavedOutcome(**o) for o in doc.get("outcomes", []))))
