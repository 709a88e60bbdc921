"""`procguardctl reexec` under load on the coffeehouse demo: all five servers answer 200 throughout (issue #19).

One daemon runs uWSGI, Gunicorn, Daphne, Uvicorn and Hypercorn from the conf.d files we ship (each on
a socket procguard holds). Each server gets the bounded paced load of `under_load` (2 clients, a new
connection every 10 ms each), nested so that all five loads run before, across and after the re-exec.
"""

import os
from collections.abc import Callable

import pytest

from tests.helpers import DaemonRun
from procguard.testing.demo import SERVERS, Load, program, start, under_load, why_missing

pytestmark = pytest.mark.skipif(any(why_missing(s) for s in SERVERS),
                                reason="; ".join(str(why_missing(s)) for s in SERVERS if why_missing(s)))


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:port (or any address), from /proc/net/tcp."""
    out = set()
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                out.add(fields[9])
    return out


def test_reexec_under_load_on_all_five_servers_loses_no_request(daemon):
    d: DaemonRun = daemon()
    c = start(d, SERVERS)
    before = c.wait_healthy(*SERVERS)
    inodes = {s: listening_inodes(c.ports[s]) for s in SERVERS}
    assert all(inodes.values()), inodes
    loads: dict[str, Load] = {}
    replies: list[str] = []

    def reexec() -> None:
        r = c.ctl("reexec")
        assert r.returncode == 0, r.stderr
        replies.append(r.stdout)

    def nest(servers: tuple[str, ...]) -> Callable[[], None]:
        if not servers:
            return reexec

        def run() -> None:
            loads[servers[0]] = under_load(c.ports[servers[0]], nest(servers[1:]), clients=2)

        return run

    nest(SERVERS)()
    assert replies and f"(pid {d.proc.pid}) re-executed" in replies[0]
    for server in SERVERS:
        assert loads[server].failed == [], (server, loads[server].failed[:5])
        assert loads[server].ok >= 80, (server, loads[server].ok)
    after = c.wait_healthy(*SERVERS)
    for server in SERVERS:
        name = program(server)
        assert (after[name]["pid"], after[name]["state"]) == (before[name]["pid"], "RUNNING"), name
        assert listening_inodes(c.ports[server]) == inodes[server], server
    assert d.proc.poll() is None and os.path.exists(f"/proc/{d.proc.pid}")
