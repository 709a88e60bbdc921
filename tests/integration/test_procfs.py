"""procfs answers `status -l`'s question (RSS, CPU% over a window, members of a tree) from /proc, on real
process trees (issue #15 item 5: one tree_usage, not psutil's beside procfs's), both ways it reads them
(issue #18: only the trees where the host runs many other processes)."""

import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from procguard.runtime import procfs
from tests.helpers import wait_until

# A leader that starts a busy child, and a sleeping one from a second thread that stays (the kernel lists
# a child under the thread that forked it), then sleeps.
TREE = """\
import subprocess, sys, threading, time
busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
started = []
def other_thread():
    started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
    time.sleep(600)
threading.Thread(target=other_thread, daemon=True).start()
while not started:
    time.sleep(0.01)
print(busy.pid, started[0].pid, flush=True)
time.sleep(600)
"""


@pytest.fixture(params=["walk", "scan"])
def tree(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int, int]]:
    """A real tree; procfs reads it by walking the children files, or by its scan of every process."""
    monkeypatch.setattr(procfs, "WALK_RATIO", 0 if request.param == "walk" else 1 << 30)
    leader = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True,
                              process_group=0)
    try:
        assert leader.stdout is not None
        busy, idle = map(int, leader.stdout.readline().split())
        yield leader.pid, busy, idle
    finally:
        pids = [leader.pid, *(c.pid for c in psutil.Process(leader.pid).children(recursive=True))]
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        leader.wait()
        psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)


def cpu_of(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def test_sample_usage_measures_the_whole_tree_over_the_window(tree: tuple[int, int, int]) -> None:
    leader, busy, idle = tree

    def window(_: float) -> None:
        # The window lasts until the busy child has run 0.1 s: no clock to guess on a loaded machine.
        start = cpu_of(busy)
        wait_until(lambda: cpu_of(busy) - start >= 0.1, timeout=60, what="the busy child to run 0.1 s")

    sampled = procfs.sample_usage([leader, 999_999_999], 0.0, sleep=window)
    assert set(sampled) == {leader}  # a leader that does not exist is left out
    s = sampled[leader]
    assert s.pids == 3
    assert s.cpu_percent > 0
    members = [psutil.Process(p) for p in (leader, busy, idle)]
    expected_rss = sum(p.memory_info().rss for p in members)
    assert abs(s.rss_bytes - expected_rss) < expected_rss * 0.2, (s.rss_bytes, expected_rss)


def test_sample_usage_counts_no_rss_for_a_member_gone_by_the_end(tree: tuple[int, int, int]) -> None:
    leader, busy, idle = tree

    def window(_: float) -> None:
        psutil.Process(busy).kill()
        wait_until(lambda: psutil.Process(busy).status() == psutil.STATUS_ZOMBIE, what="busy child dead")

    s = procfs.sample_usage([leader], 0.0, sleep=window)[leader]
    assert s.pids == 3  # the members at the start
    alive_rss = sum(psutil.Process(p).memory_info().rss for p in (leader, idle))
    assert abs(s.rss_bytes - alive_rss) < alive_rss * 0.2, (s.rss_bytes, alive_rss)


def test_tree_usage_and_sample_usage_see_the_same_tree(tree: tuple[int, int, int]) -> None:
    leader, _, _ = tree
    usage = procfs.tree_usage([leader])[leader]
    assert usage.pids == 3 and usage.rss_bytes > 0 and usage.fds is not None and usage.fds >= 3
    assert procfs.sample_usage([leader], 0.0)[leader].pids == usage.pids
