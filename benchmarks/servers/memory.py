"""Memory of a server's generations: one serving generation, and the peak of both during deploys."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from benchmarks.servers.actions import POLL_S, status_row
from procguard.testing.demo import Coffeehouse

# ------------------------------------------------------------------------------------------ memory


def generation_memory(c: Coffeehouse, server: str) -> dict[str, float]:
    """RSS and PSS (MiB) of the serving generation: its master and every descendant."""
    rss = pss = 0
    root = psutil.Process(int(status_row(c, server)["pid"]))
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            m = proc.memory_full_info()
        except psutil.Error:  # exited meanwhile
            continue
        rss, pss = rss + m.rss, pss + m.pss
    return {"processes": len(procs), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}


@contextmanager
def peak_rss(c: Coffeehouse, server: str, out: dict[str, Any]) -> Iterator[None]:
    """While the body runs, sample every 5 POLL_S the summed RSS of the process trees of the daemon's
    children that run this server (both generations during a deploy); the peak goes into
    out["peak_rss_mib"]."""
    assert c.d.proc is not None
    daemon = psutil.Process(c.d.proc.pid)
    marker = f"/bin/{server}"
    stop = threading.Event()
    peak = [0]

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for master in daemon.children():  # each generation's master, then its whole tree
                try:
                    if marker in " ".join(master.cmdline()):
                        total += sum(p.memory_info().rss for p in (master, *master.children(recursive=True)))
                except psutil.Error:  # exited meanwhile
                    pass
            peak[0] = max(peak[0], total)
            stop.wait(POLL_S * 5)

    thread = threading.Thread(target=sample, daemon=True, name="peak-rss")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        out["peak_rss_mib"] = peak[0] / 2**20
