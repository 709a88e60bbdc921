"""What a generation still has to answer on its listening sockets, from the kernel's tables.

A drain (io/handover.py) waits until these counts reach 0: the accept queues of the old sockets, and
the connections accepted from them that a process still holds (sock_diag or /proc/net/tcp{,6},
/proc/net/unix). Blocking: every function here reads the kernel's tables; run them off the loop.
"""

import os
import select
import socket
import struct


def accept_queue(sock: socket.socket) -> int:
    """Connections waiting in a listening TCP socket's accept queue (tcp_info.tcpi_unacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


# TCP states (include/net/tcp_states.h); /proc/net/tcp prints them in hex.
_ESTABLISHED, _SYN_RECV, _CLOSE_WAIT, _LISTEN = 1, 3, 8, 10
# One socket on an address: (TCP state, local address as text, inode (0: none yet), bytes not yet read).
Row = tuple[int, str, int, int]

# sock_diag(7): linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_INET_DIAG_REQ_BYTECODE = 1
_INET_DIAG_BC_S_EQ, _INET_DIAG_BC_NOP = 11, 0
_NLMSG = struct.Struct("=IHHII")  # struct nlmsghdr
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # struct inet_diag_msg (sport, src in network order)
_STATES = (1 << _ESTABLISHED) | (1 << _SYN_RECV) | (1 << _CLOSE_WAIT) | (1 << _LISTEN)


def _diag_rows(family: int, port: int, states: int = _STATES) -> list[Row]:
    """The sockets with local port `port`, from the kernel's sock_diag dump (what ss(8) reads).

    The kernel skips TIME_WAIT and every other state not asked for, and a bytecode filter keeps only
    this port, so a look costs the same with 20000 TIME_WAIT entries as with none; /proc/net/tcp
    formats every one of them (60-180 ms of CPU a look on a machine serving 400 connections a second).
    Raises OSError when the kernel has no sock_diag (then the caller reads /proc). states: a mask of
    (1 << state); with listeners only, the kernel does not walk the connections at all.
    """
    # Bytecode: "sport == port": yes jumps past both ops (accept), no jumps past the end (reject).
    bytecode = struct.pack("=BBH", _INET_DIAG_BC_S_EQ, 8, 12) + struct.pack("=BBH", _INET_DIAG_BC_NOP, 0, port)
    req = struct.pack("=BBBBI48x", family, socket.IPPROTO_TCP, 0, 0, states)  # inet_diag_req_v2, any sockid
    attr = struct.pack("=HH", 4 + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
    body = req + attr
    rows: list[Row] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as nl:
        nl.sendto(_NLMSG.pack(_NLMSG.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
                  + body, (0, 0))
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind = _NLMSG.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE:
                    return rows
                if kind == _NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    raise OSError(errno, os.strerror(errno))
                (_, state, _, _, _, _, src, _, _, _, _, rqueue, _, _, inode) = _DIAG_MSG.unpack_from(
                    data, offset + _NLMSG.size)
                addr = socket.inet_ntop(family, src[:4] if family == socket.AF_INET else src)
                rows.append((state, addr, inode, rqueue))
                offset += (length + 3) & ~3
            if not data:
                return rows


def _proc_net_address(hex_addr: str, family: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[::-1])
    return socket.inet_ntop(family, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def _proc_rows(family: int, port: int) -> list[Row]:
    """As _diag_rows, from /proc/net/tcp{,6} (every socket of the namespace, TIME_WAIT too)."""
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    port_hex = f"{port:04X}"
    rows: list[Row] = []
    with open(table, encoding="ascii") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            addr, _, p = fields[1].rpartition(":")
            if p == port_hex:
                rows.append((int(fields[3], 16), _proc_net_address(addr, family), int(fields[9]),
                             int(fields[4].partition(":")[2], 16)))
    return rows


def _rows_on(sock: socket.socket, states: int = _STATES) -> list[Row]:
    """The sockets on sock's local address (any address for a wildcard one) in `states`; sock_diag, else
    /proc/net/tcp{,6} (every state then: the callers look at the states they count)."""
    host, port = sock.getsockname()[:2]
    try:
        rows = _diag_rows(sock.family, port, states)
    except OSError:
        rows = _proc_rows(sock.family, port)
    if host in ("0.0.0.0", "::"):
        return rows
    return [row for row in rows if row[1] == host]


def listeners_on(sock: socket.socket) -> int:
    """How many sockets listen on sock's local address (sock included); as tcp_sockets_on(sock)[1]."""
    return sum(1 for state, *_ in _rows_on(sock, 1 << _LISTEN) if state == _LISTEN)


def tcp_sockets_on(sock: socket.socket, owned: frozenset[str] | None = None) -> tuple[int, int, int]:
    """(accepted connections, listening sockets, handshakes under way) on sock's local address, from
    the kernel's socket tables (sock_diag, else /proc/net/tcp{,6}). A handshake under way (SYN_RECV)
    belongs to whichever listener the kernel picked for its SYN; the tables do not say which.

    Accepted: with an inode (a process holds it; one still in an accept queue has none), ESTABLISHED
    (a request under way, or a keep-alive connection: they look the same), or CLOSE_WAIT with bytes
    not yet read (a request sent before the client closed). A CLOSE_WAIT with nothing to read is a
    connection the client has left and the server has not noticed yet (hypercorn closes such a one
    only at its keep-alive timeout): nothing to answer there.

    owned: count only accepted connections with these inodes (one generation's, while another one
    accepts on the same address: socket_inodes).
    """
    accepted = listening = handshakes = 0
    for state, _, inode, unread in _rows_on(sock):
        if state == _LISTEN:
            listening += 1
        elif state == _SYN_RECV:
            handshakes += 1
        elif inode != 0 and (owned is None or str(inode) in owned) and (
                state == _ESTABLISHED or (state == _CLOSE_WAIT and unread > 0)):
            accepted += 1
    return accepted, listening, handshakes


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


def unix_accepted(sock: socket.socket, owned: frozenset[str] | None) -> int:
    """Connections accepted from the listening unix socket `sock` that these inodes' holders (None: any
    process) still have open (/proc/net/unix: an accepted socket shows its listener's path; state 03 is
    connected)."""
    path = sock.getsockname()
    count = 0
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[5] == "03" and (owned is None or fields[6] in owned) and fields[7] == path:
                count += 1
    return count


def in_flight(socks: list[socket.socket], pids: list[int] | None = None) -> tuple[int, int]:
    """What is left to answer on these (handed-over) sockets: their accept queues and the connections
    accepted from them; and the TCP handshakes under way on their addresses (one begun on an old socket
    before a handover ends in its queue).

    pids: count only the connections these processes hold (one generation among two on the same
    address); None: every connection on the address (no other process accepts there meanwhile).
    """
    owned = None if pids is None else socket_inodes(pids)
    left = handshakes = 0
    for s in socks:
        if s.family == socket.AF_UNIX:
            left += listening_fds_waiting([s]) + unix_accepted(s, owned)
            continue
        accepted, _, shaking = tcp_sockets_on(s, owned)
        left += accept_queue(s) + accepted
        handshakes += shaking
    return left, handshakes


def listening_fds_waiting(socks: list[socket.socket]) -> int:
    """How many of these listening sockets have a connection waiting to be accepted (poll(2) POLLIN)."""
    if not socks:
        return 0
    poller = select.poll()
    for s in socks:
        poller.register(s.fileno(), select.POLLIN)
    return len(poller.poll(0))
