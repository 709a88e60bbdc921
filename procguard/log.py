"""Configure structlog once for the daemon: journal lines under systemd, console on a TTY, else JSON lines."""

import asyncio
import collections
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from procguard.observe.events import EventBus, publisher

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


class _TeeLogger(structlog.PrintLogger):
    """structlog's PrintLogger that also keeps each rendered line in a LogRing."""

    def __init__(self, file: TextIO, ring: LogRing) -> None:
        super().__init__(file)
        self._ring = ring

    def msg(self, message: str) -> None:
        super().msg(message)
        self._ring.append(message)

    log = debug = info = warn = warning = fatal = failure = err = error = critical = exception = msg


def _renderer(fmt: Resolved, stream: TextIO) -> Processor:
    if fmt == "journal":
        return JournalRenderer()
    if fmt == "console":
        # Colours only for a terminal (a forced `console` into a file stays plain), and never with NO_COLOR
        # (no-color.org), as procguardctl does.
        return structlog.dev.ConsoleRenderer(colors=stream.isatty() and "NO_COLOR" not in os.environ)
    return structlog.processors.JSONRenderer()


class LogStream:
    """The daemon's stderr for structlog, which never raises: a log line that cannot be written is dropped.

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
    levels = logging.getLevelNamesMapping()
    minimum = levels[level.upper()]

    def drop_below(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if levels.get(str(event_dict.get("level", method)).upper(), logging.INFO) < minimum:
            raise structlog.DropEvent
        return event_dict

    return drop_below


def configure_logging(level: str = "info", fmt: Format = "auto", *, ring: LogRing | None = None,
                      bus: EventBus | None = None) -> None:
    """Route structlog to stderr at `level` in `fmt`; call once, before the first event.

    `auto` resolves through `choose_format`. Every format renders a logged exception's traceback
    (format_exc_info): JSON and journal escape its newlines, so one event is always one line there.
    With `ring`, every rendered line is also kept there (maintail). With `bus`, the stable events
    (procguard.observe.events) are published to it whatever `level` hides.
    """
    global _stream
    stream = sys.stderr
    _stream = LogStream(stream)
    resolved = choose_format(stream) if fmt == "auto" else fmt
    threshold = logging.getLevelNamesMapping()[level.upper()]
    processors: list[Processor] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if bus is not None:
        # Stable events are info and above: those reach the publisher, the level then filters the log.
        processors.append(publisher(bus))
        if threshold > logging.INFO:
            processors.append(level_filter(level))
        threshold = min(threshold, logging.INFO)
    if resolved != "journal":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    processors += [structlog.processors.format_exc_info, _renderer(resolved, stream)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # LogStream: a log line that cannot be written is dropped and counted, never raised.
        logger_factory=(structlog.PrintLoggerFactory(_stream) if ring is None  # type: ignore[arg-type]
                        else (lambda *_: _TeeLogger(_stream, ring))),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
