"""The daemon's log: structlog's calls and lines, without importing structlog; journal lines under systemd,
console on a TTY, else JSON lines.

Every module logs as STYLE.md says (`log = get_logger()`, `log.info("process_spawned", pid=4312)`), and
the lines are byte for byte what structlog's processors made (JSONRenderer, TimeStamper(fmt="iso"),
add_log_level, format_exc_info): tests/unit/test_log.py renders the same events through structlog and
through this module and compares. `import structlog` alone loaded 25 modules and datetime, 1.2 MiB of
an idle daemon's private memory (issue #17, benchmarks/RESULTS.md); structlog is imported now only for
its ConsoleRenderer, when the log is a terminal.
"""

import asyncio
import collections
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from procguard.observe.events import EventBus

EventDict = MutableMapping[str, Any]
WrappedLogger = Any  # what a processor gets as its `logger` (structlog's signature; unused here)
Processor = Callable[[WrappedLogger, str, EventDict], Any]

# structlog's level numbers (those of the logging module).
LEVELS: Mapping[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class DropEvent(Exception):
    """Raised by a processor: the event goes no further (structlog.DropEvent)."""


class Logger:
    """A logger as structlog's get_logger() gives one: `bind` fields, then one method per level.

    The configuration is read at each call (a module's `log` is made at import, before configure_logging).
    """

    __slots__ = ("_context",)

    def __init__(self, context: Mapping[str, Any] | None = None) -> None:
        self._context = dict(context or {})

    def bind(self, **fields: Any) -> "Logger":
        return Logger({**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        _log(self._context, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        _log(self._context, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        _log(self._context, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        _log(self._context, "error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        _log(self._context, "critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (exc_info=True unless given)."""
        fields.setdefault("exc_info", True)
        _log(self._context, "error", event, fields)


class _Config:
    def __init__(self) -> None:
        self.threshold = 0
        self.processors: list[Processor] = [add_log_level, timestamp_iso, format_exc_info, render_json]
        self.write: Callable[[str], None] = lambda line: print(line, flush=True)


_write_lock = threading.Lock()


def get_logger() -> Logger:
    return Logger()


def _log(context: Mapping[str, Any], method: str, event: str, fields: dict[str, Any]) -> None:
    config = _config
    if LEVELS[method] < config.threshold:
        return
    event_dict: Any = {**context, **fields, "event": event}
    try:
        for processor in config.processors:
            event_dict = processor(None, method, event_dict)
    except DropEvent:
        return
    with _write_lock:
        config.write(event_dict)


def process_cpu_ms() -> float:
    """This process's CPU time so far (user + system), which goes on across exec: the log's split of a
    re-exec (benchmarks/bench_reexec.py) subtracts these."""
    return round(time.process_time() * 1e3, 1)


def reset_logging() -> None:
    """Back to the default (every level, JSON lines on stdout): tests that configured the log call this."""
    global _config
    _config = _Config()


# ------------------------------------------------------------------- structlog's processors, as it wrote them

def add_log_level(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    event_dict["level"] = method
    return event_dict


def timestamp_iso(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Local time as datetime.now().isoformat() writes it (no fraction when the microseconds are 0)."""
    seconds, ns = divmod(time.time_ns(), 1_000_000_000)
    t = time.localtime(seconds)
    micros = ns // 1000  # datetime.now() floors the clock to microseconds
    stamp = (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
             f"{min(t.tm_sec, 59):02d}")  # a leap second is :59, as datetime has it
    event_dict["timestamp"] = f"{stamp}.{micros:06d}" if micros else stamp
    return event_dict


def format_exc_info(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Replace exc_info (True, an exception or a sys.exc_info() tuple) by the traceback's text."""
    value = event_dict.pop("exc_info", None)
    info: Any = None
    if isinstance(value, BaseException):
        info = (value.__class__, value, value.__traceback__)
    elif isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        info = value
    elif value:
        info = sys.exc_info()
    if info is not None and info[1] is not None:
        text = "".join(traceback.format_exception(info[0], info[1], info[2]))
        event_dict["exception"] = text[:-1] if text.endswith("\n") else text
    return event_dict


def render_json(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    return json.dumps(event_dict, default=repr)


_config = _Config()  # until configure_logging: every level, JSON lines on stdout

Format = Literal["auto", "console", "json", "journal"]
Resolved = Literal["console", "json", "journal"]

# syslog(3) priorities. journald reads a "<N>" prefix off each stdout/stderr line as the entry's PRIORITY
# (SyslogLevelPrefix=, on by default: systemd.exec(5)), which is what `journalctl -p err` filters on.
SYSLOG_PRIORITY: Mapping[str, int] = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
DEFAULT_PRIORITY = 6

# journald ends an entry at a newline (or NUL): every control character is escaped so a traceback stays in
# its event's entry. Backslash and quote are escaped too, so a value can be read back unambiguously.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\", ord('"'): '\\"'}


def is_journal_stream(stream: TextIO) -> bool:
    """Tell whether `stream` is the journald connection systemd announced in JOURNAL_STREAM.

    systemd.exec(5): JOURNAL_STREAM is "DEV:INODE" of the stream socket given as stdout/stderr, and a
    program should compare it with fstat() of its own stream: a unit that redirects stderr (`2>file`)
    still inherits the variable. Never raises: a closed or fd-less stream is not the journal.
    """
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (int(dev), int(ino)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):  # io.UnsupportedOperation is both; int("x") is ValueError
        return False


def choose_format(stream: TextIO) -> Resolved:
    """Resolve `auto`: journal under systemd, console on a TTY, JSON lines otherwise."""
    if is_journal_stream(stream):
        return "journal"
    return "console" if stream.isatty() else "json"


def _journal_value(value: object) -> str:
    """Render one value on one line, double-quoted when it has spaces, quotes, `=` or escapes (logfmt)."""
    text = value if isinstance(value, str) else str(value)
    escaped = text.translate(_ESCAPES)
    if not text or escaped != text or " " in text or "=" in text:
        return f'"{escaped}"'
    return text


class JournalRenderer:
    """Render `<PRIORITY>event key=value ...` as one line, for journald.

    No timestamp: journald stamps every entry itself. The level is the priority prefix, not a field.
    """

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        level = str(event_dict.pop("level", name))
        priority = SYSLOG_PRIORITY.get(level, DEFAULT_PRIORITY)
        event = str(event_dict.pop("event", "")).translate(_ESCAPES)
        fields = "".join(f" {str(k).translate(_ESCAPES)}={_journal_value(v)}" for k, v in event_dict.items())
        return f"<{priority}>{event}{fields}"


# `procguardctl maintail`: the daemon's newest log lines, whatever the log goes to (journald keeps no file
# supervisorctl could read). Bounded: MAINLOG_LINES lines of at most MAINLOG_LINE_BYTES each.
MAINLOG_LINES = 500
MAINLOG_LINE_BYTES = 16 * 1024
_PRIORITY_PREFIX = re.compile(r"^<[0-7]>")
Follower = Callable[[bytes, int], None]  # (new bytes, offset of their end), as output.Stream's followers


class LogRing:
    """The daemon's last MAINLOG_LINES rendered log lines in memory, and who follows them (maintail -f).

    Shaped like output.Stream for the control server's tail machinery: tail(), offset (bytes ever
    appended), followers called with (data, offset). Lines logged off the event loop's thread reach
    followers through the loop (call_soon_threadsafe), so followers only ever run on the loop.
    """

    def __init__(self, lines: int = MAINLOG_LINES) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=lines)
        self._lock = threading.Lock()
        self.offset = 0
        self.followers: set[Follower] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._notifying = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver to followers on `loop` (call from the loop's thread)."""
        self._loop, self._loop_thread = loop, threading.get_ident()

    def append(self, line: str) -> None:
        data = (_PRIORITY_PREFIX.sub("", line)[:MAINLOG_LINE_BYTES] + "\n").encode(errors="replace")
        with self._lock:
            self._lines.append(data)
            self.offset += len(data)
            offset = self.offset
        if not self.followers or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._notify(data, offset)
        else:
            try:
                self._loop.call_soon_threadsafe(self._notify, data, offset)
            except RuntimeError:  # the loop is closed: the daemon is exiting, nobody follows any more
                pass

    def _notify(self, data: bytes, offset: int) -> None:
        if self._notifying:  # a follower that logs must not feed itself
            return
        self._notifying = True
        try:
            for follower in list(self.followers):
                follower(data, offset)
        finally:
            self._notifying = False

    def tail(self) -> bytes:
        """Every line kept, oldest first (ending at self.offset)."""
        with self._lock:
            return b"".join(self._lines)


def _renderer(fmt: Resolved, stream: TextIO) -> Processor:
    if fmt == "journal":
        return JournalRenderer()
    if fmt == "console":
        from structlog.dev import ConsoleRenderer  # a person reads a terminal: structlog's own layout

        # Colours only for a terminal (a forced `console` into a file stays plain), and never with NO_COLOR
        # (no-color.org), as procguardctl does.
        return ConsoleRenderer(colors=stream.isatty() and "NO_COLOR" not in os.environ)
    return render_json


class LogStream:
    """The daemon's stderr for its log, which never raises: a log line that cannot be written is dropped.

    Under systemd stderr is a stream socket to journald; if journald goes away (or a pipe reader
    dies), every write fails with EPIPE. An exception out of a log call would abort whatever was
    logging (a state change, a command's reply), so the line is dropped and counted instead
    (`dropped_lines`, shown by `procguardctl version`).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.dropped_lines = 0

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # EPIPE, EAGAIN, a closed file
            self.dropped_lines += text.count("\n")
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        return self._stream.isatty()


_stream: LogStream | None = None


def dropped_lines() -> int:
    """Log lines the daemon could not write since it started (its stderr was gone)."""
    return _stream.dropped_lines if _stream is not None else 0


def level_filter(level: str) -> Processor:
    """Drop log events below `level` (after the publisher saw them)."""
    minimum = LEVELS[level.lower()]

    def drop_below(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if LEVELS.get(str(event_dict.get("level", method)).lower(), LEVELS["info"]) < minimum:
            raise DropEvent
        return event_dict

    return drop_below


def configure_logging(level: str = "info", fmt: Format = "auto", *, ring: LogRing | None = None,
                      bus: "EventBus | None" = None) -> None:
    """Route the log to stderr at `level` in `fmt`; call once, before the first event.

    `auto` resolves through `choose_format`. Every format renders a logged exception's traceback
    (format_exc_info): JSON and journal escape its newlines, so one event is always one line there.
    With `ring`, every rendered line is also kept there (maintail). With `bus`, the stable events
    (procguard.observe.events) are published to it whatever `level` hides.
    """
    global _stream, _config
    stream = sys.stderr
    out = _stream = LogStream(stream)
    resolved = choose_format(stream) if fmt == "auto" else fmt
    config = _Config()
    config.threshold = LEVELS[level.lower()]
    processors: list[Processor] = [add_log_level]
    if bus is not None:
        from procguard.observe.events import publisher

        # Stable events are info and above: those reach the publisher, the level then filters the log.
        processors.append(publisher(bus))
        if config.threshold > LEVELS["info"]:
            processors.append(level_filter(level))
        config.threshold = min(config.threshold, LEVELS["info"])
    if resolved != "journal":
        processors.append(timestamp_iso)
    config.processors = [*processors, format_exc_info, _renderer(resolved, stream)]

    def write(line: str) -> None:
        # As structlog's PrintLogger: the line and its newline, flushed. LogStream drops and counts a line
        # that cannot be written, never raises.
        print(line, file=out, flush=True)
        if ring is not None:
            ring.append(line)

    config.write = write
    _config = config
