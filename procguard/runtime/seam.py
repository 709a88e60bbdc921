"""The seam between the engine and the world: every Protocol the engine acts through, complete.

`engine.process.Process` and the supervisor around it reach the OS only through `OSApi`;
`runtime.realos.RealOS` is the real one and `procguard.testing.FakeOS` the recording fake, and mypy
checks that both are complete (nothing reaches past the seam with `getattr`). What crosses it besides
calls lives here too: how a check reaches a next generation (`CheckRoute`) and how an exit reads
(`describe_exit`).
"""

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from procguard.config.model import SocketConfig

if TYPE_CHECKING:
    import asyncio

    from procguard.engine.process import Process


class Timer(Protocol):
    def cancel(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CheckRoute:
    """How a health check reaches one next generation rather than the current one (docs/deploys.md).

    TCP: a check whose port is in tcp_ports connects from 127.0.0.1 (or ::1) and one of source_ports,
    which the held socket's reuseport program sends to the next generation's socket. Unix: a check of
    a public path goes to the private path the next generation listens on until the switch.
    """

    source_ports: tuple[int, ...] = ()
    tcp_ports: frozenset[int] = frozenset()
    unix_paths: tuple[tuple[str, str], ...] = ()  # (public path, private path)

    def unix_path(self, path: str) -> str:
        return dict(self.unix_paths).get(path, path)


class HeldSockets(Protocol):
    """The held sockets of the config in force (io.listeners.SocketSet)."""

    def apply(self, configs: tuple[SocketConfig, ...], users: dict[str, int] | None = None) -> None:
        """Bind new or changed sockets, close removed ones; raise SocketError (and change nothing) when one
        cannot be bound. users: how many processes each socket is passed to."""
        ...


class CommandSpawner(Protocol):
    """Start argv with these Popen keywords off the loop; return its pid and a future of its exit code."""

    async def __call__(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]": ...


class OSApi(Protocol):
    """What the state machine (and the supervisor around it) needs from the world."""

    @property
    def sockets(self) -> HeldSockets:
        """The held sockets (a reload applies the new config's to them)."""
        ...

    async def spawn_command(self, argv: Sequence[str], **popen_kwargs: Any) -> "tuple[int, asyncio.Future[int]]":
        """Start a helper command (an exec health check) off the loop; its pid and a future of its exit code
        (a CommandSpawner)."""
        ...

    async def tree_rss(self, pid: int) -> int | None:
        """RSS in bytes of pid and all its descendants, measured off the loop (max_memory); None once pid
        is gone."""
        ...

    def monotonic(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...

    def spawn(self, process: "Process") -> None:
        """Start the child off-loop; later call process.spawned(pid) or process.spawn_failed(reason)."""
        ...

    def send_signal(self, pid: int, sig: int, *, group: bool) -> None:
        """Signal pid (or its process group); a process already gone is not an error."""
        ...

    def is_group_alive(self, pgid: int) -> bool: ...

    def is_alive(self, pid: int) -> bool: ...

    def find_strays(self, process: "Process", *, leader: int | None) -> None:
        """Look (off-loop) for the process's descendants that left its process group.

        Walks the descendants of `leader` (None once the leader has been reaped: its pid may be reused)
        and the daemon's orphans carrying the process's PROCGUARD_PROCESS marker, with their descendants.
        Answers with process.add_strays(pids) (possibly empty), always, even when the scan fails; the
        answer may come at once or later, and calls made before an answer may share it.
        """
        ...

    def drain(self, process: "Process", done: Callable[[], None]) -> None:
        """Before a restart's stop signal: move the process's held sockets to fresh ones (new connections
        wait there for the next process) and wait, at most program.drain_timeout, until it has finished
        the connections it has; then call done() (at once when there is nothing to hand over)."""
        ...

    def prepare_next(self, process: "Process", done: Callable[[str | None], None]) -> None:
        """Make fresh sockets that get no public traffic for next-generation `process` (off-loop where it
        must); then done(None), or done(reason) when they cannot be made (nothing changed then)."""
        ...

    def switch_to_next(self, current: "Process", nxt: "Process", done: Callable[[], None]) -> None:
        """Send every new connection to nxt's sockets in one step, then wait (at most drain_timeout, else
        stopwaitsecs) until current has answered what it had taken; then call done()."""
        ...

    def discard_next(self, process: "Process") -> None:
        """Next-generation `process` will not take over: close its fresh sockets."""
        ...

    def drain_orphans(self, process: "Process", pgid: int, done: Callable[[], None]) -> None:
        """The leader of `process` died and its group (pgid) still runs: move the held sockets to fresh ones
        before the next spawn (which takes them), then wait (at most drain_timeout, else stopwaitsecs)
        until the orphaned group has answered what it took; then call done()."""
        ...

    def check_route(self, process: "Process") -> CheckRoute | None:
        """How a health check reaches `process` while it is a next generation; None: the public way."""
        ...

    def forget(self, process: "Process") -> None:
        """The process is gone for good (its program removed, or a newer generation took over)."""
        ...

    def retire(self, process: "Process") -> None:
        """Its program was removed: nothing kept by its name (output tails, log files) outlives it."""
        ...


def describe_exit(status: int, *, signalled: str = "terminated by") -> str:
    """Render an os.waitstatus_to_exitcode value: 'exit status 1', or `signalled` and the signal
    ('terminated by SIGKILL'; exec health checks say 'killed by')."""
    if status < 0:
        try:
            return f"{signalled} {signal.Signals(-status).name}"
        except ValueError:
            return f"{signalled} signal {-status}"
    return f"exit status {status}"


__all__ = ["CheckRoute", "CommandSpawner", "HeldSockets", "OSApi", "Timer", "describe_exit"]
