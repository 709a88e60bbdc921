"""Held sockets: `[socket.NAME]` listening sockets procguard binds once and passes to its programs.

The daemon keeps each socket open across restarts of the programs using it, so connections that
arrive while a server restarts wait in the backlog instead of being refused. A program gets its
sockets as fds 3, 4, ... in the order of its `sockets` key, with systemd's LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES (sd_listen_fds(3)), or, when its command names them with `{socket.NAME.fd}`, with
those numbers only (a server given both would take each socket twice).

Popen cannot place descriptors at chosen numbers without preexec_fn (unsafe with threads), so the
child first runs a few lines of Python (SHIM) that move the inherited fds to 3.., set LISTEN_PID to
its own pid (which exec keeps) and exec the real command.
"""

import os
import shutil
import socket
import stat
import sys

import structlog

from procguard.config import SocketConfig
from procguard.errors import ProcguardError

log = structlog.get_logger()

SHIM = """\
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
n = len(fds)
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + n) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(moved):
    os.dup2(fd, 3 + i)
    os.close(fd)
if os.environ.get("LISTEN_FDNAMES") is not None:
    os.environ["LISTEN_FDS"] = str(n)
    os.environ["LISTEN_PID"] = str(os.getpid())
argv = sys.argv[2:]
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("procguard: cannot run %s: %s\\n" % (argv[0], exc.strerror))
    os._exit(127)
"""


class SocketError(ProcguardError):
    """A [socket.NAME] could not be bound."""


def _bind(cfg: SocketConfig) -> socket.socket:
    if cfg.bind.startswith("unix:"):
        path = cfg.bind[len("unix:"):]
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run (never another kind of file)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if cfg.mode is not None:
                os.chmod(path, cfg.mode)
            if cfg.owner_uid is not None:
                os.chown(path, cfg.owner_uid, cfg.owner_gid if cfg.owner_gid is not None else -1)
        except OSError:
            sock.close()
            raise
    else:
        host, _, port = cfg.bind[len("tcp://"):].rpartition(":")
        family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            sock.close()
            raise
    sock.listen(cfg.backlog)
    return sock


class SocketSet:
    """The sockets of the current config, bound and held."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[SocketConfig, socket.socket]] = {}

    def apply(self, configs: tuple[SocketConfig, ...]) -> None:
        """Bind new or changed sockets, close removed ones. Raises SocketError naming the socket (and
        then changes nothing: what it bound meanwhile is closed again)."""
        wanted = {c.name: c for c in configs}
        fresh: dict[str, tuple[SocketConfig, socket.socket]] = {}
        try:
            for name, cfg in wanted.items():
                held = self._held.get(name)
                if held is not None and held[0] == cfg:
                    continue
                if held is not None and held[0].bind == cfg.bind:
                    held[1].close()  # same address, new backlog/mode: rebind in place
                    self._held.pop(name)
                fresh[name] = (cfg, _bind(cfg))
        except OSError as exc:
            for _, sock in fresh.values():
                sock.close()
            raise SocketError(f"[socket.{name}] bind = {wanted[name].bind!r}: {exc.strerror or exc}") from None
        for name in list(self._held):
            if name not in wanted or name in fresh:
                self._close(name)
        self._held.update(fresh)
        for name, (cfg, _) in fresh.items():
            log.info("socket_bound", socket=name, bind=cfg.bind, backlog=cfg.backlog)

    def _close(self, name: str) -> None:
        cfg, sock = self._held.pop(name)
        sock.close()
        if cfg.bind.startswith("unix:"):
            try:
                os.unlink(cfg.bind[len("unix:"):])
            except OSError:
                pass

    def fds(self, names: tuple[str, ...]) -> list[int]:
        return [self._held[n][1].fileno() for n in names]

    def close(self) -> None:
        for name in list(self._held):
            self._close(name)


def wrap_command(argv: list[str], fds: list[int], path: str | None) -> list[str]:
    """The argv that runs `argv` with `fds` at 3.. (see SHIM). Raises FileNotFoundError early, as Popen would."""
    if "/" not in argv[0] and shutil.which(argv[0], path=path) is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    return [sys.executable, "-S", "-c", SHIM, ",".join(map(str, fds)), *argv]
