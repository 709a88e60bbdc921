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

import structlog

from procguard.errors import SpawnError
from procguard.config.model import Ready
from procguard.io.notify import NotifySocket
from procguard.io.output import Output
from procguard.io.listeners import NextSockets, SocketSet, SocketsNotReady, generation_in_flight, in_flight, tcp_sockets_on
from procguard.engine.process import Process
from procguard.runtime.seam import CheckRoute, Timer
from procguard.runtime import procfs
from procguard.runtime.spawn import spawn_process

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

    def __init__(self, loop: asyncio.AbstractEventLoop, logdir: str, output: Output | None = None, *,
                 on_reaped: Callable[[int], None] = lambda pid: None,
                 on_spawned: Callable[[Process], None] = lambda process: None) -> None:
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
        self.on_reaped = on_reaped  # a child that led no process was reaped
        self.on_spawned = on_spawned
        self._notify: dict[Process, NotifySocket] = {}
        self._command_exits: dict[int, asyncio.Future[int]] = {}
        self._next: dict[Process, NextSockets] = {}  # next generations' sockets until their switch
        self._handing: dict[Process, asyncio.Future[None]] = {}  # a spawn waits for an orphans' handover

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

    def prepare_next(self, process: Process, done: Callable[[str | None], None]) -> None:
        self._own(self._prepare_next(process, done))

    def switch_to_next(self, current: Process, nxt: Process, done: Callable[[], None]) -> None:
        sockets = self._next.pop(nxt, None)
        old = self.sockets.switch_to_next(sockets) if sockets is not None else []
        log.info("process_switched", process=nxt.name, pid=nxt.pid, previous_pid=current.pid, sockets=len(old))
        self._own(self._drain_generation(current, old, done))

    def discard_next(self, process: Process) -> None:
        sockets = self._next.pop(process, None)
        if sockets is not None:
            self.sockets.discard_next(sockets)

    def drain_orphans(self, process: Process, pgid: int, done: Callable[[], None]) -> None:
        handed: asyncio.Future[None] = self._loop.create_future()
        self._handing[process] = handed
        self._own(self._drain_orphans(process, pgid, handed, done))

    def check_route(self, process: Process) -> CheckRoute | None:
        sockets = self._next.get(process)
        return sockets.route if sockets is not None else None

    # ------------------------------------------------------------------------------- internals

    async def _prepare_next(self, process: Process, done: Callable[[str | None], None]) -> None:
        names = process.program.sockets
        try:
            listeners = await asyncio.to_thread(self.sockets.listener_counts, names)
            self._next[process] = self.sockets.prepare_next(names, listeners)
        except SocketsNotReady as exc:
            done(str(exc))
            return
        except Exception as exc:  # task boundary: the replace must hear back
            log.exception("next_sockets_failed", process=process.name)
            done(f"cannot prepare sockets for the next generation: {exc!r}")
            return
        done(None)

    async def _drain_orphans(self, process: Process, pgid: int, handed_over: "asyncio.Future[None]",
                             done: Callable[[], None]) -> None:
        handed: list[Any] = []
        try:
            await self._hand_over(process, handed)
        except Exception as exc:  # the replacement must start all the same
            log.warning("orphans_handover_failed", process=process.name, error=repr(exc))
        finally:
            self._handing.pop(process, None)
            handed_over.set_result(None)
        log.info("orphans_draining", process=process.name, pgid=pgid, sockets=len(handed))
        await self._drain_generation(process, handed, done, leader=pgid)

    async def _hand_over(self, process: Process, handed: list[Any]) -> None:
        """Steer new connections on the process's TCP held sockets to fresh ones (sockets.py handover),
        adding each old socket (what the process has not accepted yet) to `handed` as it goes, so the
        caller closes every one even when a later handover fails."""
        candidates = [(name, sock) for name in process.program.sockets
                      if (sock := self.sockets.can_hand_over(name)) is not None]
        listeners = await asyncio.to_thread(lambda: [tcp_sockets_on(sock)[1] for _, sock in candidates])
        for (name, _), count in zip(candidates, listeners):
            old = self.sockets.handover(name, count)
            if old is not None:
                handed.append(old)

    async def _drain_generation(self, current: Process, old: list[Any], done: Callable[[], None],
                                leader: int | None = None) -> None:
        """After a switch: wait until the current generation has answered what it took (as _drain, but
        counting only its own connections: the next generation accepts on the same address).
        leader: the group to wait for (default current.pid's)."""
        t0 = time.monotonic()
        left = 0
        try:
            if not old:
                return
            limit_s = current.program.drain_timeout or current.program.stopwaitsecs
            group = current.pid if leader is None else leader
            clean = 0
            while clean < 2 and time.monotonic() < t0 + limit_s and group is not None \
                    and self.is_group_alive(group):
                left, handshakes = await asyncio.to_thread(
                    lambda: generation_in_flight(old, _group_pids(group)))
                busy = left or (handshakes and time.monotonic() - t0 < DRAIN_MIN_S)
                clean = 0 if busy else clean + 1
                if clean < 2:
                    await asyncio.sleep(DRAIN_POLL_S)
            log.info("process_drained", process=current.name, pid=current.pid,
                     waited_ms=round((time.monotonic() - t0) * 1e3), unanswered=left)
        except Exception as exc:  # never leave the stop waiting
            log.warning("process_drain_failed", process=current.name, error=repr(exc))
        finally:
            for sock in old:
                sock.close()
            done()

    async def _drain(self, process: Process, done: Callable[[], None]) -> None:
        """Hand the process's held sockets over and wait until it has answered what it took (sockets.py)."""
        handed: list[Any] = []
        t0 = time.monotonic()
        left = 0
        try:
            await self._hand_over(process, handed)
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
        handing = self._handing.get(process)
        if handing is not None:
            await handing  # the sockets move away from a crashed leader's orphans first (drain_orphans)
        self._spawns_in_flight += 1
        try:
            # A generation on trial keeps its own last output too: a failed deploy's reply shows its last words.
            tap = self.output.trial_tail(process.program, process.config, process.generation,
                                         lambda: process.trial) if process.trial else None
            pipes = self.output.open_pipes(process.program, process.config, tap)
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
            nxt = self._next.get(process)
            fds = self.sockets.next_fds(nxt) if nxt is not None else \
                self.sockets.fds(process.program.sockets) if process.program.sockets else None
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
            # A leader is no other process's group member or stray: telling every stopping process
            # (on_reaped) made a shutdown of 1000 programs O(N^2), a third of its loop time (#17).
            return
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

    async def tree_rss(self, pid: int) -> int | None:
        return await asyncio.to_thread(procfs.tree_rss, pid)

    def forget(self, process: Process) -> None:
        """The process is gone for good: close what the OS side kept for it."""
        self.discard_next(process)
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
    children_of = _children_by_parent()

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
    live_leaders = {leader for leader in leaders.values() if leader is not None}
    for pid in children_of.get(os.getpid(), ()):
        if pid in tracked or pid in live_leaders:
            continue
        owner = _marker(pid)
        if owner in found:
            found[owner].add(pid)
            found[owner].update(descendants(pid))
    return found


