"""Configure structlog once for the daemon: console on a TTY, JSON lines otherwise."""

import logging
import sys
from typing import Literal

import structlog

Format = Literal["auto", "console", "json", "journal"]


def configure_logging(level: str = "info", fmt: Format = "auto") -> None:
    """Route structlog to stderr at `level`; `auto` picks console on a TTY, JSON lines otherwise."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=False),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
