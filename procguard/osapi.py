"""The real OS seam: timers on the loop, spawning in a thread, signals, and one reaper for every child.

Why one reaper: the daemon is a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), so orphaned
descendants of any program become its children and must be reaped. Two reapers (pidfds for our own
children plus waitpid(-1) for orphans) would race for the same zombie, so SIGCHLD wakes the loop and
`reap()` collects every zombie with waitpid(-1, WNOHANG). Pid reuse cannot bite: a pid is not reused
until we reap it, and we mark the process gone in the same loop step.
"""

import asyncio
import ctypes
import errno
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil
import structlog

from procguard.errors import SpawnError
from procguard.config import Ready
from procguard.notify import NotifySocket
from procguard.output import Output
from procguard.sockets import SocketSet, in_flight, tcp_sockets_on
from procguard.process import Process, Timer
from procguard.spawn import spawn_process

log = structlog.get_logger()

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants; False where not supported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


STRAY_RETRY_S = 0.2  # after a scan of /proc failed with an OSError (EMFILE)
DRAIN_MIN_S = 0.25  # how long a handover waits for handshakes under way (see RealOS._drain)
DRAIN_POLL_S = 0.02


class RealOS:
    """The seam `process.Process` acts through, bound to one asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logdir: str, output: Output | None = None) -> None:
        self._loop = loop
        self.logdir = logdir
        self.output = output if output is not None else Output(loop, logdir)
        self.sockets = SocketSet()
        self._by_pid: dict[int, Process] = {}
        self._popens: dict[int, subprocess.Popen[Any]] = {}
        self._spawns_in_flight = 0
        self._early_exits: dict[int, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._scan_queue: dict[Process, int | None] = {}
        self._scanning = False
        self.on_reaped: Callable[[int], None] = lambda pid: None
        self.on_spawned: Callable[[Process], None] = lambda process: None
        self._notify: dict[Process, NotifySocket] = {}
        self._command_exits: dict[int, asyncio.Future[int]] = {}

    # --------------------------------------------------------------------------- seam methods

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return self._loop.call_later(delay_s, callback)

    def spawn(self, process: Process) -> None:
        self._own(self._spawn(process))

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
        return _exists(os.killpg, pgid)

    def is_alive(self, pid: int) -> bool:
        return _exists(os.kill, pid)

    def find_strays(self, process: Process, *, leader: int | None) -> None:
        # Coalesce: one scan of /proc serves every process stopping meanwhile (a shutdown of 1000
        # programs queued 1000 full scans: 12.9 s of thread time, benchmarks/bench_engine.py).
        self._scan_queue[process] = leader
        if not self._scanning:
            self._scanning = True
            self._own(self._find_strays())

    def drain(self, process: Process, done: Callable[[], None]) -> None:
        self._own(self._drain(process, done))

    # ------------------------------------------------------------------------------- internals

    async def _drain(self, process: Process, done: Callable[[], None]) -> None:
        """Hand the process's held sockets over and wait until it has answered what it took (sockets.py)."""
        handed = []
        t0 = time.monotonic()
        left = 0
        try:
            candidates = [(name, sock) for name in process.program.sockets
                          if (sock := self.sockets.can_hand_over(name)) is not None]
            listeners = await asyncio.to_thread(lambda: [tcp_sockets_on(sock)[1] for _, sock in candidates])
            for (name, _), count in zip(candidates, listeners):
                old = self.sockets.handover(name, count)
                if old is not None:
                    handed.append(old)
            if not handed:
                return
            log.info("process_draining", process=process.name, pid=process.pid,
                     drain_timeout=process.program.drain_timeout)
            deadline = t0 + process.program.drain_timeout
            # Done after two clean looks in a row: a connection accepted between one look's reading of
            # the table and of the accept queue shows in the next one (as accepted, or it is answered).
            # A handshake begun on the old socket before the handover completes into its queue within
            # a round trip; while any is under way on the address (the table does not say on which
            # listener), wait up to DRAIN_MIN_S for it.
            clean = 0
            while process.draining and clean < 2 and time.monotonic() < deadline:
                left, handshakes = await asyncio.to_thread(in_flight, handed)
                busy = left or (handshakes and time.monotonic() - t0 < DRAIN_MIN_S)
                clean = 0 if busy else clean + 1
                if clean < 2:
                    await asyncio.sleep(DRAIN_POLL_S)
            log.info("process_drained", process=process.name, pid=process.pid,
                     waited_ms=round((time.monotonic() - t0) * 1e3), unanswered=left)
        except Exception as exc:  # never leave the stop waiting: a failed drain is a plain restart
            log.warning("process_drain_failed", process=process.name, error=repr(exc))
        finally:
            for sock in handed:
                sock.close()
            done()

    def _own(self, coro: "asyncio._CoroutineLike[None]") -> None:
        task = self._loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _spawn(self, process: Process) -> None:
        self._spawns_in_flight += 1
        try:
            pipes = self.output.open_pipes(process.program, process.config)
        except OSError as exc:
            self._spawn_done()
            reason = f"cannot create output pipes: {exc.strerror or exc}"
            log.warning("spawn_failed", program=process.program.name, process=process.name, reason=reason)
            process.spawn_failed(reason)
            return
        extra_env: dict[str, str] = {}
        if process.program.ready == Ready.NOTIFY:
            sock = self._notify.get(process)
            if sock is None:
                try:
                    sock = self._notify[process] = NotifySocket(self._loop, lambda: process.pid, process.notified)
                except OSError as exc:
                    pipes.abandon()
                    self._spawn_done()
                    process.spawn_failed(f"cannot create its NOTIFY_SOCKET: {exc.strerror or exc}")
                    return
            extra_env["NOTIFY_SOCKET"] = sock.name
        try:
            # fork/exec off the loop (as trio does): a large daemon's fork can take milliseconds.
            fds = self.sockets.fds(process.program.sockets) if process.program.sockets else None
            popen = await asyncio.to_thread(spawn_process, process.program, process.config,
                                            pipes.stdout, pipes.stderr, extra_env, fds)
        except SpawnError as exc:
            pipes.abandon()
            self._spawn_done()
            log.warning("spawn_failed", program=process.program.name, process=process.name, reason=str(exc))
            process.spawn_failed(str(exc))
            return
        except BaseException:
            pipes.abandon()
            self._spawn_done()
            raise
        pipes.attach()
        pid = popen.pid
        self._by_pid[pid] = process
        self._popens[pid] = popen
        log.info("process_spawned", program=process.program.name, process=process.name, pid=pid)
        process.spawned(pid)
        self.on_spawned(process)
        early = self._early_exits.pop(pid, None)
        self._spawn_done()
        if early is not None:
            # It died before the spawn thread returned; the reaper kept its status for us.
            self._deliver(pid, early)

    def _spawn_done(self) -> None:
        self._spawns_in_flight -= 1
        if self._spawns_in_flight == 0:
            # Statuses of unknown pids are only kept while a spawn could still claim them.
            self._early_exits.clear()

    async def _find_strays(self) -> None:
        try:
            while self._scan_queue:
                batch, self._scan_queue = self._scan_queue, {}
                leaders = {p.name: leader for p, leader in batch.items()}
                try:
                    found = await asyncio.to_thread(_scan_strays, leaders, set(self._by_pid))
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

    def reap(self) -> None:
        """Collect every zombie child; called when SIGCHLD wakes the loop."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            self._deliver(pid, os.waitstatus_to_exitcode(status))

    def _deliver(self, pid: int, code: int) -> None:
        process = self._by_pid.pop(pid, None)
        popen = self._popens.pop(pid, None)
        if popen is not None:
            popen.returncode = code  # so Popen never waits on a pid that may be reused
        command = self._command_exits.pop(pid, None)
        if command is not None:
            if not command.done():
                command.set_result(code)
        elif process is not None:
            process.exited(code)
        elif self._spawns_in_flight:
            self._early_exits[pid] = code
        self.on_reaped(pid)

    async def spawn_command(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]":
        """Start a helper command (an exec health check) off the loop; return its pid and exit future.

        The reaper owns every child's status (waitpid(-1)), so helpers get theirs through here rather
        than from asyncio's child watcher, which would race it and report 255.
        """
        self._spawns_in_flight += 1
        def popen() -> "subprocess.Popen[bytes]":
            return subprocess.Popen(list(argv), **popen_kwargs)

        started = asyncio.ensure_future(asyncio.to_thread(popen))
        try:
            child = await asyncio.shield(started)
        except asyncio.CancelledError:
            # Cancelled while forking: the child exists all the same; kill it, and let the reaper reap it.
            try:
                child = await started
            except Exception:
                self._spawn_done()
                raise asyncio.CancelledError from None
            self._register_command(child)
            self.send_signal(child.pid, signal.SIGKILL, group=True)
            raise
        except BaseException:
            self._spawn_done()
            raise
        return child.pid, self._register_command(child)

    def _register_command(self, popen: "subprocess.Popen[Any]") -> "asyncio.Future[int]":
        exited: asyncio.Future[int] = self._loop.create_future()
        self._popens[popen.pid] = popen
        self._command_exits[popen.pid] = exited
        early = self._early_exits.pop(popen.pid, None)
        self._spawn_done()
        if early is not None:
            self._deliver(popen.pid, early)
        return exited

    def forget(self, process: Process) -> None:
        """The process's program was removed: close what the OS side kept for it."""
        sock = self._notify.pop(process, None)
        if sock is not None:
            sock.close()

    def tracked_pids(self) -> set[int]:
        return set(self._by_pid) | set(self._command_exits)


