"""Held sockets: `[socket.NAME]` listening sockets procguard binds once and passes to its programs.

The daemon keeps each socket open across restarts of the programs using it, so connections that
arrive while a server restarts wait in the backlog instead of being refused. A program gets its
sockets as fds 3, 4, ... in the order of its `sockets` key, with systemd's LISTEN_FDS, LISTEN_PID and
LISTEN_FDNAMES (sd_listen_fds(3)), or, when its command names them with `{socket.NAME.fd}`, with
those numbers only (a server given both would take each socket twice); runtime/spawn.py places them.

TCP sockets are bound with SO_REUSEPORT so that a fresh socket can take over an address without a
moment where it is closed (io/steering.py); io/handover.py decides when.
"""

import dataclasses
import os
import socket
import stat

from procguard.config.model import SocketConfig
from procguard.log import get_logger
from procguard.runtime.seam import CheckRoute
from procguard.errors import ProcguardError
from procguard.io.inflight import listeners_on
from procguard.io.steering import reserve_checker_ports, steer_checker_to_second, steer_to_first, steer_to_second

log = get_logger()

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
        """Give `name` a fresh listening socket that takes every new connection (io/handover.py); return the
        old one, which the caller closes once its process has drained. None (nothing changed) unless
        can_hand_over(name), or when the kernel refuses.

        listeners: how many sockets listen on its address now (listeners_on, read off the loop).
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
            try:
                steer_to_second(new)
            except OSError:
                new.close()
                raise
        except OSError as exc:
            log.warning("socket_handover_failed", socket=name, bind=cfg.bind, error=exc.strerror or str(exc))
            return None
        self._held[name] = (cfg, new)
        return old

    def prepare_next(self, names: tuple[str, ...], listeners: dict[str, int]) -> "NextSockets":
        """Fresh sockets for a next generation of a program on `names` (section "next generation" below).
        Raises SocketsNotReady (and changes nothing) when one cannot be made.

        listeners: how many sockets listen on each TCP socket's address now (listeners_on, off-loop).
        """
        fresh: dict[str, socket.socket] = {}
        private: dict[str, str] = {}
        reserved: list[socket.socket] = []
        tcp_ports: set[int] = set()
        steered: list[tuple[socket.socket, socket.socket]] = []
        try:
            for name in names:
                cfg, held = self._held[name]
                if self._users.get(name, 0) != 1:
                    continue  # shared by several processes: a rolling replace keeps it (section doc)
                if cfg.bind.startswith("unix:"):
                    path = _private_path(cfg.bind[len("unix:"):])
                    fresh[name] = _bind(dataclasses.replace(cfg, bind=f"unix:{path}"))
                    private[name] = path
                    continue
                if listeners.get(name) != 1:
                    raise SocketsNotReady(f"[socket.{name}] {cfg.bind}: {listeners.get(name)} sockets listen there, "
                                          "expected 1 (an earlier generation still holds one)")
                if not reserved:
                    reserved = reserve_checker_ports(held.family)
                ports = tuple(s.getsockname()[1] for s in reserved)
                # The program first, then the fresh socket: it never takes a public connection.
                steer_checker_to_second(held, ports)
                new = _bind(cfg)
                steered.append((held, new))
                fresh[name] = new
                tcp_ports.add(held.getsockname()[1])
        except (OSError, SocketsNotReady) as exc:
            for held, _ in steered:
                steer_to_first(held)
            for s in [*fresh.values(), *reserved]:
                s.close()
            for path in private.values():
                _unlink_socket(path)
            if isinstance(exc, SocketsNotReady):
                raise
            assert isinstance(exc, OSError)
            raise SocketsNotReady(f"[socket.{name}]: cannot prepare a socket for the next generation: "
                                  f"{exc.strerror or exc}") from None
        route = CheckRoute(source_ports=tuple(s.getsockname()[1] for s in reserved), tcp_ports=frozenset(tcp_ports),
                           unix_paths=tuple((self._held[n][0].bind[len("unix:"):], p) for n, p in private.items()))
        return NextSockets(names=names, fresh=fresh, private_paths=private, reserved=reserved, route=route)

    def switch_to_next(self, nxt: "NextSockets") -> list[socket.socket]:
        """New connections go to the next generation from now on; return the current generation's sockets
        (the caller drains and closes them). The next generation's sockets become the held ones."""
        old: list[socket.socket] = []
        for name, new in nxt.fresh.items():
            cfg, held = self._held[name]
            if name in nxt.private_paths:
                os.rename(nxt.private_paths[name], cfg.bind[len("unix:"):])  # atomic: connect() sees one or the other
            else:
                steer_to_second(held)
            self._held[name] = (cfg, new)
            old.append(held)
        nxt.fresh = {}
        nxt.private_paths = {}
        _close_reserved(nxt)
        return old

    def discard_next(self, nxt: "NextSockets") -> None:
        """The next generation did not take over: close its sockets; the current ones take everything."""
        for name, new in nxt.fresh.items():
            held = self._held.get(name)
            if held is not None and name not in nxt.private_paths:
                steer_to_first(held[1])
            new.close()
            if name in nxt.private_paths:
                _unlink_socket(nxt.private_paths[name])
        nxt.fresh = {}
        nxt.private_paths = {}
        _close_reserved(nxt)

    def next_fds(self, nxt: "NextSockets") -> list[int]:
        return [(nxt.fresh[n] if n in nxt.fresh else self._held[n][1]).fileno() for n in nxt.names]

    def listener_counts(self, names: tuple[str, ...]) -> dict[str, int]:
        """How many sockets listen on each held TCP socket's address (blocking: reads /proc)."""
        return {n: listeners_on(self._held[n][1]) for n in names
                if n in self._held and not self._held[n][0].bind.startswith("unix:")}

    def fds(self, names: tuple[str, ...]) -> list[int]:
        return [self._held[n][1].fileno() for n in names]

    def held(self) -> dict[str, socket.socket]:
        """Each held socket by name (upgrade/handoff.py keeps them open across a re-exec)."""
        return {name: sock for name, (_, sock) in self._held.items()}

    def adopt(self, sockets: dict[str, tuple[SocketConfig, socket.socket]]) -> None:
        """Hold sockets a previous image of this daemon bound (upgrade/adopt.py); apply() keeps them."""
        self._held.update(sockets)

    def close(self) -> None:
        for name in list(self._held):
            self._close(name)


