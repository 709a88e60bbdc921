"""Child output: pipes from each spawn, read on the loop into each process's streams.

Each spawn gets fresh pipes (SpawnPipes); the daemon keeps the read ends on the event loop. What comes
out goes to the process's `Stream` (io/stream.py: one per process and stream, outliving restarts), which
keeps the last bytes in memory for `procguardctl tail`, feeds `tail -f` followers, and hands the bytes
to its destination:

- a file (io/logfile.py `LogFile`, shared by every stream configured with the same path), rotated by
  size exactly, with supervisor's numbered backups;
- the daemon's own stdout/stderr (`inherit`/`journal`), through a writer thread with a bounded queue,
  so a stalled journal never blocks the loop (io/inherit.py);
- nowhere (`NONE`): only the tail buffer keeps it.

A burst of output never blocks the daemon or other programs, and no byte is lost at rotation or
shutdown (`close` drains every pipe).
"""

import asyncio
import fcntl
import os
from collections.abc import Callable, Iterable
from dataclasses import replace

from procguard.config.model import LOG_NONE, ProcessConfig, ProgramConfig
from procguard.io.inherit import InheritWriter
from procguard.io.logfile import LogFile
from procguard.io.stream import AGAIN, EOF, GenerationTail, Stream, StreamSettings, settings_for
from procguard.log import get_logger

log = get_logger()

PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: fewer wake-ups for chatty children (falls back silently)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


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

    def retire(self, process: str) -> None:
        """The process's program was removed: drop its streams (tails) and release their files (#20).

        A stream a pipe still feeds (a stray of the removed process writes on) is kept until a later retire.
        """
        for name in ("stdout", "stderr"):
            s = self._streams.get((process, name))
            if s is not None and not s.pipes:
                s.configure(replace(s.settings, path=LOG_NONE))  # settles its tail, releases its file
                del self._streams[(process, name)]
        self._trials.pop(process, None)

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
        self.flush_inherited(5.0)
        for f in self._files.values():
            f.close()

    def flush_inherited(self, timeout_s: float) -> None:
        """Wait (blocking) until what is queued for the daemon's stdout/stderr is written (at close, and
        before a re-exec, which would end the writer threads)."""
        for writer in self._inherit.values():
            writer.flush(timeout_s)


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