def _exists(kill: Callable[[int, int], None], ident: int) -> bool:
    """Signal 0 probes existence (kill(2)); EPERM still means it exists."""
    try:
        kill(ident, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _scan_strays(leaders: dict[str, int | None], tracked: set[int]) -> dict[str, set[int]]:
    """For each process, find its leader's descendants outside its process group, and our orphans with its
    marker together with their descendants.

    One pass over /proc for all processes (`leaders` maps process name to leader pid, None when the
    leader is gone). Blocking: run off-loop.
    """
    children_of: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info["ppid"]
        if ppid is not None:
            children_of.setdefault(ppid, []).append(proc.pid)

    def descendants(pid: int) -> list[int]:
        out, stack = [], list(children_of.get(pid, ()))
        while stack:
            out.append(child := stack.pop())
            stack.extend(children_of.get(child, ()))
        return out

    found: dict[str, set[int]] = {name: set() for name in leaders}
    for name, leader in leaders.items():
        if leader is None:
            continue
        for pid in descendants(leader):
            try:
                if os.getpgid(pid) != leader:
                    found[name].add(pid)
            except ProcessLookupError:
                pass
    # Orphans were reparented to us (subreaper); the PROCGUARD_PROCESS marker says whose they are, and
    # whatever they started is theirs too.
    for pid in children_of.get(os.getpid(), ()):
        if pid in tracked:
            continue
        try:
            owner = psutil.Process(pid).environ().get("PROCGUARD_PROCESS")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if owner in found:
            found[owner].add(pid)
            found[owner].update(descendants(pid))
    return found


def untracked_children(tracked: set[int]) -> list[int]:
    """Our direct children that no program owns (orphans reparented to the subreaper)."""
    out = []
    for child in psutil.Process().children():
        if child.pid not in tracked:
            out.append(child.pid)
    return out


def tree_rss(pid: int) -> int | None:
    """RSS of pid and all its descendants in bytes; None when pid is gone. Blocking: run off-loop."""
    try:
        leader = psutil.Process(pid)
        procs = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total
