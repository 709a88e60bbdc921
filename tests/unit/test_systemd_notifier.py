"""SystemdNotifier never blocks the daemon's loop, and loses no READY/RELOADING/STOPPING (issue #19, stop 22).

A real AF_UNIX datagram socket that nobody reads until later stands for a busy systemd: its queue
(net.unix.max_dgram_qlen, 10 by default) fills, and a blocking sendto would then stall the loop until
it is read. Before: the first send past the queue's room never returned.
"""

import asyncio
import socket
import threading

from procguard.io.systemd import SystemdNotifier


def received(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    while True:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def test_a_full_notify_socket_never_blocks_the_loop_and_loses_no_state_message(tmp_path):
    address = str(tmp_path / "notify.sock")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(address)
    systemd.setblocking(False)
    got: list[dict[str, str]] = []
    ticks = 0

    async def run() -> None:
        nonlocal ticks
        notifier = SystemdNotifier(address, None)
        notifier.ready("1 RUNNING")
        for i in range(40):
            notifier.send(f"STATUS=starting {i}")
            notifier.send("WATCHDOG=1")
        notifier.reloading()
        for i in range(40):
            notifier.send(f"STATUS=reloading {i}")
        notifier.ready("2 RUNNING")
        notifier.stopping()
        notifier.send("STATUS=last")
        # Every send returned; the loop runs on (a tick) while systemd reads nothing.
        for _ in range(3):
            await asyncio.sleep(0)
            ticks += 1
        # systemd reads at last: what waited goes out from the loop, in order.
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def read() -> None:
            got.extend(received(systemd))
            if got and got[-1].get("STATUS") == "last":
                done.set()

        loop.add_reader(systemd.fileno(), read)
        try:
            await done.wait()
        finally:
            loop.remove_reader(systemd.fileno())
            notifier.close()

    runner = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(run(), 30)), daemon=True)
    runner.start()
    runner.join(60)
    blocked = runner.is_alive()
    systemd.close()  # wakes a sender blocked on it (the old code)
    assert not blocked, "a send blocked on the full socket"
    assert ticks == 3
    states = [m for m in got if {"READY", "RELOADING", "STOPPING"} & m.keys()]
    assert [next(k for k in ("READY", "RELOADING", "STOPPING") if k in m) for m in states] == \
        ["READY", "RELOADING", "READY", "STOPPING"]
    assert states[0]["STATUS"] == "1 RUNNING" and states[2]["STATUS"] == "2 RUNNING"
    # A STATUS waiting last was replaced by the newer one: the newest of each run arrives, not all 80.
    statuses = [m["STATUS"] for m in got if m.keys() == {"STATUS"}]
    assert "reloading 39" in statuses and statuses[-1] == "last" and len(got) < 60, got


def test_flush_sends_what_waits_before_an_exec(tmp_path):
    """No loop (the moment before exec): flush() waits, bounded, for room, then sends in order."""
    address = str(tmp_path / "notify.sock")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(address)
    systemd.setblocking(False)
    notifier = SystemdNotifier(address, None)
    try:
        for i in range(12):
            notifier.send(f"STATUS=filling {i}")
        notifier.reloading()
        assert not notifier.flush(0.05)  # nobody reads: it gives up when the time is up
        first = received(systemd)
        assert notifier.flush(10)
        rest = received(systemd)
        assert [m.keys() & {"RELOADING"} for m in first + rest].count({"RELOADING"}) == 1
        assert "RELOADING" in rest[-1]
    finally:
        notifier.close()
        systemd.close()
