"""Child output: pipes -> size-rotated files (or the daemon's stdout/stderr, or nowhere) + a tail buffer.

Each spawn gets fresh pipes; the daemon keeps the read ends on the event loop. What comes out goes to
the process's `Stream` (one per process and stream, outliving restarts), which keeps the last bytes in
memory for `procguardctl tail`, feeds `tail -f` followers, and hands the bytes to its destination:

- a file (`LogFile`, shared by every stream configured with the same path): without timestamps, bytes
  move pipe -> file inside the kernel with splice(2) and are never parsed; with timestamps they are read,
  prefixed at each line start and written. Rotation is exact: a file never exceeds maxbytes (with
  timestamps it is cut at a line end), and backups are numbered like supervisor's: .1 (newest) ... .N.
- the daemon's own stdout/stderr (`inherit`/`journal`), through a writer thread with a bounded queue,
  so a stalled journal never blocks the loop;
- nowhere (`NONE`): only the tail buffer keeps it.

Back-pressure: one wake-up moves at most BUDGET bytes, then the loop serves others (the control socket
among them). A write that fails (disk full, permission) drops the bytes instead of blocking the child;
the error is logged once per episode, retried at most once per RETRY_S when new output arrives, and
every dropped byte is counted (`status` shows it).
"""

import asyncio
import enum
import errno
import fcntl
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import structlog

from procguard.config.model import LOG_INHERIT, LOG_NONE, ProcessConfig, ProgramConfig
from procguard.runtime.executor import IDLE_EXIT_S

log = structlog.get_logger()

CHUNK = 1 << 20  # bytes per splice call
# Bytes per read() where Python touches the data (timestamps, NONE, journal). Small enough that the
# read and its transformed copies come from malloc's free lists: 1 MiB buffers went through
# brk/mmap and fresh page faults on every chunk (benchmarks/bench_output.py: 1.65 CPU s/GiB).
READ_CHUNK = 64 * 1024
BUDGET = 4 << 20  # bytes moved per wake-up of one pipe before the loop serves others
PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: fewer wake-ups for chatty children (falls back silently)
RETRY_S = 1.0  # after a failed write, try the file again at most this often
INHERIT_QUEUE_BYTES = 8 << 20  # what may wait for a slow daemon stdout/stderr before bytes are dropped
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

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
    return datetime.now().astimezone().isoformat(timespec="milliseconds").encode() + b" "


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
            self._fail(exc, 0)

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
            self._fail(exc, 0)

    def rotate(self) -> None:
        """Shift path.N-1 -> path.N ... path -> path.1 and start an empty file (maxbytes reached, or asked)."""
        if self.fd is None:
            try:
                self._open()
            except OSError as exc:
                self._fail(exc, 0)
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
            self._fail(exc, 0)

    # ------------------------------------------------------------------------------- failures

    def _fail(self, exc: OSError, dropped: int) -> None:
        self._failed_at = time.monotonic()
        self._episode_dropped += dropped
        if not self.failing:
            self.failing = True
            log.error("log_write_failed", path=self.path, error=exc.strerror or str(exc),
                      action="dropping output until a write succeeds; retried at most once a second")

    def _recovered(self) -> None:
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
                self._fail(exc, 0)
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
            self._fail(exc, len(data) - pos)
            return len(data) - pos
        if pos < len(data):
            self._episode_dropped += len(data) - pos
            return len(data) - pos
        self._recovered()
        return 0


