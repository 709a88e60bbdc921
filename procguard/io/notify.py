"""NOTIFY_SOCKET for children: a datagram socket per process that takes sd_notify messages.

A program with `ready = "notify"` gets NOTIFY_SOCKET=@procguard/<daemon pid>/<n> (an abstract socket:
no file to own or clean up, and a child running as another user can reach it). It becomes RUNNING
when it sends READY=1 (gunicorn and uWSGI do so by themselves); STATUS=... shows in status. Only the
process's own group may speak for it: the sender's pid comes from SCM_CREDENTIALS (the kernel fills
it in) and must be the main pid or in its process group, as systemd's NotifyAccess=main/all.
"""

import asyncio
import itertools
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from procguard.config.model import Ready
from procguard.log import get_logger

if TYPE_CHECKING:
    from procguard.engine.process import Process

log = get_logger()

_counter = itertools.count(1)
MAX_DATAGRAM = 4096  # sd_notify messages are short; longer ones are cut


class NotifySocket:
    """One process's NOTIFY_SOCKET; calls on_message(fields) for each datagram its group sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner_pid: Callable[[], int | None],
                 on_message: Callable[[dict[str, str]], None]) -> None:
        self._loop = loop
        self._owner_pid = owner_pid
        self._on_message = on_message
        self.name = f"@procguard/{os.getpid()}/{next(_counter)}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        try:
            self._sock.bind("\0" + self.name[1:])
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        except OSError:
            self._sock.close()
            raise
        loop.add_reader(self._sock.fileno(), self._readable)

    @classmethod
    def adopt(cls, loop: asyncio.AbstractEventLoop, fd: int, name: str, owner_pid: Callable[[], int | None],
              on_message: Callable[[dict[str, str]], None]) -> "NotifySocket":
        """The socket a previous image of this daemon bound as `name` (same pid: upgrade/adopt.py)."""
        global _counter
        adopted = cls.__new__(cls)
        adopted._loop, adopted._owner_pid, adopted._on_message, adopted.name = loop, owner_pid, on_message, name
        adopted._sock = socket.socket(fileno=fd)
        serial = int(name.rsplit("/", 1)[1])
        # Names are per daemon pid, which exec keeps: new ones must not take an adopted one's number.
        _counter = itertools.count(max(serial + 1, next(_counter)))
        loop.add_reader(fd, adopted._readable)
        return adopted

    @property
    def fd(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sender = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    sender, _uid, _gid = struct.unpack("iII", payload[:12])
            if not self._from_owner(sender):
                log.warning("notify_message_refused", sender_pid=sender, reason="not the process or its group")
                continue
            fields: dict[str, str] = {}
            for line in data.decode(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    fields[key.strip()] = value
            if fields:
                self._on_message(fields)

    def _from_owner(self, sender: int | None) -> bool:
        owner = self._owner_pid()
        if sender is None or owner is None:
            return False
        if sender == owner:
            return True
        try:
            return os.getpgid(sender) == owner  # a worker in the main process's group
        except OSError:
            return False


class NotifySockets:
    """Each process's NOTIFY_SOCKET, made at its first spawn and kept until the process is forgotten."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._by_process: dict["Process", NotifySocket] = {}

    def env_for(self, process: "Process") -> dict[str, str]:
        """What a child of process adds to its environment: NOTIFY_SOCKET when it reports readiness so
        (ready = "notify"). Raises OSError when the socket cannot be made."""
        if process.program.ready != Ready.NOTIFY:
            return {}
        sock = self._by_process.get(process)
        if sock is None:
            sock = self._by_process[process] = NotifySocket(self._loop, lambda: process.pid, process.notified)
        return {"NOTIFY_SOCKET": sock.name}

    def adopt(self, process: "Process", fd: int, name: str) -> None:
        """Keep the NOTIFY_SOCKET a previous image of this daemon made for process (upgrade/adopt.py)."""
        self._by_process[process] = NotifySocket.adopt(self._loop, fd, name, lambda: process.pid, process.notified)

    def of(self, process: "Process") -> NotifySocket | None:
        """process's NOTIFY_SOCKET, if it has one (upgrade/handoff.py keeps it across a re-exec)."""
        return self._by_process.get(process)

    def close(self, process: "Process") -> None:
        sock = self._by_process.pop(process, None)
        if sock is not None:
            sock.close()
