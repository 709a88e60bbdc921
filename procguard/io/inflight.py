"""What a generation still has to answer on its listening sockets, from the kernel's tables.

A drain (io/handover.py) waits until these counts reach 0: the accept queues of the old sockets, and
the connections accepted from them that a process still holds (/proc/net/tcp{,6}, /proc/net/unix).
Blocking: every function here reads /proc; run them off the loop.
"""

import os
import select
import socket
import struct


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
