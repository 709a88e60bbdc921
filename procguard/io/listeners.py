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
import dataclasses
import os
import select
import socket
import stat
import struct
import sys

import structlog

from procguard.config.model import SocketConfig
from procguard.runtime.seam import CheckRoute
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


# Classic BPF (linux/filter.h): the reuseport program of a next generation's trial (module doc, "Next
# generation"). SKF_NET_OFF addresses the IP header: the program runs with the packet's data past the
# TCP header, so only negative offsets reach the addresses and ports (sock_reuseport.c run_bpf_filter).
_SKF_NET_OFF = -0x100000
_BPF_LD_W_ABS, _BPF_LD_H_ABS, _BPF_JEQ_K = 0x20, 0x28, 0x15
CHECKER_PORTS = 4  # source ports the daemon's health checker may use to reach a next generation


def _attach(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
                                                   for code, jt, jf, k in insns))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def _steer_checker_to_second(sock: socket.socket, ports: tuple[int, ...]) -> None:
    """Attach to sock's reuseport group a program that sends the connections of the daemon's checker
    (from the loopback address, one of `ports`) to the group's socket 1 and every other one to socket 0.

    IPv4: source address at IP+12, source port at IP+20 (no IP options: the kernel's own loopback
    SYNs carry none). IPv6: source address at IP+8..24, source port at IP+40 (no extension headers).
    """
    if sock.family == socket.AF_INET:
        addr_checks = [(_BPF_LD_W_ABS, 0x7F000001, 12)]
        port_off = 20
    else:
        addr_checks = [(_BPF_LD_W_ABS, word, 8 + 4 * i) for i, word in enumerate((0, 0, 0, 1))]
        port_off = 40
    # Layout: [ld addr word; jeq word else FAIL]*, ld port, [jeq port -> MATCH]*, FAIL: ret 0, MATCH: ret 1.
    n_addr = 2 * len(addr_checks)
    total = n_addr + 1 + len(ports) + 2
    fail = total - 2
    insns: list[tuple[int, int, int, int]] = []
    for _, word, off in addr_checks:
        insns.append((_BPF_LD_W_ABS, 0, 0, _SKF_NET_OFF + off))
        insns.append((_BPF_JEQ_K, 0, fail - (len(insns) + 1), word))
    insns.append((_BPF_LD_H_ABS, 0, 0, _SKF_NET_OFF + port_off))
    for port in ports:
        insns.append((_BPF_JEQ_K, total - 1 - (len(insns) + 1), 0, port))
    insns += [(_BPF_RET_K, 0, 0, 0), (_BPF_RET_K, 0, 0, 1)]
    _attach(sock, insns)


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


def tcp_sockets_on(sock: socket.socket, owned: frozenset[str] | None = None) -> tuple[int, int, int]:
    """(accepted connections, listening sockets, handshakes under way) on sock's local address, from
    /proc/net/tcp{,6}. A handshake under way (SYN_RECV) belongs to whichever listener the kernel
    picked for its SYN; the table does not say which.

    Accepted: with an inode (a process holds it; one still in an accept queue has none), ESTABLISHED
    (a request under way, or a keep-alive connection: they look the same), or CLOSE_WAIT with bytes
    not yet read (a request sent before the client closed). A CLOSE_WAIT with nothing to read is a
    connection the client has left and the server has not noticed yet (hypercorn closes such a one
    only at its keep-alive timeout): nothing to answer there.

    owned: count only accepted connections with these inodes (one generation's, while another one
    accepts on the same address: socket_inodes).
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
            elif inode != "0" and (owned is None or inode in owned) and (state == _ESTABLISHED
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


def socket_inodes(pids: list[int]) -> frozenset[str]:
    """The inodes of every socket these processes hold (/proc/PID/fd links "socket:[INODE]")."""
    out: set[str] = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out.add(link[len("socket:["):-1])
    return frozenset(out)


def unix_accepted(sock: socket.socket, owned: frozenset[str]) -> int:
    """Connections accepted from the listening unix socket `sock` that these inodes' holders still have
    open (/proc/net/unix: an accepted socket shows its listener's path; state 03 is connected)."""
    path = sock.getsockname()
    count = 0
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[5] == "03" and fields[6] in owned and fields[7] == path:
                count += 1
    return count


def generation_in_flight(socks: list[socket.socket], pids: list[int]) -> tuple[int, int]:
    """What one generation (pids) still has to answer after the switch to the next one: the accept
    queues of its old sockets and the connections it accepted from them; and the TCP handshakes under
    way there (in_flight, for one generation among two)."""
    owned = socket_inodes(pids)
    left = handshakes = 0
    for s in socks:
        if s.family == socket.AF_UNIX:
            left += listening_fds_waiting([s]) + unix_accepted(s, owned)
            continue
        accepted, _, shaking = tcp_sockets_on(s, owned)
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

    def prepare_next(self, names: tuple[str, ...], listeners: dict[str, int]) -> "NextSockets":
        """Fresh sockets for a next generation of a program on `names` (section "next generation" below).
        Raises SocketsNotReady (and changes nothing) when one cannot be made.

        listeners: how many sockets listen on each TCP socket's address now (tcp_sockets_on, off-loop).
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
                    reserved = _reserve_checker_ports(held.family)
                ports = tuple(s.getsockname()[1] for s in reserved)
                # The program first, then the fresh socket: it never takes a public connection.
                _steer_checker_to_second(held, ports)
                new = _bind(cfg)
                steered.append((held, new))
                fresh[name] = new
                tcp_ports.add(held.getsockname()[1])
        except (OSError, SocketsNotReady) as exc:
            for held, _ in steered:
                _steer_to_first(held)
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
                _steer_to_second(held)
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
                _steer_to_first(held[1])
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
        return {n: tcp_sockets_on(self._held[n][1])[1] for n in names
                if n in self._held and not self._held[n][0].bind.startswith("unix:")}

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


def _reserve_checker_ports(family: int) -> list[socket.socket]:
    """Bind CHECKER_PORTS sockets to loopback ephemeral ports (not listening: connect() skips ports bound
    this way, so no other local client gets one as its source port)."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    out = []
    try:
        for _ in range(CHECKER_PORTS):
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def listening_fds_waiting(socks: list[socket.socket]) -> int:
    """How many of these listening sockets have a connection waiting to be accepted (poll(2) POLLIN)."""
    if not socks:
        return 0
    poller = select.poll()
    for s in socks:
        poller.register(s.fileno(), select.POLLIN)
    return len(poller.poll(0))


def _steer_to_first(sock: socket.socket) -> None:
    """Every new connection to the group's socket 0 (a next generation's socket 1 is going)."""
    try:
        _attach(sock, [(_BPF_RET_K, 0, 0, 0)])
    except OSError as exc:
        log.warning("socket_steer_failed", error=exc.strerror or str(exc))


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