class InheritWriter:
    """The daemon's own stdout or stderr for `inherit`/`journal` output, written by a thread.

    A blocking write to a stalled journal or a full terminal pipe must not stop the event loop; what
    does not fit in the queue (INHERIT_QUEUE_BYTES) is dropped and counted by the caller.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._broken = False

    def write(self, data: bytes) -> bool:
        with self._cond:
            if self._broken or self._queued + len(data) > INHERIT_QUEUE_BYTES:
                return False
            self._queue.append(data)
            self._queued += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"inherit-fd{self.fd}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    # Idle: leave (write starts another); an idle daemon keeps no thread (#17).
                    if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                        self._thread = None
                        return
                data = self._queue.popleft()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                with self._cond:
                    self._broken = True  # EPIPE or a closed fd: nothing more can go there
            with self._cond:
                self._queued -= len(data)
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait (blocking) until the queue is written, at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queued and not self._broken:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


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

    def tail(self) -> bytes:
        """The newest tail_maxbytes of the stream (ending at self.offset)."""
        self._settle(True)
        return bytes(self.tail_buffer)

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
                        f._fail(exc, 0)  # the bytes are still in the pipe: the read path drops them
                    continue
                if n == 0:
                    return EOF
                f.size += n
                f._recovered()
                if self._episode_dropped:
                    self._account(0, DropCause.WRITE_FAILED)
                moved += n
                if not self.followers and f.users == 1:
                    self._in_file += n  # read back lazily (tail); nobody else writes this file
                    self.offset += n
                    continue
                self._settle(True)
                keep = min(n, self.settings.tail_maxbytes)
                want = n if self.followers else keep
                try:
                    copy = os.pread(f.fd, want, start + n - want) if want else b""
                except OSError:
                    copy = b""
                self._remember(copy[len(copy) - keep:] if keep else b"", n)
                if self.followers:
                    self._notify(copy)
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


class Output:
    """Every process's streams, the files they write, and the pipes being read."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logdir: str,
                 stdout_fd: int = 1, stderr_fd: int = 2) -> None:
        self._loop = loop
        self.logdir = logdir
        self._streams: dict[tuple[str, str], Stream] = {}
        self._files: dict[str, LogFile] = {}
        self._pipes: dict[int, Stream] = {}
        self._taps: dict[int, GenerationTail] = {}  # by read end: the pipes of a generation on trial
        self._trials: dict[str, GenerationTail] = {}  # by process: its latest generation on trial
        self._inherit = {"stdout": InheritWriter(stdout_fd), "stderr": InheritWriter(stderr_fd)}

    # ------------------------------------------------------------------------------ plumbing

    def log_file(self, settings: StreamSettings) -> LogFile:
        key = os.path.abspath(settings.path)
        f = self._files.get(key)
        if f is None:
            f = self._files[key] = LogFile(key, settings.maxbytes, settings.backups, self.logdir)
        f.users += 1
        return f

    def release(self, f: LogFile) -> None:
        f.users -= 1
        if f.users <= 0:
            f.close()
            self._files.pop(f.path, None)

    def inherit_writer(self, stream: str) -> InheritWriter:
        return self._inherit[stream]

    def stream(self, process: str, name: str) -> Stream | None:
        return self._streams.get((process, name))

    def streams_of(self, program: ProgramConfig, proc: ProcessConfig) -> tuple[Stream, Stream | None]:
        """The process's streams, created or updated to its current config (a reload may change it)."""
        out = self._stream(program.name, proc.name, "stdout", settings_for(program, proc, "stdout"))
        if program.redirect_stderr:
            return out, None
        return out, self._stream(program.name, proc.name, "stderr", settings_for(program, proc, "stderr"))

    def _stream(self, program: str, process: str, name: str, settings: StreamSettings) -> Stream:
        s = self._streams.get((process, name))
        if s is None:
            s = self._streams[(process, name)] = Stream(process, name, settings, self, program)
        elif s.settings != settings:
            s.configure(settings)
        return s

    def trial_tail(self, program: ProgramConfig, proc: ProcessConfig, generation: int,
                   active: Callable[[], bool]) -> GenerationTail:
        """A tail of its own for a generation on trial (open_pipes' tap); it replaces the process's last one."""
        cap = max(s.settings.tail_maxbytes for s in self.streams_of(program, proc) if s is not None)
        tail = self._trials[proc.name] = GenerationTail(generation, cap, active)
        return tail

    def generation_output(self, process: str, generation: int, lines: int) -> list[str] | None:
        """The last lines of that generation on trial of the process (stdout and stderr as they came);
        None when it has no tail of its own (never spawned on trial, or a newer one replaced it)."""
        tail = self._trials.get(process)
        return tail.lines(lines) if tail is not None and tail.generation == generation else None

    def open_pipes(self, program: ProgramConfig, proc: ProcessConfig,
                   tap: GenerationTail | None = None) -> "SpawnPipes":
        """Pipes for one spawn: the write ends go to the child, the read ends to `attach` afterwards.
        tap: also keep what this spawn writes there (trial_tail)."""
        out, err = self.streams_of(program, proc)
        pipes = SpawnPipes(self, tap)
        try:
            pipes.add(out)
            if err is not None:
                pipes.add(err)
            for stream in (out, err):
                if stream is not None and stream.file is not None:
                    stream.file.open_for_spawn()
        except OSError:
            pipes.abandon()
            raise
        return pipes

    def _attach(self, rfd: int, stream: Stream, tap: GenerationTail | None) -> None:
        self._pipes[rfd] = stream
        if tap is not None:
            self._taps[rfd] = tap
        stream.pipes += 1
        self._loop.add_reader(rfd, self._readable, rfd)

    def _tap(self, rfd: int) -> GenerationTail | None:
        tap = self._taps.get(rfd)
        if tap is not None and not tap.active():
            del self._taps[rfd]  # it serves now: splice again
            return None
        return tap

    def _readable(self, rfd: int) -> None:
        stream = self._pipes.get(rfd)
        if stream is None:
            return
        if stream.pump(rfd, self._tap(rfd)) == EOF:
            self._detach(rfd)

    def _detach(self, rfd: int) -> None:
        self._loop.remove_reader(rfd)
        self._taps.pop(rfd, None)
        stream = self._pipes.pop(rfd, None)
        os.close(rfd)
        if stream is not None:
            stream.pipes -= 1
            self._close_idle(stream)

    def _close_idle(self, stream: Stream) -> None:
        """Nobody writes to the stream's file now: close it, so a deleted file frees its space and a
        failed spawn holds no descriptor (it reopens on output or at the next spawn)."""
        f = stream.file
        if f is not None and stream.pipes == 0 and not any(s.pipes for s in self._streams.values() if s.file is f):
            f.close()

    def pipes(self) -> dict[int, Stream]:
        """Every pipe being read (its read end) and its stream (upgrade/handoff.py keeps them across exec)."""
        return dict(self._pipes)

    def flush_inherited(self, timeout_s: float) -> None:
        """Wait (blocking) until what is queued for the daemon's stdout/stderr is written (before a re-exec,
        which would end the writer threads)."""
        for writer in self._inherit.values():
            writer.flush(timeout_s)

    def adopt_pipe(self, rfd: int, stream: Stream) -> None:
        """Read a pipe a previous image of this daemon read (upgrade/adopt.py)."""
        self._attach(rfd, stream, None)

    # ------------------------------------------------------------------------------ commands

    def dropped(self, process: str) -> int:
        # Two lookups, not a scan: status asks for every process (a scan was 40 ms at 1000 processes).
        out = self._streams.get((process, "stdout"))
        err = self._streams.get((process, "stderr"))
        return (out.dropped if out else 0) + (err.dropped if err else 0)  # no generator: 1000 calls a status

    def reopen(self) -> int:
        """Reopen every log file (SIGUSR2, `procguardctl logreopen`); return how many."""
        for f in self._files.values():
            f.reopen()
        log.info("logs_reopened", files=len(self._files))
        return len(self._files)

    def rotate(self, processes: Iterable[str]) -> list[str]:
        """Rotate the files of these processes now; return the paths rotated."""
        wanted = set(processes)
        done: list[str] = []
        for (proc, _), s in self._streams.items():
            if proc in wanted and s.file is not None and s.file.path not in done:
                s.file.rotate()
                done.append(s.file.path)
        log.info("logs_rotated", paths=done)
        return done

    def drain(self) -> None:
        """Read every pipe to its end (shutdown): all a child wrote before it exited reaches its file."""
        for rfd, stream in list(self._pipes.items()):
            while True:
                result = stream.pump(rfd, self._tap(rfd))
                if result == EOF:
                    self._detach(rfd)
                    break
                if result == AGAIN:  # a writer still lives (a stray); what it wrote so far is in
                    break

    def close(self) -> None:
        """Drain, stop reading, flush the daemon's stdout/stderr queue, close every file."""
        self.drain()
        for rfd in list(self._pipes):
            self._detach(rfd)
        for writer in self._inherit.values():
            writer.flush(5.0)
        for f in self._files.values():
            f.close()


