"""Process state changes, heard: the one place that wakes waiters and calls listeners."""

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from procguard.engine.process import Process


class Changes:
    """Waiters on one process, waiters on any process, and listeners; `changed(proc)` reaches them all.

    A change wakes only the waiters of its own process (and those waiting on any): start-up with one
    shared wake-up for every waiter is quadratic in the number of processes.
    """

    def __init__(self) -> None:
        self._waiters: dict["Process | None", list[asyncio.Future[None]]] = {}  # None: on any process
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Call callback() after every state change of any process (systemd's STATUS=)."""
        self._listeners.append(callback)

    def changed(self, proc: "Process") -> None:
        """proc changed state: wake its waiters and those on any process, then call the listeners."""
        for fut in (*self._waiters.pop(proc, ()), *self._waiters.pop(None, ())):
            if not fut.done():
                fut.set_result(None)
        for callback in self._listeners:
            callback()

    async def next(self, proc: "Process | None" = None) -> None:
        """Return after the next state change of proc (None: of any process)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(proc, []).append(fut)
        await fut

    async def until(self, procs: "list[Process]", done: "Callable[[Process], bool]") -> None:
        """Return once done(p) holds for every p of procs, re-checked at each of p's changes."""
        for p in procs:
            while not done(p):
                await self.next(p)


__all__ = ["Changes"]
