"""Held sockets: `[socket.NAME]` listening sockets procguard binds once and passes to its programs.

The daemon keeps each socket open across restarts of the programs using it, so connections that
arrive while a server restarts wait in the backlog instead of being refused. A program gets its
sockets as fds 3, 4, ... in the order of its `sockets` key, with systemd's LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES (sd_listen_fds(3)), or, when its command names them with `{socket.NAME.fd}`, with
those numbers only (a server given both would take each socket twice).

Handover (a restart with drain_timeout): servers that cut off connections they accepted but had not
answered when they stop (daphne, hypercorn, uWSGI's workers blocked in accept) would drop requests
even on a held socket. So TCP sockets are bound with SO_REUSEPORT, and a restart first binds a fresh
socket to the same address, in the same reuseport group, and attaches a one-instruction classic BPF
program that sends every new connection to it (the group's second socket). The old process keeps its
socket and everything already queued on it, and gets no new connection; once it has accepted and
finished them (`in_flight` is 0) or drain_timeout passed, procguard closes its copy and sends the stop
signal. New connections wait on the fresh socket for the next process, as on any held socket. Only
root can join a reuseport group that root's socket is in (the kernel checks the owner's uid).

Popen cannot place descriptors at chosen numbers without preexec_fn (unsafe with threads), so the
child first runs a few lines of Python (SHIM) that move the inherited fds to 3.., set LISTEN_PID to
its own pid (which exec keeps) and exec the real command.
"""

import ctypes
import os
import socket
import stat
import struct
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
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # for the handover (module doc)
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            sock.close()
            raise
    sock.listen(cfg.backlog)
    return sock


SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h (Linux >= 4.5)
_BPF_RET_K = 0x06  # BPF_RET | BPF_K


def _steer_to_second(sock: socket.socket) -> None:
    """Attach to sock's reuseport group a classic BPF program that picks the group's socket 1 (the
    newest of two) for every new connection; with one socket left the kernel falls back to its hash."""
    program = ctypes.create_string_buffer(struct.pack("HBBI", _BPF_RET_K, 0, 0, 1))
    fprog = struct.pack("HP", 1, ctypes.addressof(program))  # struct sock_fprog {len; filter*}
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def accept_queue(sock: socket.socket) -> int:
    """Connections waiting in a listening TCP socket's accept queue (tcp_info.tcpi_unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


_ESTABLISHED, _SYN_RECV, _CLOSE_WAIT, _LISTEN = "01", "03", "08", "0A"


def _proc_net_address(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def tcp_sockets_on(sock: socket.socket) -> tuple[int, int, int]:
    """(accepted connections, listening sockets, handshakes under way) on sock's local address, from
    /proc/net/tcp{,6}. A handshake under way (SYN_RECV) belongs to whichever listener the kernel
    picked for its SYN; the table does not say which.

    Accepted: with an inode (a process holds it; one still in an accept queue has none), ESTABLISHED
    (a request under way, or a keep-alive connection: they look the same), or CLOSE_WAIT with bytes
    not yet read (a request sent before the client closed). A CLOSE_WAIT with nothing to read is a
    connection the client has left and the server has not noticed yet (hypercorn closes such a one
    only at its keep-alive timeout): nothing to answer there.
    """
    host, port = sock.getsockname()[:2]
    wildcard = host in ("0.0.0.0", "::")
    table = "/proc/net/tcp" if sock.family == socket.AF_INET else "/proc/net/tcp6"
    port_hex = f"{port:04X}"
    accepted = listening = handshakes = 0
    with open(table, encoding="ascii") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            addr, _, p = local.rpartition(":")
            if p != port_hex or (not wildcard and _proc_net_address(addr, sock.family) != host):
                continue
            if state == _LISTEN:
                listening += 1
            elif state == _SYN_RECV:
                handshakes += 1
            elif inode != "0" and (state == _ESTABLISHED
                                   or (state == _CLOSE_WAIT and int(fields[4].partition(":")[2], 16) > 0)):
                accepted += 1
    return accepted, listening, handshakes


def in_flight(socks: list[socket.socket]) -> tuple[int, int]:
    """What an old process still has to answer on these (handed-over) sockets: its accept queue and the
    connections accepted on their addresses (no other process accepts there until it has stopped); and
    the handshakes under way there (one begun on an old socket before the handover ends in its queue)."""
    left = handshakes = 0
    for s in socks:
        accepted, _, shaking = tcp_sockets_on(s)
        left += accept_queue(s) + accepted
        handshakes += shaking
    return left, handshakes


class SocketSet:
    """The sockets of the current config, bound and held."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[SocketConfig, socket.socket]] = {}
        self._users: dict[str, int] = {}

    def apply(self, configs: tuple[SocketConfig, ...], users: dict[str, int] | None = None) -> None:
        """Bind new or changed sockets, close removed ones. Raises SocketError naming the socket (and
        then changes nothing: what it bound meanwhile is closed again).

        users: how many processes each socket is passed to (Config.socket_users).
        """
        self._users = dict(users or {})
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

    def can_hand_over(self, name: str) -> socket.socket | None:
        """The held socket `name` if a handover may replace it: TCP, passed to exactly one process."""
        held = self._held.get(name)
        if held is None or held[0].bind.startswith("unix:") or self._users.get(name, 0) != 1:
            return None
        return held[1]

    def handover(self, name: str, listeners: int) -> socket.socket | None:
        """Give `name` a fresh listening socket that takes every new connection (module doc); return the
        old one, which the caller closes once its process has drained. None (nothing changed) unless
        can_hand_over(name), or when the kernel refuses.

        listeners: how many sockets listen on its address now (tcp_sockets_on, read off the loop).
        """
        if self.can_hand_over(name) is None:
            return None
        cfg, old = self._held[name]
        if listeners != 1:
            # Another socket still listens there (a process that kept an older one): the BPF program's
            # "socket 1" would not be the fresh one.
            log.warning("socket_handover_skipped", socket=name, bind=cfg.bind, listeners=listeners)
            return None
        try:
            new = _bind(cfg)
        except OSError as exc:
            log.warning("socket_handover_failed", socket=name, bind=cfg.bind, error=exc.strerror or str(exc))
            return None
        try:
            _steer_to_second(new)
        except OSError as exc:
            new.close()
            log.warning("socket_handover_failed", socket=name, bind=cfg.bind, error=exc.strerror or str(exc))
            return None
        self._held[name] = (cfg, new)
        return old

    def fds(self, names: tuple[str, ...]) -> list[int]:
        return [self._held[n][1].fileno() for n in names]

    def close(self) -> None:
        for name in list(self._held):
            self._close(name)


def wrap_command(argv: list[str], fds: list[int], path: str | None) -> list[str]:
    """The argv that runs `argv` with `fds` at 3.. (see SHIM). Raises FileNotFoundError early, as Popen would."""
    import shutil  # here: shutil brings bz2 and lzma, 0.6 MiB an idle daemon without sockets never needs (#17)

    if "/" not in argv[0] and shutil.which(argv[0], path=path) is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    return [sys.executable, "-S", "-c", SHIM, ",".join(map(str, fds)), *argv]