# ------------------------------------------------------------------------------ next generation
#
# An overlapping replace (docs/deploys.md) starts the next generation beside the current one on fresh
# sockets that get no public traffic. TCP: the fresh socket joins the held socket's reuseport group as
# its socket 1, after a program that sends only the daemon's health checker there (from 127.0.0.1 or
# ::1 and one of CHECKER_PORTS reserved source ports) is attached; everything else still goes to the
# current generation's socket 0. The switch attaches "return 1": every new connection goes to the next
# generation in one step. Unix sockets: the fresh socket is bound at a private path beside the public
# one, and the switch renames it over the public path (rename(2) is atomic). A socket shared by several
# processes (numprocs) is not duplicated: a rolling replace gives the next process the held socket
# itself, which the others keep serving from.


@dataclasses.dataclass(slots=True)
class NextSockets:
    """The sockets of one next generation before (and until) its switch."""

    names: tuple[str, ...]
    fresh: dict[str, socket.socket]  # socket name -> the next generation's own socket (not shared ones)
    private_paths: dict[str, str]  # unix socket name -> its private path until the switch
    reserved: list[socket.socket]  # the checker's source ports, held so no one else takes them
    route: CheckRoute


class SocketsNotReady(SocketError):
    """A next generation's sockets could not be prepared; nothing was changed."""


def _private_path(path: str) -> str:
    return f"{path}.next"


def _unlink_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass


def _close_reserved(nxt: NextSockets) -> None:
    for s in nxt.reserved:
        s.close()
    nxt.reserved = []


