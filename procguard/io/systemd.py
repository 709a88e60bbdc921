"""The daemon's own readiness to systemd (Type=notify): sd_notify(3) messages from procguard itself.

Children's NOTIFY_SOCKETs, the other direction, are io/notify.py.
"""

import asyncio
import os
import socket
import time

from procguard.log import get_logger

log = get_logger()


class SystemdNotifier:
    """sd_notify to systemd (Type=notify): READY, STATUS, WATCHDOG, RELOADING and STOPPING.

    Built from NOTIFY_SOCKET / WATCHDOG_USEC, which it removes from the daemon's environment so no
    child or helper ever sees them (children get a built environment anyway). Path and abstract (@)
    sockets both work. A send that fails is dropped: systemd being gone must not stop the daemon.
    """

    def __init__(self, address: str, watchdog_s: float | None) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = watchdog_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

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
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=exc.strerror or str(exc))

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
        self._sock.close()
