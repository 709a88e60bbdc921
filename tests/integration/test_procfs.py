"""procfs answers `status -l`'s question (RSS, CPU% over a window, members of a tree) from /proc, on real
process trees (issue #15 item 5: one tree_usage, not psutil's beside procfs's), both ways it reads them
(issue #18: only the trees where the host runs many other processes)."""

import contextlib
import os
import resource
import signal
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


# A leader that starts (and reaps) a child on request: its tree changes while a TreeReader holds its files.
SPAWNER = """\
import subprocess, sys
kids = []
for line in sys.stdin:
    if line == "spawn\\n":
        kids.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
    else:
        kids[-1].kill()
        kids.pop().wait()
    print(kids[-1].pid if kids else 0, flush=True)
"""


def files_held_on(pid: int) -> list[str]:
    """This process's descriptors open on pid's /proc files."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed by now
        if target.startswith(f"/proc/{pid}/"):
            out.append(target)
    return out


def test_tree_reader_rereads_its_held_files_and_closes_those_of_members_gone() -> None:
    """Issue #18: the scrape's /proc pass keeps each member's files open; each pass reads them afresh (new
    children, more CPU), and a member that exits has its files closed by the next pass."""
    leader = subprocess.Popen([sys.executable, "-c", SPAWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, process_group=0)
    assert leader.stdin is not None and leader.stdout is not None
    reader = procfs.TreeReader()
    busy = 0
    try:
        first = reader.usage([leader.pid, 999_999_999])
        assert set(first) == {leader.pid} and first[leader.pid].pids == 1
        expected = procfs.tree_usage([leader.pid])[leader.pid]
        assert (first[leader.pid].fds, first[leader.pid].rss_bytes) == (expected.fds, expected.rss_bytes)
        held = files_held_on(leader.pid)
        assert {f"/proc/{leader.pid}/stat", f"/proc/{leader.pid}/task/{leader.pid}/children",
                f"/proc/{leader.pid}/fd"} == set(held), held

        leader.stdin.write("spawn\n")
        leader.stdin.flush()
        busy = int(leader.stdout.readline())
        grown = reader.usage([leader.pid])[leader.pid]
        assert grown.pids == 2  # the held children file, read again, lists the new child
        assert files_held_on(busy)
        # the held stat files, read again, give the CPU time the busy child spends meanwhile
        wait_until(lambda: reader.usage([leader.pid])[leader.pid].cpu_s >= grown.cpu_s + 0.1, timeout=60,
                   what="the tree's CPU time to grow by 0.1 s")

        leader.stdin.write("reap\n")
        leader.stdin.flush()
        assert int(leader.stdout.readline()) == 0
        assert reader.usage([leader.pid])[leader.pid].pids == 1
        assert files_held_on(busy) == []
        assert reader.held == 1
        reader.close()
        assert reader.held == 0 and files_held_on(leader.pid) == []
    finally:
        reader.close()
        leader.kill()
        leader.wait()
        if busy:  # the test failed before the leader reaped it (it is now ours, or init's)
            with contextlib.suppress(ProcessLookupError):
                os.kill(busy, signal.SIGKILL)


def test_tree_reader_holds_files_of_no_more_members_than_its_descriptor_budget() -> None:
    """A quarter of the soft RLIMIT_NOFILE at most (three files a member): the members beyond it are read
    by opening their files for the pass, as tree_usage does, and the answer is the same."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    budget = (len(os.listdir("/proc/self/fd")) + 24) // 12 + 1  # members; its descriptors fit well below the limit
    sleepers = [subprocess.Popen(["sleep", "600"]) for _ in range(budget + 2)]
    reader = procfs.TreeReader()
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (12 * budget, hard))
        usage = reader.usage(p.pid for p in sleepers)
        assert set(usage) == {p.pid for p in sleepers} and all(u.pids == 1 for u in usage.values())
        assert reader.held == budget
        assert sum(len(files_held_on(p.pid)) for p in sleepers) == 3 * budget
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        reader.close()
        for p in sleepers:
            p.kill()
            p.wait()
