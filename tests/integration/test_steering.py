"""The next generation's reuseport steering on real kernel sockets (io/steering.py): before
the switch only the daemon's checker (loopback, its reserved source ports) reaches socket 1; after it,
every new connection does. IPv4 and IPv6."""

import select
import socket

import pytest

from procguard.io.steering import reserve_checker_ports, steer_checker_to_second, steer_to_second


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_only_the_checker_reaches_the_next_generation_until_the_switch(family: int, host: str) -> None:
    def listener(port: int = 0) -> socket.socket:
        s = socket.socket(family)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(16)
        return s

    current = listener()
    port = current.getsockname()[1]
    reserved = reserve_checker_ports(family)
    ports = tuple(r.getsockname()[1] for r in reserved)
    steer_checker_to_second(current, ports)
    nxt = listener(port)
    opened: list[socket.socket] = [current, nxt, *reserved]

    def lands(source_port: int = 0) -> str:
        c = socket.socket(family)
        opened.append(c)
        if source_port:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            c.bind((host, source_port))
        c.connect((host, port))
        ready, _, _ = select.select([current, nxt], [], [], 5)
        assert len(ready) == 1
        conn, _ = ready[0].accept()
        conn.close()
        return "current" if ready[0] is current else "next"

    try:
        assert [lands() for _ in range(8)] == ["current"] * 8
        assert [lands(p) for p in ports] == ["next"] * len(ports)
        steer_to_second(current)
        assert [lands() for _ in range(8)] == ["next"] * 8
    finally:
        for s in opened:
            s.close()
