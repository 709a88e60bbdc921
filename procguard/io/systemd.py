"""The daemon's own readiness to systemd (Type=notify): sd_notify(3) messages from procguard itself.

Children's NOTIFY_SOCKETs, the other direction, are io/notify.py.
"""

import asyncio
import os
import select
import socket
import time
from collections import deque

from procguard.log import get_logger

log = get_logger()


class SystemdNotifier:
    """sd_notify to systemd (Type=notify): READY, STATUS, WATCHDOG, RELOADING and STOPPING.

    Built from NOTIFY_SOCKET / WATCHDOG_USEC, which it removes from the daemon's environment so no
    child or helper ever sees them (children get a built environment anyway). Path and abstract (@)
    sockets both work. A send that fails is dropped: systemd being gone must not stop the daemon.

    Never blocks the loop: the socket is non-blocking and connected, so that poll(2) says when the
    receiver's queue (net.unix.max_dgram_qlen, 10 by default) has room again. What does not fit waits
    in order in `_pending` and goes out from the loop's writer callback; a STATUS or WATCHDOG waiting
    since the last READY/RELOADING/STOPPING is replaced by a newer one of its kind, and past MAX_PENDING the oldest of those go first, so
    READY, RELOADING and STOPPING are never dropped for want of room. `flush` waits (bounded) before
    an exec or an exit, which would drop what is pending.
    """

    MAX_PENDING = 64

    def __init__(self, address: str, watchdog_s: float | None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = watchdog_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._connected = False
        self._pending: deque[bytes] = deque()
        self._writer: asyncio.AbstractEventLoop | None = None  # the loop watching the socket, while pending

    @classmethod
    def from_environ(cls, environ: "os._Environ[str] | dict[str, str]" = os.environ) -> "SystemdNotifier | None":
        address = environ.pop("NOTIFY_SOCKET", None)
        usec = environ.pop("WATCHDOG_USEC", None)
        wd_pid = environ.pop("WATCHDOG_PID", None)
        if not address:
            return None
        watchdog_s = None
        if usec and usec.isdigit() and int(usec) > 0 and (wd_pid is None or wd_pid == str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls(address, watchdog_s)

    def send(self, message: str) -> None:
        data = message.encode()
        if self._pending or not self._send_now(data):
            self._queue(data)

    def _send_now(self, data: bytes) -> bool:
        """Send one datagram; False when the receiver's queue is full (it stays pending), True when sent
        or dropped (logged)."""
        for attempt in range(2):
            try:
                if not self._connected:
                    self._sock.connect(self.address)
                    self._connected = True
                self._sock.send(data)
                return True
            except BlockingIOError:
                return False
            except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError) as exc:
                # systemd re-executed and bound its socket afresh: connect again, once.
                self._reconnect()
                if attempt:
                    log.warning("sd_notify_failed", error=exc.strerror or str(exc))
            except OSError as exc:
                log.warning("sd_notify_failed", error=exc.strerror or str(exc))
                return True
        return True

    def _reconnect(self) -> None:
        self._stop_watching()
        self._sock.close()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._connected = False

    def _queue(self, data: bytes) -> None:
        if _replaceable(data):
            # Only the newest status (or ping) since the last READY/RELOADING/STOPPING matters.
            for i in range(len(self._pending) - 1, -1, -1):
                if not _replaceable(self._pending[i]):
                    break
                if _kind(self._pending[i]) == _kind(data):
                    del self._pending[i]
                    break
        self._pending.append(data)
        while len(self._pending) > self.MAX_PENDING:
            droppable = next((i for i, d in enumerate(self._pending) if _replaceable(d)), 0)
            del self._pending[droppable]
        self._watch()

    def _watch(self) -> None:
        if self._writer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test, or before it runs): flush() sends what waits
        loop.add_writer(self._sock.fileno(), self._drain)
        self._writer = loop

    def _stop_watching(self) -> None:
        if self._writer is not None:
            self._writer.remove_writer(self._sock.fileno())
            self._writer = None

    def _drain(self) -> None:
        while self._pending:
            if not self._send_now(self._pending[0]):
                self._watch()  # (again, if a reconnect stopped it)
                return
            self._pending.popleft()
        self._stop_watching()

    def flush(self, timeout_s: float) -> bool:
        """Wait (blocking, at most timeout_s) until every pending message is sent; True if none is left.
        For the moment before an exec or an exit, which would drop them."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([], [self._sock], [], left)
            self._drain()
        return True

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (sd_notify(3), Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping every program")

    async def watchdog(self) -> None:
        """Ping at half of WATCHDOG_USEC from the event loop itself: a hung loop gets us restarted."""
        if self.watchdog_s is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)

    def close(self) -> None:
        self._stop_watching()
        self._sock.close()


def _kind(data: bytes) -> bytes:
    return data.split(b"=", 1)[0]


def _replaceable(data: bytes) -> bool:
    """A message only a newer one of its kind supersedes: STATUS= alone, or WATCHDOG=1."""
    return b"\n" not in data and _kind(data) in (b"STATUS", b"WATCHDOG")
