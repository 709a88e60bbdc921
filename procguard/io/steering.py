"""Steering within a reuseport group: classic BPF programs that pick which socket takes a new connection.

Held TCP sockets are bound with SO_REUSEPORT, so a fresh socket can join the held one's group on the
same address. The kernel runs the group's program (SO_ATTACH_REUSEPORT_CBPF, Linux >= 4.5) for each new
connection; its return value is the index of the socket that gets it (0: the held one, 1: the fresh
one); with one socket left it falls back to its hash. Only root can join a reuseport group that root's
socket is in (the kernel checks the owner's uid).
"""

import ctypes
import socket
import struct

from procguard.log import get_logger

log = get_logger()

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h (Linux >= 4.5)
# Classic BPF (linux/filter.h). SKF_NET_OFF addresses the IP header: the program runs with the packet's
# data past the TCP header, so only negative offsets reach the addresses and ports
# (sock_reuseport.c run_bpf_filter).
_SKF_NET_OFF = -0x100000
_BPF_RET_K = 0x06  # BPF_RET | BPF_K
_BPF_LD_W_ABS, _BPF_LD_H_ABS, _BPF_JEQ_K = 0x20, 0x28, 0x15
CHECKER_PORTS = 4  # source ports the daemon's health checker may use to reach a next generation

Insn = tuple[int, int, int, int]  # (code, jt, jf, k): struct sock_filter


def _attach(sock: socket.socket, insns: list[Insn]) -> None:
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
                                                   for code, jt, jf, k in insns))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(program))  # struct sock_fprog {len; filter*}
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def steer_to_second(sock: socket.socket) -> None:
    """Attach to sock's reuseport group a program that picks the group's socket 1 (the newest of two)
    for every new connection. Raises OSError when the kernel refuses."""
    _attach(sock, [(_BPF_RET_K, 0, 0, 1)])


def steer_to_first(sock: socket.socket) -> None:
    """Every new connection to the group's socket 0 (a next generation's socket 1 is going)."""
    try:
        _attach(sock, [(_BPF_RET_K, 0, 0, 0)])
    except OSError as exc:
        log.warning("socket_steer_failed", error=exc.strerror or str(exc))


def steer_checker_to_second(sock: socket.socket, ports: tuple[int, ...]) -> None:
    """Attach to sock's reuseport group a program that sends the connections of the daemon's checker
    (from the loopback address, one of `ports`) to the group's socket 1 and every other one to socket 0.

    IPv4: source address at IP+12, source port at IP+20 (no IP options: the kernel's own loopback
    SYNs carry none). IPv6: source address at IP+8..24, source port at IP+40 (no extension headers).
    """
    if sock.family == socket.AF_INET:
        addr_checks = [(0x7F000001, 12)]
        port_off = 20
    else:
        addr_checks = [(word, 8 + 4 * i) for i, word in enumerate((0, 0, 0, 1))]
        port_off = 40
    # Layout: [ld addr word; jeq word else FAIL]*, ld port, [jeq port -> MATCH]*, FAIL: ret 0, MATCH: ret 1.
    n_addr = 2 * len(addr_checks)
    total = n_addr + 1 + len(ports) + 2
    fail = total - 2
    insns: list[Insn] = []
    for word, off in addr_checks:
        insns.append((_BPF_LD_W_ABS, 0, 0, _SKF_NET_OFF + off))
        insns.append((_BPF_JEQ_K, 0, fail - (len(insns) + 1), word))
    insns.append((_BPF_LD_H_ABS, 0, 0, _SKF_NET_OFF + port_off))
    for port in ports:
        insns.append((_BPF_JEQ_K, total - 1 - (len(insns) + 1), 0, port))
    insns += [(_BPF_RET_K, 0, 0, 0), (_BPF_RET_K, 0, 0, 1)]
    _attach(sock, insns)


def reserve_checker_ports(family: int) -> list[socket.socket]:
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
