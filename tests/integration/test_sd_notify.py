"""sd_notify end to end: the test plays systemd with a datagram socket (issue #7)."""

import os
import signal
import socket
import time

import pytest

from tests.helpers import DaemonRun, probe, prog, wait_until


class FakeSystemd:
    """A NOTIFY_SOCKET like systemd's: collects every datagram with the monotonic time it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.poll() if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["abstract", "path"])
def systemd(request, tmp_path):
    address = f"@procguard-test-{os.getpid()}-{time.monotonic_ns()}" if request.param == "abstract" \
        else str(tmp_path / "notify.sock")
    fake = FakeSystemd(address)
    yield fake
    fake.close()


def test_ready_status_watchdog_reloading_stopping(daemon, systemd):
    d: DaemonRun = daemon()
    d.write_config(prog("a", probe(d.work, "a"), startsecs="300ms")
                   + prog("b", probe(d.work, "b"), startsecs="300ms", priority=2)
                   + prog("crashy", probe(d.work, "crashy", mode="exit", code=1), startsecs="1s",
                          backoff_initial="60s", priority=3))
    d.start(env={"NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "1000000"})
    [(ready_at, ready)] = wait_until(lambda: systemd.having("READY", "1"), 20, "READY=1")
    # READY=1 comes once every autostart program has settled: a and b RUNNING, crashy backing off.
    assert ready["STATUS"] == "2 running, 1 backoff"
    assert d.state("a") == d.state("b") == "RUNNING" and d.state("crashy") == "BACKOFF"
    assert any(m.get("STATUS", "").startswith("2 running") for _, m in systemd.poll())
    # WATCHDOG=1 from the loop at half of WATCHDOG_USEC: never a gap near the 1 s deadline.
    wait_until(lambda: len(systemd.having("WATCHDOG")) >= 6, 20, "six watchdog pings")
    times = [t for t, _ in systemd.having("WATCHDOG")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 1.0, gaps
    # A reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    d.signal(signal.SIGHUP)
    [(_, reloading)] = wait_until(lambda: systemd.having("RELOADING", "1"), what="RELOADING=1")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    wait_until(lambda: len(systemd.having("READY", "1")) == 2, what="READY=1 after the reload")
    assert d.stop() == 0
    [(_, stopping)] = systemd.having("STOPPING", "1")
    # No child ever sees systemd's variables.
    for r in d.reports():
        assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(r["env"]), r["name"]


def test_no_notify_socket_means_no_messages_and_no_errors(daemon):
    d = daemon()
    d.write_config(prog("a", probe(d.work, "a"), startsecs=0))
    d.start()
    d.wait_state("a", "RUNNING")
    wait_until(lambda: d.events("daemon_ready"), what="daemon_ready")
    assert not d.events("sd_notify_failed")


def test_ready_is_not_held_back_by_a_dependency_that_crash_loops(daemon, systemd):
    d = daemon()
    d.write_config(prog("db", probe(d.work, "db", mode="exit", code=1), startsecs="1s", backoff_initial="60s")
                   + prog("web", probe(d.work, "web"), startsecs=0, depends_on=["db"]))
    d.start(env={"NOTIFY_SOCKET": systemd.address})
    [(_, ready)] = wait_until(lambda: systemd.having("READY", "1"), 20, "READY=1")
    assert d.state("db") == "BACKOFF" and d.state("web") is None
    assert "1 backoff" in ready["STATUS"] and "1 stopped" in ready["STATUS"]


def test_ready_waits_for_dependents_of_a_job_that_completes(daemon, systemd):
    """Regression: READY=1 came while web still waited for a migrate job that had just completed."""
    d = daemon()
    d.write_config(prog("migrate", probe(d.work, "migrate", mode="exit", code=0, after=0.5), type="oneshot")
                   + prog("web", probe(d.work, "web"), startsecs="300ms", depends_on=["migrate"]))
    d.start(env={"NOTIFY_SOCKET": systemd.address})
    [(_, ready)] = wait_until(lambda: systemd.having("READY", "1"), 20, "READY=1")
    assert ready["STATUS"] == "1 running, 1 exited"
    assert d.state("web") == "RUNNING"
