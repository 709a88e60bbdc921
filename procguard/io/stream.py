"""One process's stdout or stderr across its restarts: where its bytes go, its tail buffer, its followers.

Without timestamps, bytes move pipe -> file inside the kernel with splice(2) and are never parsed; with
timestamps they are read, prefixed at each line start and written (cut only at line ends). Back-pressure:
one wake-up moves at most BUDGET bytes, then the loop serves others (the control socket among them).
Every dropped byte is counted (`status` shows it) and logged once per episode.
"""

import enum
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from procguard.config.model import LOG_INHERIT, LOG_NONE, ProcessConfig, ProgramConfig
from procguard.io.logfile import CHUNK, LogFile
from procguard.log import get_logger

if TYPE_CHECKING:
    from procguard.io.output import Output

log = get_logger()

# Bytes per read() where Python touches the data (timestamps, NONE, journal). Small enough that the
# read and its transformed copies come from malloc's free lists: 1 MiB buffers went through
# brk/mmap and fresh page faults on every chunk (benchmarks/bench_output.py: 1.65 CPU s/GiB).
READ_CHUNK = 64 * 1024
BUDGET = 4 << 20  # bytes moved per wake-up of one pipe before the loop serves others

EOF, AGAIN, MORE = 0, 1, 2

Follower = Callable[[bytes, int], None]  # (bytes, offset of their end in the stream)


class DropCause(enum.StrEnum):
    """Why output was dropped (the `cause` of an output_dropped event)."""

    WRITE_FAILED = "write_failed"  # the log file could not be written (disk full, permissions)
    QUEUE_FULL = "queue_full"  # the daemon's own stdout/stderr did not keep up


@dataclass(frozen=True, slots=True)
class StreamSettings:
    path: str  # a file, LOG_NONE or LOG_INHERIT
    maxbytes: int
    backups: int
    timestamps: bool
    tail_maxbytes: int


def settings_for(program: ProgramConfig, proc: ProcessConfig, stream: str) -> StreamSettings:
    if stream == "stdout":
        return StreamSettings(proc.stdout_logfile, program.stdout_logfile_maxbytes, program.stdout_logfile_backups,
                              program.stdout_logfile_timestamps, program.stdout_tail_maxbytes)
    return StreamSettings(proc.stderr_logfile, program.stderr_logfile_maxbytes, program.stderr_logfile_backups,
                          program.stderr_logfile_timestamps, program.stderr_tail_maxbytes)


def timestamp() -> bytes:
    """ISO 8601 with milliseconds and the UTC offset, e.g. 2026-11-24T19:41:02.123+00:00, and a space."""
    from datetime import datetime  # only a daemon with timestamped output loads it (#17)

    return datetime.now().astimezone().isoformat(timespec="milliseconds").encode() + b" "


