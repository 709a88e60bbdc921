"""Configure structlog once for the daemon: journal lines under systemd, console on a TTY, else JSON lines."""

import logging
import os
import sys
from collections.abc import Mapping
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

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


def configure_logging(level: str = "info", fmt: Format = "auto") -> None:
    """Route structlog to stderr at `level` in `fmt`; call once, before the first event.

    `auto` resolves through `choose_format`. Every format renders a logged exception's traceback
    (format_exc_info): JSON and journal escape its newlines, so one event is always one line there.
    """
    global _stream
    stream = sys.stderr
    _stream = LogStream(stream)
    resolved = choose_format(stream) if fmt == "auto" else fmt
    processors: list[Processor] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if resolved != "journal":
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=False))
    processors += [structlog.processors.format_exc_info, _renderer(resolved, stream)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(_stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