class SpawnPipes:
    """The pipes of one spawn: write ends for the child, read ends the loop takes over afterwards."""

    def __init__(self, output: Output, tap: GenerationTail | None = None) -> None:
        self._output = output
        self._tap = tap
        self.write_fds: list[int] = []
        self._reads: list[tuple[int, Stream]] = []

    def add(self, stream: Stream) -> None:
        r, w = os.pipe2(os.O_CLOEXEC)
        self._reads.append((r, stream))
        self.write_fds.append(w)
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size for an unprivileged daemon: the default 64 KiB works
        os.set_blocking(r, False)

    @property
    def stdout(self) -> int:
        return self.write_fds[0]

    @property
    def stderr(self) -> int | None:
        return self.write_fds[1] if len(self.write_fds) > 1 else None

    def close_write_ends(self) -> None:
        """After the fork: only the child may hold them, or EOF never comes."""
        for w in self.write_fds:
            os.close(w)
        self.write_fds = []

    def attach(self) -> None:
        self.close_write_ends()
        for r, stream in self._reads:
            self._output._attach(r, stream, self._tap)
        self._reads = []

    def abandon(self) -> None:
        self.close_write_ends()
        for r, _ in self._reads:
            os.close(r)
        for _, stream in self._reads:
            self._output._close_idle(stream)
        self._reads = []
