"""One run of the output benchmark on one side: start the child, time the capture until the file is full,
then verify it byte for byte (bench_output.py's docstring says what each figure means)."""

import errno
import mmap
import os
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.procs import sched_ns
from benchmarks.harness.run import Bench, BenchError, poll_until
from benchmarks.output.sides import Side
from benchmarks.output.stream import n_lines, prefix_len, verify_capture

GIB = 1 << 30
MIB = 1 << 20
POLL_S = 0.002
STALL_S = 5.0  # child done and the file unchanged this long: what is missing is lost
HUNG_S = 60.0  # the file unchanged this long while the child still writes: the harness gives up


def send_go(fifo: Path, timeout_s: float = 60.0) -> None:
    """Open the FIFO once the child has it open (ENXIO until then) and write the start byte."""
    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet: the child is still building its stream
                return None
            raise

    fd = poll_until(opened, timeout_s, f"the child opening {fifo}", interval_s=0.001)
    try:
        os.write(fd, b"g")
    finally:
        os.close(fd)


def read_side(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "start" and len(parts) == 3:
            out["pid"], out["t0"] = int(parts[1]), float(parts[2])
        elif parts and parts[0] == "done" and len(parts) == 3:
            out["t1"], out["n"] = float(parts[1]), int(parts[2])
    return out


def cpu_s(pid: int | None) -> tuple[float, float]:
    if pid is None:
        return 0.0, 0.0
    t = psutil.Process(pid).cpu_times()
    return t.user, t.system


def size_of(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def has_exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def holds_file(pid: int, path: Path) -> bool:
    """Does pid have an fd open on path (or on its deleted inode)?"""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    target = str(path)
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link == target or link == target + " (deleted)":
            return True
    return False


def prefault(nbytes: int) -> None:
    """Touch nbytes of fresh anonymous memory, then free it: the next page-cache pages are host-backed."""
    page = mmap.PAGESIZE
    with mmap.mmap(-1, nbytes) as m:
        for i in range(0, nbytes, page):
            m[i] = 1


def wait_full(side: Side, expected_size: int, pid: int | None,
              round_no: int) -> tuple[float | None, tuple[float, float], int, int]:
    """Poll the capture every POLL_S until it is full (or the child is done and it stopped growing: the rest
    is lost); (when it was full or None, the daemon's CPU (user, system) and schedstat ns then, its RSS).

    The side file is read only once growth pauses, which keeps the poll cheap."""
    last_size, last_change = -1, time.monotonic()
    while True:
        size = size_of(side.capture)
        now = time.monotonic()
        if size >= expected_size:
            rss = psutil.Process(pid).memory_info().rss if pid is not None else 0
            return now, cpu_s(pid), sched_ns(pid) if pid is not None else 0, rss
        if size != last_size:
            last_size, last_change = size, now
        elif now - last_change > 0.5:
            info = read_side(side.side_file)
            if "t1" in info and now - last_change > STALL_S:
                return None, cpu_s(pid), sched_ns(pid) if pid is not None else 0, 0
            if "t1" not in info and now - last_change > HUNG_S:
                raise BenchError(f"{side.label}, round {round_no}: the capture stayed at {size} of "
                                 f"{expected_size} bytes for {HUNG_S}s while the child had not finished")
        time.sleep(POLL_S)


def child_gone(bench: Bench, side: Side) -> dict[str, float]:
    """Until the child wrote its done marker, exited and was reaped (its side forgot it); the side file."""
    info = poll_until(lambda: (lambda i: i if "t1" in i else None)(read_side(side.side_file)), 120,
                      f"{side.label}: the child's done marker")
    child = int(info["pid"])
    bench.child_pids_seen.add(child)
    poll_until(lambda: has_exited(child), 30, f"{side.label}: child {child} exiting")
    side.after_child()
    poll_until(lambda: not psutil.pid_exists(child), 30, f"{side.label}: child {child} reaped")
    return info


def holds_after_exit(side: Side, pid: int | None) -> bool:
    """Does the daemon still have the capture open once its child is gone (2 s grace unless it keeps it)?

    procguard closes the file once the pipe reached EOF (output.py _detach); supervisord keeps its
    handler until the next spawn. Recorded only: a daemon still writing a deleted inode would show
    up next round as a capture that never appears."""
    if pid is None:
        return False
    deadline = time.monotonic() + (0.0 if side.keeps_file_open else 2.0)
    while holds_file(pid, side.capture) and time.monotonic() < deadline:
        time.sleep(0.01)
    return holds_file(pid, side.capture)


def one_run(bench: Bench, side: Side, n: int, round_no: int, do_prefault: bool = True) -> dict[str, Any]:
    side.reset_capture()
    side.side_file.unlink(missing_ok=True)
    plen = prefix_len() if side.stamped else 0
    expected_size = n + n_lines(n) * plen
    pid = side.daemon_pid()

    side.start_child()
    if do_prefault:
        prefault(int(expected_size * 1.5))  # while the child builds its stream (see the docstring)
    cpu0 = cpu_s(pid)
    sched0 = sched_ns(pid) if pid is not None else 0
    send_go(side.fifo)
    go_mono = time.monotonic()

    t_full, cpu1, sched1, rss = wait_full(side, expected_size, pid, round_no)

    info = child_gone(bench, side)
    held_after_exit = holds_after_exit(side, pid)

    final_size = size_of(side.capture)
    check = verify_capture(side.capture, n, side.stamped, plen)
    side.reset_capture()
    side.side_file.unlink(missing_ok=True)

    t0, t1 = info["t0"], info["t1"]
    user = cpu1[0] - cpu0[0]
    system = cpu1[1] - cpu0[1]
    res: dict[str, Any] = {
        "round": round_no,
        "bytes": n,
        "expected_file_bytes": expected_size,
        "final_file_bytes": final_size,
        "complete": t_full is not None,
        "seconds": (t_full - t0) if t_full is not None else None,
        "mib_per_s": n / MIB / (t_full - t0) if t_full is not None else None,
        "child_write_mib_per_s": n / MIB / (t1 - t0),
        "full_after_child_done_ms": (t_full - t1) * 1e3 if t_full is not None else None,
        "go_to_child_t0_ms": (t0 - go_mono) * 1e3,
        "daemon_user_s": user,
        "daemon_system_s": system,
        "daemon_cpu_s_per_gib": (user + system) * GIB / n if pid is not None else None,
        "daemon_schedstat_s_per_gib": (sched1 - sched0) / 1e9 * GIB / n if pid is not None else None,
        "daemon_rss_mib": rss / MIB if pid is not None else None,
        "daemon_holds_file_after_exit": held_after_exit,
    }
    res.update(check)
    return res
