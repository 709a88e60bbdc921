"""One log file on disk, shared by every stream configured with its path: exact size rotation with
supervisor's numbered backups (.1 newest ... .N), reopening, and episodes of failed writes.

A write that fails (disk full, permission) drops the bytes instead of blocking the child; the error is
logged once per episode, the file retried at most once per RETRY_S when new output arrives.
"""

import errno
import os
import stat
import time
from collections.abc import Callable

from procguard.log import get_logger

log = get_logger()

CHUNK = 1 << 20  # bytes per splice call, and per write when a file has no size limit
RETRY_S = 1.0  # after a failed write, try the file again at most this often


class LogFile:
    """One log file on disk: size rotation, reopen, and failure episodes. Shared by every stream writing it."""

    def __init__(self, path: str, maxbytes: int, backups: int, logdir: str) -> None:
        self.path = path
        self.maxbytes = maxbytes
        self.backups = backups
        self._logdir = logdir
        self.fd: int | None = None
        self.size = 0
        self.failing = False
        self._failed_at = 0.0
        self._episode_dropped = 0
        self.can_splice = True
        self.regular = True
        self.users = 0
        # Streams that left their newest bytes in this file instead of copying them (see Stream.tail):
        # called with True before the file is rotated, reopened or closed (read them now), with False
        # when it was truncated under us (they are gone).
        self.listeners: list[Callable[[bool], None]] = []

    # ---------------------------------------------------------------------------- open/close

    def _open(self) -> None:
        # O_RDWR: the tail buffer and tail -f read back what splice(2) moved into the file (page cache).
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            if os.path.dirname(self.path) != self._logdir:
                raise
            os.makedirs(self._logdir, mode=0o755, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.fd = fd
        st = os.fstat(fd)
        # Positioned writes (pwrite, splice with an offset) at our own idea of the end: splice(2)
        # refuses O_APPEND files. A size from fstat picks up where an earlier run stopped. A device or
        # fifo (/dev/null, /dev/full, a terminal) has no size to rotate and no offset: plain writes.
        self.regular = stat.S_ISREG(st.st_mode)
        self.size = st.st_size if self.regular else 0
        self.can_splice = self.regular

    def open_for_spawn(self) -> None:
        """Open the file before a child writes to it; raise OSError only when out of descriptors.

        Out of descriptors (EMFILE, ENFILE) is a failed spawn that backs off and retries, as for its
        pipes: a child started anyway would have every byte it writes dropped until a descriptor frees
        up. Other errors (a missing directory, permissions) keep the dropping path: the child runs,
        the error is logged once, the bytes are counted (docs/output.md).
        """
        if self.fd is not None or (self.failing and time.monotonic() - self._failed_at < RETRY_S):
            return
        try:
            self._open()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise
            self.fail(exc, 0)

    def _before_change(self, readable: bool = True) -> None:
        for listener in list(self.listeners):
            listener(readable)

    def close(self) -> None:
        if self.fd is not None:
            self._before_change()
            os.close(self.fd)
            self.fd = None

    def reopen(self) -> None:
        """Close and open the path again (after an external logrotate moved the file away)."""
        self.close()
        try:
            self._open()
        except OSError as exc:
            self.fail(exc, 0)

    def rotate(self) -> None:
        """Shift path.N-1 -> path.N ... path -> path.1 and start an empty file (maxbytes reached, or asked)."""
        if self.fd is None:
            try:
                self._open()
            except OSError as exc:
                self.fail(exc, 0)
                return
        if not self.regular:  # /dev/null, /dev/stdout, a fifo: nothing to rotate
            return
        self._before_change()
        try:
            if self.backups > 0:
                for i in range(self.backups - 1, 0, -1):
                    older = f"{self.path}.{i}"
                    if os.path.exists(older):
                        os.replace(older, f"{self.path}.{i + 1}")
                os.replace(self.path, f"{self.path}.1")
                self.close()
                self._open()
            else:
                os.ftruncate(self.fd, 0)  # type: ignore[arg-type]
                self.size = 0
        except OSError as exc:
            self.fail(exc, 0)

    # ------------------------------------------------------------------------------- failures

    def fail(self, exc: OSError, dropped: int) -> None:
        self._failed_at = time.monotonic()
        self._episode_dropped += dropped
        if not self.failing:
            self.failing = True
            log.error("log_write_failed", path=self.path, error=exc.strerror or str(exc),
                      action="dropping output until a write succeeds; retried at most once a second")

    def recovered(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("log_write_recovered", path=self.path, dropped_bytes=self._episode_dropped)
            self._episode_dropped = 0

    def ready(self) -> bool:
        """May we try to write now? False while failing and the retry interval has not passed."""
        if self.failing and time.monotonic() - self._failed_at < RETRY_S:
            return False
        if self.fd is None:
            try:
                self._open()
            except OSError as exc:
                self.fail(exc, 0)
                return False
        elif self.regular:
            # logrotate's copytruncate (or `> file`) shrank it: go on from its new end, not a hole.
            try:
                actual = os.fstat(self.fd).st_size
            except OSError:
                actual = self.size
            if actual < self.size:
                self._before_change(readable=False)
                self.size = actual
        return True

    # --------------------------------------------------------------------------------- writing

    def room(self) -> int:
        if self.maxbytes <= 0 or not self.regular:
            return CHUNK
        return self.maxbytes - self.size

    def write(self, data: bytes, at_lines: bool) -> int:
        """Write data with rotation; return how many bytes were dropped (0 when all were written).

        at_lines: cut files only at line ends (timestamped output), unless one line is bigger than a file.
        """
        if not self.ready():
            self._episode_dropped += len(data)
            return len(data)
        pos = 0
        try:
            while pos < len(data):
                end = len(data)
                if self.maxbytes > 0 and self.regular:
                    room = self.maxbytes - self.size
                    if room <= 0:
                        self.rotate()
                        if self.failing:
                            break
                        continue
                    if end - pos > room:
                        end = pos + room
                        if at_lines:
                            nl = data.rfind(b"\n", pos, end)
                            if nl >= 0:
                                end = nl + 1
                            elif self.size > 0:
                                self.rotate()  # start the long line in a fresh file
                                if self.failing:
                                    break
                                continue
                assert self.fd is not None
                chunk = memoryview(data)[pos:end]
                n = os.pwrite(self.fd, chunk, self.size) if self.regular else os.write(self.fd, chunk)
                self.size += n
                pos += n
        except OSError as exc:
            self.fail(exc, len(data) - pos)
            return len(data) - pos
        if pos < len(data):
            self._episode_dropped += len(data) - pos
            return len(data) - pos
        self.recovered()
        return 0