def _marker(pid: int) -> str | None:
    """The PROCGUARD_PROCESS marker in pid's environment, or None (gone, unreadable, unmarked)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return None
    return next((v[len(b"PROCGUARD_PROCESS="):].decode(errors="replace") for v in environ
                 if v.startswith(b"PROCGUARD_PROCESS=")), None)


def _stat_fields() -> "list[tuple[int, list[bytes]]]":
    """(pid, the /proc/PID/stat fields after comm) for every process; one read each (proc(5)).

    Not psutil.process_iter: its Process objects (create_time, as_dict) made the stray scan the largest
    part of a 1000-program shutdown after logging, on the spawn pool while the loop stopped the rest (#17).
    """
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # comm may hold spaces and parentheses: the fields after it start past the last ')'.
        out.append((int(name), stat.rpartition(b")")[2].split(None, 3)))
    return out


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children (ppid is stat's field 4)."""
    children_of: dict[int, list[int]] = {}
    for pid, fields in _stat_fields():
        if len(fields) >= 2:
            children_of.setdefault(int(fields[1]), []).append(pid)
    return children_of


def _group_pids(pgid: int) -> list[int]:
    """The members of process group pgid (stat's field 5); its leader may be gone. Blocking: reads /proc."""
    return [pid for pid, fields in _stat_fields() if len(fields) >= 3 and int(fields[2]) == pgid]


def untracked_children(tracked: set[int]) -> list[int]:
    """Our direct children that no program owns (orphans reparented to the subreaper)."""
    return [pid for pid in direct_children() if pid not in tracked]


def direct_children() -> set[int]:
    """This process's children: /proc/self/task/*/children (proc(5)), not a scan of every process.

    A child is listed under the thread that forked it (or, once that thread ended, the one it was
    reparented to inside this process), so every thread's list is read. Without CONFIG_PROC_CHILDREN:
    psutil's scan of /proc.
    """
    out: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
        for tid in tids:
            try:
                with open(f"/proc/self/task/{tid}/children", "rb") as f:
                    out.update(int(pid) for pid in f.read().split())
            except FileNotFoundError:
                if not os.path.exists("/proc/self/task/" + tid):
                    continue  # that thread ended meanwhile
                raise
    except FileNotFoundError:
        import psutil  # lazily: only where the kernel lacks the children file

        return {child.pid for child in psutil.Process().children()}
    return out
