"""The benchmarks' cleanup kills the children it saw, never a process that got one of their pids later (#15).

On a busy machine pids are reused within minutes (pid_max 32768): a Bench that remembered only pids
killed another run's `sleep 100000` that happened to get a pid one of its own children had had.
"""

import subprocess
import time

from benchmarks.harness.run import SLEEP_ARGV, Bench


def test_cleanup_kills_a_child_it_saw_but_not_a_later_process_on_a_reused_pid() -> None:
    bench = Bench()
    ours = subprocess.Popen(SLEEP_ARGV)
    stranger = subprocess.Popen(SLEEP_ARGV)
    try:
        bench.child_pids_seen.add(ours.pid)
        # The stranger's pid as if seen (as one of ours) a minute before the stranger was created: reused.
        bench.child_pids_seen.last_seen[stranger.pid] = time.time() - 60
        killed = bench.close()
        assert killed == [ours.pid]
        assert ours.wait(10) != 0
        assert stranger.poll() is None, "the cleanup killed a process created after its pid was last seen"
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()