class GenerationTail:
    """The last output of one generation on trial (a deploy's next generation), apart from its process's
    shared tail: under load the current generation's access log would push its last words out of that.

    Fed only while `active()` (the generation is on trial): its pipes use the read path meanwhile (no
    splice), and splice again once it serves.
    """

    def __init__(self, generation: int, maxbytes: int, active: Callable[[], bool]) -> None:
        self.generation = generation
        self.maxbytes = maxbytes
        self.active = active
        self.data = bytearray()

    def add(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > self.maxbytes:
            del self.data[: len(self.data) - self.maxbytes]

    def lines(self, n: int) -> list[str]:
        return self.data.decode(errors="replace").splitlines()[-n:]


class Stream:
    """One process's stdout or stderr across its restarts: destination, tail buffer, followers."""

    def __init__(self, process: str, name: str, settings: StreamSettings, output: "Output", program: str) -> None:
        self.process = process
        self.program = program
        self.name = name
        self._output = output
        self.settings = settings
        self.file: LogFile | None = None
        self.tail_buffer = bytearray()
        self.offset = 0  # bytes ever emitted (after timestamps): the end of tail_buffer in the stream
        self.dropped = 0
        self._episode_dropped = 0  # dropped since output_dropped was logged; 0 when not dropping
        self._at_line_start = True
        # Bytes spliced into our own (unshared) file that tail_buffer does not hold yet: read back
        # from the file only when someone asks (tail) or before the file changes. Copying them back
        # after every splice cost 15% of the daemon's CPU per GiB (benchmarks/bench_output.py).
        self._in_file = 0
        self.pipes = 0  # open pipes of live or draining spawns
        self.followers: set[Follower] = set()
        self.configure(settings)

    def configure(self, settings: StreamSettings) -> None:
        """Apply (new) settings; a changed path moves to another file."""
        old_path = self.file.path if self.file is not None else None
        self.settings = settings
        if settings.path in (LOG_NONE, LOG_INHERIT):
            new_file = None
        elif old_path == settings.path and self.file is not None:
            new_file = self.file
            new_file.maxbytes, new_file.backups = settings.maxbytes, settings.backups
        else:
            new_file = self._output.log_file(settings)
        if new_file is not self.file:
            if self.file is not None:
                self._settle(True)
                self.file.listeners.remove(self._settle)
                self._output.release(self.file)
            self.file = new_file
            if new_file is not None:
                new_file.listeners.append(self._settle)
        if len(self.tail_buffer) > settings.tail_maxbytes:
            del self.tail_buffer[: len(self.tail_buffer) - settings.tail_maxbytes]

    def _remember(self, data: bytes | memoryview, total: int) -> None:
        """Keep the last tail_maxbytes; `total` is how many bytes data ends (may be the tail of a larger move)."""
        self.offset += total
        cap = self.settings.tail_maxbytes
        if len(data) >= cap:
            self.tail_buffer[:] = data[len(data) - cap:] if cap else b""
        else:
            self.tail_buffer += data
            if len(self.tail_buffer) > cap:
                del self.tail_buffer[: len(self.tail_buffer) - cap]

    def _settle(self, readable: bool) -> None:
        """Move bytes left in the file into tail_buffer (before the file changes, or for a reader)."""
        if not self._in_file:
            return
        f = self.file
        want = min(self._in_file, self.settings.tail_maxbytes)
        self._in_file = 0
        data = b""
        if readable and f is not None and f.fd is not None and want:
            try:
                data = os.pread(f.fd, want, f.size - want)
            except OSError:
                data = b""
        self._remember(data, 0)

    def tail(self) -> bytes:
        """The newest tail_maxbytes of the stream (ending at self.offset)."""
        self._settle(True)
        return bytes(self.tail_buffer)

    def saved(self) -> tuple[bytes, int, bool]:
        """What a re-exec hands over (upgrade/handoff.py), without reading the file: the tail buffer, how many
        newer bytes are only in the file (_in_file), and whether the next byte begins a line (timestamps)."""
        return bytes(self.tail_buffer), self._in_file, self._at_line_start

    def restore(self, tail: bytes, in_file: int, at_line_start: bool) -> None:
        """Take over a previous image's saved() (upgrade/adopt.py). The file is opened now, at the size the
        previous image left (its pipes are not read yet), so the bytes only there can be read back."""
        self.tail_buffer = bytearray(tail)
        self._at_line_start = at_line_start
        f = self.file
        if in_file and f is not None:
            try:
                f.open_for_spawn()
            except OSError:
                pass
        self._in_file = in_file if f is not None and f.fd is not None else 0

    def _notify(self, data: bytes) -> None:
        for follower in list(self.followers):
            follower(data, self.offset)

    def pump(self, rfd: int, tap: GenerationTail | None = None) -> int:
        """Move what the pipe holds (up to BUDGET); return EOF, AGAIN (drained for now) or MORE.
        tap: a generation's own tail that gets a copy (through the read path: splice never shows the bytes)."""
        moved = 0
        f = self.file
        if f is not None and not f.failing:
            f.ready()  # opens the file if needed, notices an external truncation
        while moved < BUDGET:
            if tap is None and f is not None and not self.settings.timestamps and f.can_splice and not f.failing \
                    and f.fd is not None:
                room = f.room()
                if room <= 0:
                    f.rotate()
                    continue
                start = f.size
                try:
                    n = os.splice(rfd, f.fd, min(CHUNK, room), offset_dst=start,
                                  flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
                except BlockingIOError:
                    return AGAIN
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        f.can_splice = False  # the target cannot splice (some devices): read + write
                    else:
                        f.fail(exc, 0)  # the bytes are still in the pipe: the read path drops them
                    continue
                if n == 0:
                    return EOF
                moved += n
                self._spliced(f, f.fd, start, n)
                continue
            try:
                data = os.read(rfd, READ_CHUNK)
            except BlockingIOError:
                return AGAIN
            if not data:
                return EOF
            if tap is not None:
                tap.add(data)
            self._emit(data)
            moved += len(data)
        return MORE

    def _spliced(self, f: LogFile, fd: int, start: int, n: int) -> None:
        """n bytes went into f at offset start: account for them, and copy what the tail and followers need."""
        f.size += n
        f.recovered()
        if self._episode_dropped:
            self._account(0, DropCause.WRITE_FAILED)
        if not self.followers and f.users == 1:
            self._in_file += n  # read back lazily (tail); nobody else writes this file
            self.offset += n
            return
        self._settle(True)
        keep = min(n, self.settings.tail_maxbytes)
        want = n if self.followers else keep
        try:
            copy = os.pread(fd, want, start + n - want) if want else b""
        except OSError:
            copy = b""
        self._remember(copy[len(copy) - keep:] if keep else b"", n)
        if self.followers:
            self._notify(copy)

    def _emit(self, data: bytes) -> None:
        if self.settings.timestamps:
            prefix = timestamp()
            ends_line = data.endswith(b"\n")
            # One copy: every newline gets the next line's prefix, then the one after the last is cut.
            data = (prefix if self._at_line_start else b"") + data.replace(b"\n", b"\n" + prefix)
            if ends_line:
                data = data[: len(data) - len(prefix)]
            self._at_line_start = ends_line
        self._settle(True)
        self._remember(data, len(data))
        self._notify(data)
        path = self.settings.path
        if path == LOG_NONE:
            return
        if path == LOG_INHERIT:
            writer = self._output.inherit_writer(self.name)
            self._account(0 if writer.write(data) else len(data), DropCause.QUEUE_FULL)
            return
        assert self.file is not None
        self._account(self.file.write(data, at_lines=self.settings.timestamps), DropCause.WRITE_FAILED)

    def _account(self, dropped: int, cause: DropCause) -> None:
        """Count dropped bytes; log output_dropped once when an episode begins, output_recovered at its end."""
        if dropped:
            self.dropped += dropped
            if not self._episode_dropped:
                log.warning("output_dropped", program=self.program, process=self.process, stream=self.name,
                            path=self.settings.path, cause=cause, dropped_bytes=dropped)
            self._episode_dropped += dropped
        elif self._episode_dropped:
            log.info("output_recovered", program=self.program, process=self.process, stream=self.name,
                     path=self.settings.path, dropped_bytes=self._episode_dropped)
            self._episode_dropped = 0
