"""Resource usage of process trees from one pass over /proc, for metrics and `top`. Blocking: run off-loop.

psutil builds an object per process and walks /proc once per `children(recursive=True)` call: a
thousand trees cost a thousand scans. Here one scan reads each /proc/PID/stat once (ppid, CPU ticks,
RSS pages: proc(5)) and every tree is summed from that table.
"""

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """One process tree (a leader and its descendants) at one moment."""

    cpu_s: float  # user + system time of the live members, and of the children they reaped
    rss_bytes: int  # summed over members: pages shared between them count once per member
    fds: int | None  # open descriptors over members; None when no member's /proc/PID/fd was readable
    pids: int


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, CPU ticks incl. reaped children, RSS pages) from /proc/PID/stat; None once it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # no Python file object: ~2x faster
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    rest = data[data.rfind(b")") + 2:].split(None, 22)  # up to rss; the 20-odd fields after it stay unsplit
    try:
        # proc(5): ppid is field 4, utime..cstime 14..17, rss 24; rest[0] is field 3.
        return int(rest[1]), int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14]), int(rest[21])
    except (IndexError, ValueError):
        return None


def _fds(pid: int) -> int | None:
    path = f"/proc/{pid}/fd"
    try:
        # Linux >= 6.2 gives the number of open descriptors as the directory's size, without listing it.
        return os.stat(path).st_size or len(os.listdir(path))
    except OSError:  # gone, or another user's process and we are not root
        return None


def tree_usage(leaders: Iterable[int]) -> dict[int, TreeUsage]:
    """Usage of each leader's tree; leaders that are gone are left out."""
    wanted = set(leaders)
    if not wanted:
        return {}
    stats: dict[int, tuple[int, int, int]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        st = _stat(pid)
        if st is not None:
            stats[pid] = st
            children.setdefault(st[0], []).append(pid)
    out: dict[int, TreeUsage] = {}
    for leader in wanted:
        if leader not in stats:
            continue
        ticks = pages = members = 0
        fds: int | None = None
        stack = [leader]
        while stack:
            pid = stack.pop()
            _, cpu, rss = stats[pid]
            ticks += cpu
            pages += rss
            members += 1
            n = _fds(pid)
            if n is not None:
                fds = n + (fds or 0)
            stack.extend(children.get(pid, ()))
        out[leader] = TreeUsage(cpu_s=ticks / CLOCK_TICKS, rss_bytes=pages * PAGE_BYTES, fds=fds, pids=members)
    return out


def self_usage() -> tuple[float, int, int]:
    """The daemon's own CPU seconds (all threads, not its children), RSS bytes and thread count."""
    times = os.times()
    with open("/proc/self/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    return times.user + times.system, rss_pages * PAGE_BYTES, len(os.listdir("/proc/self/task"))


def tree_rss(pid: int) -> int | None:
    """RSS of pid and all its descendants in bytes (max_memory); None when pid is gone. Blocking: off-loop."""
    usage = tree_usage([pid]).get(pid)
    return None if usage is None else usage.rss_bytes
