"""What a drain counts on real kernel sockets (io/inflight.py), read through sock_diag (issue #16).

A drain looks at the kernel's socket table every DRAIN_POLL_S. /proc/net/tcp formats every socket of the
namespace, TIME_WAIT included (a deploy under 400 connections a second leaves ~20000: 60-250 ms of CPU
a look, taken from the cold next generation at the switch); sock_diag lets the kernel skip them. Both
readers must see the same sockets, and the drain's counts must not depend on which one answered.
"""

import os
import socket
from collections.abc import Iterator

import pytest

from procguard.io import inflight
from procguard.io.inflight import in_flight, listeners_on, socket_inodes, tcp_sockets_on
from procguard.testing import wait_until

FAMILIES = [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
_TIME_WAIT = 6


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def listener(family: int, host: str, opened: list[socket.socket]) -> socket.socket:
    s = socket.socket(family)
    opened.append(s)
    s.bind((host, 0))
    s.listen(16)
    return s


def connect(family: int, addr: tuple[str, int], opened: list[socket.socket]) -> socket.socket:
    c = socket.create_connection(addr[:2])
    opened.append(c)
    return c


@pytest.mark.parametrize("family,host", FAMILIES)
def test_both_readers_count_what_a_drain_waits_for(family: int, host: str, opened: list[socket.socket]) -> None:
    srv = listener(family, host, opened)
    addr = srv.getsockname()
    connect(family, addr, opened)
    accepted, _ = srv.accept()  # a request under way: ESTABLISHED with an inode
    opened.append(accepted)
    left = connect(family, addr, opened)
    ours, _ = srv.accept()  # the client sent its request and left: CLOSE_WAIT with bytes unread
    opened.append(ours)
    left.sendall(b"GET / HTTP/1.0\r\n\r\n")
    left.close()
    connect(family, addr, opened)  # still in the accept queue: no inode yet
    mine = socket_inodes([os.getpid()])
    port = addr[1]
    # The FIN and the request reach `ours` asynchronously: wait for its CLOSE_WAIT (state 8).
    wait_until(lambda: any(s == 8 for s, *_ in inflight._proc_rows(family, port)), 10, "a CLOSE_WAIT")
    assert sorted(inflight._diag_rows(family, port)) == sorted(inflight._proc_rows(family, port))
    # 2 accepted (one ESTABLISHED, one CLOSE_WAIT with its request unread), 1 listener, no handshake.
    assert tcp_sockets_on(srv) == (2, 1, 0)
    assert tcp_sockets_on(srv, owned=mine) == (2, 1, 0)
    assert tcp_sockets_on(srv, owned=frozenset()) == (0, 1, 0)  # another generation's connections
    assert in_flight([srv]) == (3, 0)  # and the one waiting in the accept queue


@pytest.mark.parametrize("family,host", FAMILIES)
def test_time_wait_sockets_are_not_read(family: int, host: str, opened: list[socket.socket],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    srv = listener(family, host, opened)
    addr = srv.getsockname()
    for _ in range(3):  # the server closes first: its side (on the listener's port) waits in TIME_WAIT
        c = connect(family, addr, opened)
        conn, _ = srv.accept()
        conn.close()
        c.recv(1)
        c.close()
    port = addr[1]
    wait_until(lambda: sum(1 for s, *_ in inflight._proc_rows(family, port) if s == _TIME_WAIT) == 3, 10,
               "3 TIME_WAIT sockets in /proc/net/tcp")
    assert [s for s, *_ in inflight._diag_rows(family, port)] == [10]  # the listener alone

    def no_proc(family: int, port: int) -> list[inflight.Row]:
        raise AssertionError("read /proc/net/tcp although sock_diag answers")

    monkeypatch.setattr(inflight, "_proc_rows", no_proc)
    assert tcp_sockets_on(srv) == (0, 1, 0)
    assert in_flight([srv]) == (0, 0)


@pytest.mark.parametrize("family,host", FAMILIES)
def test_listeners_on_counts_the_reuseport_group_only(family: int, host: str, opened: list[socket.socket]) -> None:
    """What a handover and a next generation's preparation ask before they add a socket to the group."""
    def member(port: int) -> socket.socket:
        s = socket.socket(family)
        opened.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(16)
        return s

    first = member(0)
    port = first.getsockname()[1]
    connect(family, first.getsockname(), opened)  # a connection on the address: not a listener
    assert listeners_on(first) == 1
    member(port)
    assert listeners_on(first) == 2 == tcp_sockets_on(first)[1]
    # Only listeners were asked for: the kernel returned no connection at all.
    assert {s for s, *_ in inflight._diag_rows(family, port)} == {1, 10}
    assert {s for s, *_ in inflight._diag_rows(family, port, 1 << 10)} == {10}
