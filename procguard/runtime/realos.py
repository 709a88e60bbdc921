"""The real OS seam that `engine.process.Process` acts through, bound to one asyncio loop.

Each method is a thin entry into the module that owns its concept: timers and signals here, children's
start in runtime/spawn.py, exits in runtime/reaper.py, the process table in runtime/procfs.py, held
sockets' handovers in io/handover.py, output in io/output.py. Work that blocks runs off the loop in a
task RealOS owns (`tasks`), which the daemon cancels at shutdown.
"""

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from procguard.engine.process import Process
from procguard.io.handover import Handover
from procguard.io.listeners import SocketSet
from procguard.io.notify import NotifySocket, NotifySockets
from procguard.io.output import Output
from procguard.log import get_logger
from procguard.runtime import procfs, spawn
from procguard.runtime.reaper import Reaper
from procguard.runtime.seam import CheckRoute, Timer

log = get_logger()

STRAY_RETRY_S = 0.2  # after a scan of /proc failed with an OSError (EMFILE)


class RealOS:
    """The seam `process.Process` acts through, bound to one asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logdir: str, output: Output | None = None, *,
                 on_reaped: Callable[[int], None] = lambda pid: None,
                 on_spawned: Callable[[Process], None] = lambda process: None) -> None:
        self._loop = loop
        self.logdir = logdir
        self.output = output if output is not None else Output(loop, logdir)
        self.sockets = SocketSet()
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_reaped = on_reaped  # a child that led no process was reaped
        self.on_spawned = on_spawned
        self._reaper = Reaper(loop, lambda pid: self.on_reaped(pid))
        self._handover = Handover(loop, self.sockets)
        self._notify = NotifySockets(loop)
        self._starter = spawn.ChildStarter(self.output, self._notify, self._handover, self._reaper,
                                           lambda process: self.on_spawned(process))
        self._scan_queue: dict[Process, int | None] = {}
        self._scanning = False

    # --------------------------------------------------------------------------- seam methods

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(delay_s, callback)

    def spawn(self, process: Process) -> None:
        self._own(self._starter.start(process))

    def send_signal(self, pid: int, sig: int, *, group: bool) -> None:
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            log.warning("signal_refused", pid=pid, signal=signal.Signals(sig).name, error=str(exc))

    def is_group_alive(self, pgid: int) -> bool:
        return procfs.group_exists(pgid)

    def is_alive(self, pid: int) -> bool:
        return procfs.pid_exists(pid)

    def find_strays(self, process: Process, *, leader: int | None) -> None:
        # Coalesce: one scan of /proc serves every process stopping meanwhile (a shutdown of 1000
        # programs queued 1000 full scans: 12.9 s of thread time, benchmarks/bench_engine.py).
        self._scan_queue[process] = leader
        if not self._scanning:
            self._scanning = True
            self._own(self._find_strays())

    def drain(self, process: Process, done: Callable[[], None]) -> None:
        self._own(self._handover.drain(process, done))

    def prepare_next(self, process: Process, done: Callable[[str | None], None]) -> None:
        self._own(self._handover.prepare_next(process, done))

    def switch_to_next(self, current: Process, nxt: Process, done: Callable[[], None]) -> None:
        self._own(self._handover.switch_to_next(current, nxt, done))

    def discard_next(self, process: Process) -> None:
        self._handover.discard_next(process)

    def drain_orphans(self, process: Process, pgid: int, done: Callable[[], None]) -> None:
        self._own(self._handover.drain_orphans(process, pgid, done))

    def check_route(self, process: Process) -> CheckRoute | None:
        return self._handover.check_route(process)

    async def spawn_command(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]":
        """Start a helper command (an exec health check) off the loop; return its pid and exit future.

        popen_kwargs: spawn.popen's keywords. The reaper owns every child's status (waitpid(-1)), so
        helpers get theirs through here rather than from asyncio's child watcher, which would race it
        and report 255.
        """
        with self._reaper.expecting():
            child = await spawn.start_command(argv, self._kill_command, **popen_kwargs)
            return child.pid, self._reaper.add_command(child)

    async def tree_rss(self, pid: int) -> int | None:
        return await asyncio.to_thread(procfs.tree_rss, pid)

    def _kill_command(self, child: "subprocess.Popen[bytes]") -> None:
        """A command whose start was cancelled: the reaper collects it once killed."""
        self._reaper.add_command(child)
        self.send_signal(child.pid, signal.SIGKILL, group=True)

    def forget(self, process: Process) -> None:
        """The process is gone for good: close what the OS side kept for it."""
        self.discard_next(process)
        self._notify.close(process)

    def retire(self, process: Process) -> None:
        self.output.retire(process.name)

    # ------------------------------------------------------------------------------ a re-exec

    def adopt(self, process: Process, pid: int | None, notify: tuple[int, str] | None) -> None:
        """Own what a previous image of this daemon started (upgrade/adopt.py): its pid's exit comes to
        `process`, and its NOTIFY_SOCKET (fd, name) stays the one the child knows."""
        if pid is not None:
            self._reaper.adopt(process, pid)
        if notify is not None:
            self._notify.adopt(process, *notify)

    def notify_socket(self, process: Process) -> NotifySocket | None:
        return self._notify.of(process)

    # ------------------------------------------------------------------------------- the reaper

    def reap(self) -> None:
        """Collect every zombie child; called when SIGCHLD wakes the loop."""
        self._reaper.reap()

    def tracked_pids(self) -> set[int]:
        return self._reaper.tracked_pids()

    # ------------------------------------------------------------------------------- internals

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _find_strays(self) -> None:
        try:
            while self._scan_queue:
                batch, self._scan_queue = self._scan_queue, {}
                leaders = {p.name: leader for p, leader in batch.items()}
                try:
                    found = await asyncio.to_thread(procfs.scan_strays, leaders, self._reaper.leaders())
                except OSError as exc:
                    # Out of descriptors (EMFILE) or memory: /proc could not be read, so nothing is known
                    # about strays; "found nothing" would let a stop end with one alive. Try again shortly
                    # (the stop's SIGKILL escalation goes on meanwhile); newer requests take precedence.
                    log.warning("stray_scan_failed", processes=sorted(leaders), error=exc.strerror or str(exc),
                                action=f"retrying in {STRAY_RETRY_S}s")
                    await asyncio.sleep(STRAY_RETRY_S)
                    self._scan_queue = {**batch, **self._scan_queue}
                    continue
                except Exception:  # task boundary: a failed scan must not break the stop
                    log.exception("stray_scan_failed", processes=sorted(leaders))
                    found = {}  # answer all the same: the stop waits for it (and rescans once all is gone)
                for process in batch:
                    pids = found.get(process.name, set())
                    if pids:
                        log.info("strays_found", process=process.name, pids=sorted(pids))
                    process.add_strays(pids)
        finally:
            self._scanning = False
