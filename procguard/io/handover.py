"""Handover: moving a program's held sockets from one generation to the next without dropping a connection.

Restart (drain_timeout): servers that cut off connections they accepted but had not answered when they
stop (daphne, hypercorn, uWSGI's workers blocked in accept) would drop requests even on a held socket.
So a restart first binds a fresh socket to the same address, in the same reuseport group, and steers
every new connection to it (io/steering.py). The old process keeps its socket and everything already
queued on it, and gets no new connection; once it has accepted and finished them (io/inflight.py) or
drain_timeout passed, procguard closes its copy and the stop goes on. New connections wait on the
fresh socket for the next process, as on any held socket.

Next generation (an overlapping replace, docs/deploys.md): the next generation starts beside the current
one on fresh sockets that get no public traffic (io/listeners.py, NextSockets) and only takes new
connections at the switch; the current generation then drains the same way. A crashed leader's orphans
still serving on the sockets are drained so too, before the replacement starts.

Every drain ends the same way: two clean looks in a row, or its limit, then its sockets are closed and
`done` is called, even when something failed (a failed drain is a plain restart).
"""

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from procguard.engine.process import Process
from procguard.io.inflight import in_flight, listeners_on
from procguard.io.listeners import NextSockets, SocketSet, SocketsNotReady
from procguard.log import get_logger
from procguard.runtime import procfs
from procguard.runtime.seam import CheckRoute

log = get_logger()

DRAIN_MIN_S = 0.25  # how long a drain waits for handshakes under way (see Handover._wait_answered)
DRAIN_POLL_S = 0.02


class Handover:
    """The handovers of the held sockets in `sockets`; every method that waits returns a coroutine for the
    caller to own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: SocketSet) -> None:
        self._loop = loop
        self._sockets = sockets
        self._next: dict[Process, NextSockets] = {}  # next generations' sockets until their switch
        self._handing: dict[Process, asyncio.Future[None]] = {}  # a spawn waits for an orphans' handover

    # ---------------------------------------------------------------------- what a child inherits

    def fds_for(self, process: Process) -> list[int] | None:
        """The held sockets a child of process gets (a next generation: its own fresh ones)."""
        nxt = self._next.get(process)
        if nxt is not None:
            return self._sockets.next_fds(nxt)
        return self._sockets.fds(process.program.sockets) if process.program.sockets else None

    async def settled(self, process: Process) -> None:
        """Return once no handover of process's sockets from its orphans is under way (drain_orphans)."""
        handing = self._handing.get(process)
        if handing is not None:
            await handing

    def check_route(self, process: Process) -> CheckRoute | None:
        sockets = self._next.get(process)
        return sockets.route if sockets is not None else None

    # ------------------------------------------------------------------------------ next generation

    async def prepare_next(self, process: Process, done: Callable[[str | None], None]) -> None:
        names = process.program.sockets
        try:
            listeners = await asyncio.to_thread(self._sockets.listener_counts, names)
            self._next[process] = self._sockets.prepare_next(names, listeners)
        except SocketsNotReady as exc:
            done(str(exc))
            return
        except Exception as exc:  # task boundary: the replace must hear back
            log.exception("next_sockets_failed", process=process.name)
            done(f"cannot prepare sockets for the next generation: {exc!r}")
            return
        done(None)

    def switch_to_next(self, current: Process, nxt: Process, done: Callable[[], None]) -> Coroutine[Any, Any, None]:
        """Switch now; the coroutine returned drains current (its own connections only)."""
        sockets = self._next.pop(nxt, None)
        old = self._sockets.switch_to_next(sockets) if sockets is not None else []
        log.info("process_switched", process=nxt.name, pid=nxt.pid, previous_pid=current.pid, sockets=len(old))
        return self._drain_generation(current, old, done, current.pid)

    def discard_next(self, process: Process) -> None:
        sockets = self._next.pop(process, None)
        if sockets is not None:
            self._sockets.discard_next(sockets)

    # ----------------------------------------------------------------------------------- draining

    async def drain(self, process: Process, done: Callable[[], None]) -> None:
        """Hand the process's held sockets over and wait until it has answered what it took."""
        handed: list[socket.socket] = []

        async def hand_over() -> None:
            await self._hand_over(process, handed)
            if handed:
                log.info("process_draining", process=process.name, pid=process.pid,
                         drain_timeout=process.program.drain_timeout)

        await self._wait_answered(process, handed, done, limit_s=process.program.drain_timeout,
                                  count=lambda: in_flight(handed), is_waiting=lambda: process.draining,
                                  prelude=hand_over)

    def drain_orphans(self, process: Process, pgid: int, done: Callable[[], None]) -> Coroutine[Any, Any, None]:
        """Hand over the sockets a crashed leader's orphans (group pgid) serve on; the coroutine returned
        then drains them. A spawn of process waits for the handover (settled) from now on."""
        handed: asyncio.Future[None] = self._loop.create_future()
        self._handing[process] = handed
        return self._drain_orphans(process, pgid, handed, done)

    async def _drain_orphans(self, process: Process, pgid: int, handed_over: "asyncio.Future[None]",
                             done: Callable[[], None]) -> None:
        handed: list[socket.socket] = []
        try:
            await self._hand_over(process, handed)
        except Exception as exc:  # the replacement must start all the same
            log.warning("orphans_handover_failed", process=process.name, error=repr(exc))
        finally:
            self._handing.pop(process, None)
            handed_over.set_result(None)
        log.info("orphans_draining", process=process.name, pgid=pgid, sockets=len(handed))
        await self._drain_generation(process, handed, done, pgid)

    async def _hand_over(self, process: Process, handed: list[socket.socket]) -> None:
        """Steer new connections on the process's TCP held sockets to fresh ones (SocketSet.handover),
        adding each old socket (what the process has not accepted yet) to `handed` as it goes, so the
        caller closes every one even when a later handover fails."""
        candidates = [(name, sock) for name in process.program.sockets
                      if (sock := self._sockets.can_hand_over(name)) is not None]
        listeners = await asyncio.to_thread(lambda: [listeners_on(sock) for _, sock in candidates])
        for (name, _), count in zip(candidates, listeners):
            old = self._sockets.handover(name, count)
            if old is not None:
                handed.append(old)

    async def _drain_generation(self, process: Process, old: list[socket.socket], done: Callable[[], None],
                                group: int | None) -> None:
        """Wait until the generation led by `group` has answered what it took on `old`, counting only its
        own connections (the next generation accepts on the same address)."""
        def count() -> tuple[int, int]:
            assert group is not None
            return in_flight(old, procfs.group_pids(group))

        await self._wait_answered(process, old, done,
                                  limit_s=process.program.drain_timeout or process.program.stopwaitsecs,
                                  count=count, is_waiting=lambda: group is not None and procfs.group_exists(group))

    async def _wait_answered(self, process: Process, socks: list[socket.socket], done: Callable[[], None], *,
                             limit_s: float, count: Callable[[], tuple[int, int]], is_waiting: Callable[[], bool],
                             prelude: Callable[[], Awaitable[Any]] | None = None) -> None:
        """The drain loop: after prelude (which may add to socks), poll count() (off-loop) until it is
        clean twice in a row, limit_s passed or is_waiting() is False; close socks and call done(), always.

        Two clean looks: a connection accepted between one look's reading of the table and of the accept
        queue shows in the next one (as accepted, or it is answered). A handshake begun on an old socket
        before the handover completes into its queue within a round trip; while any is under way on the
        address (the table does not say on which listener), wait up to DRAIN_MIN_S for it.
        """
        t0 = time.monotonic()
        left = 0
        try:
            if prelude is not None:
                await prelude()
            if not socks:
                return
            clean = 0
            while clean < 2 and time.monotonic() < t0 + limit_s and is_waiting():
                left, handshakes = await asyncio.to_thread(count)
                busy = left or (handshakes and time.monotonic() - t0 < DRAIN_MIN_S)
                clean = 0 if busy else clean + 1
                if clean < 2:
                    await asyncio.sleep(DRAIN_POLL_S)
            log.info("process_drained", process=process.name, pid=process.pid,
                     waited_ms=round((time.monotonic() - t0) * 1e3), unanswered=left)
        except Exception as exc:  # never leave the stop waiting: a failed drain is a plain restart
            log.warning("process_drain_failed", process=process.name, error=repr(exc))
        finally:
            for sock in socks:
                sock.close()
            done()
