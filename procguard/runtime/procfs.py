"""The process table, read from /proc (proc(5)): trees of processes, what they use, who left their group.

psutil builds an object per process and walks /proc once per `children(recursive=True)` call: a
thousand trees cost a thousand scans. Here one scan reads each /proc/PID/stat once (ppid, process
group, CPU ticks, RSS pages) and every question about many trees is answered from that table.
Blocking: every function here reads /proc or signals; run them off the loop.
"""

import os
import resource
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")  # CONFIG_PROC_CHILDREN
WALK_RATIO = 2  # see _trees


class Stat(NamedTuple):
    """The fields of /proc/PID/stat procguard reads."""

    ppid: int
    pgrp: int
    cpu_ticks: int  # utime + stime + cutime + cstime: its own and that of the children it reaped
    threads: int
    rss_pages: int


class TreeUsage(NamedTuple):
    """One process tree (a leader and its descendants) at one moment (a tuple: the scrape compares 1000 of
    them with the previous scrape's)."""

    cpu_s: float  # user + system time of the live members, and of the children they reaped
    rss_bytes: int  # summed over members: pages shared between them count once per member
    fds: int | None  # open descriptors over members; None when no member's /proc/PID/fd was readable
    pids: int


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One process tree over a window: the members at its start, their CPU over it, their RSS at its end."""

    rss_bytes: int
    cpu_percent: float  # of one CPU, rounded to 0.1
    pids: int


def _stat(pid: int) -> Stat | None:
    """pid's Stat; None once it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)  # no Python file object: ~2x faster
    except OSError:
        return None
    try:
        return _parse_stat(os.read(fd, 4096))
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_stat(data: bytes) -> Stat | None:
    # comm (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    rest = data[data.rfind(b")") + 2:].split(None, 22)  # up to rss; the 20-odd fields after it stay unsplit
    try:
        # proc(5): ppid is field 4, pgrp 5, utime..cstime 14..17, num_threads 20, rss 24; rest[0] is field 3.
        return _new_stat(Stat, (int(rest[1]), int(rest[2]),  # positional, without NamedTuple's __new__
                                int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14]), int(rest[17]),
                                int(rest[21])))
    except (IndexError, ValueError):
        return None


_new_stat = tuple.__new__


def _table() -> dict[int, Stat]:
    """Every process's Stat: one read each."""
    stats: dict[int, Stat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    return stats


def _children_of(stats: dict[int, Stat]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st.ppid, []).append(pid)
    return children


def _descendants(children: dict[int, list[int]], pid: int) -> list[int]:
    out, stack = [], list(children.get(pid, ()))
    while stack:
        out.append(child := stack.pop())
        stack.extend(children.get(child, ()))
    return out


def _fds(pid: int) -> int | None:
    path = f"/proc/{pid}/fd"
    try:
        # Linux >= 6.2 gives the number of open descriptors as the directory's size, without listing it.
        return os.stat(path).st_size or len(os.listdir(path))
    except OSError:  # gone, or another user's process and we are not root
        return None


# ------------------------------------------------------------------------------------------ usage


def _trees(leaders: set[int]) -> dict[int, list[tuple[int, Stat]]]:
    """Each leader's tree, leader first, with every member's Stat; leaders that are gone are left out.

    Walks the trees where that is cheaper than one scan of every process (_table): each member's
    children come from /proc/PID/task/TID/children (proc(5)), so the cost follows the trees' size, not
    the host's. A member costs a stat and a children read, about 1.7 stat reads, so the walk wins once
    the host runs WALK_RATIO times as many processes as there are leaders (a scrape of 1000 programs
    among 5000 other processes: benchmarks/RESULTS.md). Without CONFIG_PROC_CHILDREN: always the scan.
    """
    if not _HAS_CHILDREN_FILES or _host_processes() < WALK_RATIO * len(leaders):
        stats = _table()
        children = _children_of(stats)
        return {leader: [(pid, stats[pid]) for pid in (leader, *_descendants(children, leader))]
                for leader in leaders if leader in stats}
    return _walk(leaders, _stat, _kids)


def _walk(leaders: set[int], stat: Callable[[int], Stat | None], kids: Callable[[int, int], list[int]]
          ) -> dict[int, list[tuple[int, Stat]]]:
    """_trees by the children files, reading each member with `stat` and `kids`."""
    return {leader: members for leader in leaders if (members := _members(leader, stat, kids))}


def _members(leader: int, stat: Callable[[int], Stat | None], kids: Callable[[int, int], list[int]]
             ) -> list[tuple[int, Stat]]:
    """leader's tree, leader first, by the children files; [] when the leader is gone."""
    st = stat(leader)
    if st is None:
        return []
    members = [(leader, st)]
    stack = kids(leader, st.threads)
    while stack:
        pid = stack.pop()
        st = stat(pid)
        if st is not None:  # else gone meanwhile, and its children with it or reparented
            members.append((pid, st))
            stack.extend(kids(pid, st.threads))
    return members


def _host_processes() -> int:
    """About how many processes the host runs, without listing /proc: its link count grows with each
    (fs/proc/root.c proc_root_getattr adds nr_processes())."""
    return os.stat("/proc").st_nlink


def _kids(pid: int, threads: int) -> list[int]:
    """pid's children: each of its threads lists those it forked (a single thread's id is pid's)."""
    try:
        tids = [str(pid)] if threads == 1 else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            out.extend(map(int, os.read(fd, 1 << 16).split()))
        except OSError:
            pass
        finally:
            os.close(fd)
    return out


def tree_usage(leaders: Iterable[int]) -> dict[int, TreeUsage]:
    """Usage of each leader's tree; leaders that are gone are left out."""
    return _usage(_trees(set(leaders)), _fds)


def _usage(trees: dict[int, list[tuple[int, Stat]]], count_fds: Callable[[int], int | None]) -> dict[int, TreeUsage]:
    return {leader: _tree_usage(members, count_fds) for leader, members in trees.items()}


def _tree_usage(members: list[tuple[int, Stat]], count_fds: Callable[[int], int | None]) -> TreeUsage:
    ticks = pages = 0
    fds: int | None = None
    for pid, st in members:
        ticks += st.cpu_ticks
        pages += st.rss_pages
        n = count_fds(pid)
        if n is not None:
            fds = n + (fds or 0)
    return TreeUsage(ticks / CLOCK_TICKS, pages * PAGE_BYTES, fds, len(members))


class _Held:
    """One member's /proc files kept open between passes (-1: not opened yet)."""

    __slots__ = ("stat", "children", "fd_dir")

    def __init__(self, stat: int) -> None:
        self.stat = stat
        self.children = -1
        self.fd_dir = -1

    def close(self) -> None:
        for fd in (self.stat, self.children, self.fd_dir):
            if fd >= 0:
                os.close(fd)


class TreeReader:
    """tree_usage, pass after pass (each metrics scrape), with each member's /proc files kept open between them.

    Re-reading an open /proc file with pread(2) skips the path lookup, open and close that make up most
    of a read: 1000 members (stat, children, fd count) cost ~0.6x tree_usage's walk (benchmarks/
    bench_metrics.py prints both). An open /proc/PID file stays bound to the process it was opened for
    (procfs resolves the pid at open), so once that process is gone a read fails (ESRCH) and the file
    is dropped: a reused pid is opened afresh, never mistaken for the old process. Files of members no
    longer in any tree are closed after each pass.
    Costs: up to three descriptors per member, never more than a quarter of RLIMIT_NOFILE's soft limit
    in all (members beyond it are read as tree_usage reads them), and 4 KiB of kernel memory for each
    stat and children file once read (its seq_file buffer, charged to the daemon's cgroup: kmalloc-cg-4k
    grew by 993 for 1000 stat files; freed when closed).
    Without CONFIG_PROC_CHILDREN: tree_usage. One pass at a time; close() may come from another thread.
    """

    def __init__(self) -> None:
        self._held: dict[int, _Held] = {}
        self._seen: set[int] = set()
        self._last: dict[int, TreeUsage] = {}
        self._cap = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """How many members have files held open."""
        return len(self._held)

    def usage(self, leaders: Iterable[int]) -> dict[int, TreeUsage]:
        """Usage of each leader's tree (tree_usage); leaders that are gone are left out."""
        if not _HAS_CHILDREN_FILES:
            return tree_usage(leaders)
        with self._lock:
            self._seen = set()
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._cap = (soft if soft != resource.RLIM_INFINITY else 1 << 20) // 4 // 3  # members
            out = {}
            for leader in set(leaders):  # one tree at a time: its members are garbage before the next
                members = _members(leader, self._stat, self._kids)
                if members:
                    usage = _tree_usage(members, self._fds)
                    last = self._last.get(leader)
                    out[leader] = last if last == usage else usage  # the old object: nothing new for the GC
            for pid in self._held.keys() - self._seen:
                self._held.pop(pid).close()
            self._last = out
            return out

    def close(self) -> None:
        """Close every held file."""
        with self._lock:
            for held in self._held.values():
                held.close()
            self._held.clear()

    def _stat(self, pid: int) -> Stat | None:
        self._seen.add(pid)
        held = self._held.get(pid)
        if held is not None:
            try:
                return _parse_stat(os.pread(held.stat, 4096, 0))
            except OSError:  # gone (ESRCH); its pid may name a new process now
                self._held.pop(pid).close()
        if len(self._held) >= self._cap:
            return _stat(pid)
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        self._held[pid] = _Held(fd)
        try:
            return _parse_stat(os.pread(fd, 4096, 0))
        except OSError:
            self._held.pop(pid).close()
            return None

    def _kids(self, pid: int, threads: int) -> list[int]:
        held = self._held.get(pid)
        if held is None or threads != 1:  # each thread has its children file: those of many are not held
            return _kids(pid, threads)
        try:
            if held.children < 0:
                held.children = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)
            return list(map(int, os.pread(held.children, 1 << 16, 0).split()))
        except OSError:
            return []

    def _fds(self, pid: int) -> int | None:
        held = self._held.get(pid)
        if held is None:
            return _fds(pid)
        try:
            if held.fd_dir < 0:
                held.fd_dir = os.open(f"/proc/{pid}/fd", os.O_PATH | os.O_CLOEXEC)
            # fstat asks procfs afresh each time, as stat does (_fds)
            return os.fstat(held.fd_dir).st_size or len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            return None


@dataclass(frozen=True, slots=True)
class SampleStart:
    """The trees' members and their counters when a sampling window opened."""

    trees: dict[int, list[tuple[int, Stat]]]
    t0: float


def start_sample(leaders: Iterable[int]) -> SampleStart:
    """Open a sampling window on each leader's tree (blocking: run off-loop)."""
    return SampleStart(trees=_trees(set(leaders)), t0=time.monotonic())


def finish_sample(start: SampleStart) -> dict[int, TreeSample]:
    """RSS and CPU% of each tree since `start`; a member gone by now counts neither CPU nor RSS."""
    elapsed = max(time.monotonic() - start.t0, 1e-9)
    out: dict[int, TreeSample] = {}
    for leader, members in start.trees.items():
        ticks = pages = 0
        for pid, before in members:
            after = _stat(pid)
            if after is not None:
                ticks += max(0, after.cpu_ticks - before.cpu_ticks)
                pages += after.rss_pages
        cpu_s = ticks / CLOCK_TICKS
        out[leader] = TreeSample(rss_bytes=pages * PAGE_BYTES, cpu_percent=round(100.0 * cpu_s / elapsed, 1),
                                 pids=len(members))
    return out


def sample_usage(leaders: Iterable[int], window_s: float, sleep: Callable[[float], None] = time.sleep
                 ) -> dict[int, TreeSample]:
    """RSS and CPU% of each leader's tree, CPU measured over window_s (sleeps); leaders gone are left out.

    The members are those at the window's start; a member gone by its end counts neither CPU nor RSS.
    """
    start = start_sample(leaders)
    if not start.trees:
        return {}
    sleep(window_s)
    return finish_sample(start)


def self_usage() -> tuple[float, int, int]:
    """The daemon's own CPU seconds (all threads, not its children), RSS bytes and thread count."""
    times = os.times()
    with open("/proc/self/statm", "rb") as f:
        rss_pages = int(f.read().split()[1])
    return times.user + times.system, rss_pages * PAGE_BYTES, len(os.listdir("/proc/self/task"))


def tree_rss(pid: int) -> int | None:
    """RSS of pid and all its descendants in bytes (max_memory); None when pid is gone."""
    usage = tree_usage([pid]).get(pid)
    return None if usage is None else usage.rss_bytes


# ------------------------------------------------------------------------------- groups and strays


def pid_exists(pid: int) -> bool:
    return _exists(os.kill, pid)


def group_exists(pgid: int) -> bool:
    return _exists(os.killpg, pgid)


def _exists(kill: Callable[[int, int], None], ident: int) -> bool:
    """Signal 0 probes existence (kill(2)); EPERM still means it exists."""
    try:
        kill(ident, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_pids(pgid: int) -> list[int]:
    """The members of process group pgid; its leader may be gone."""
    return [pid for pid, st in _table().items() if st.pgrp == pgid]


def scan_strays(leaders: dict[str, int | None], tracked: set[int]) -> dict[str, set[int]]:
    """For each process, find its leader's descendants outside its process group, and our orphans with its
    marker together with their descendants.

    One pass over /proc for all processes (`leaders` maps process name to leader pid, None when the
    leader is gone; `tracked`: the daemon's children that lead a process or run a helper command).
    """
    children = _children_of(_table())
    found: dict[str, set[int]] = {name: set() for name in leaders}
    for name, leader in leaders.items():
        if leader is None:
            continue
        for pid in _descendants(children, leader):
            try:
                if os.getpgid(pid) != leader:  # now, not as read: it may have just left the group
                    found[name].add(pid)
            except ProcessLookupError:
                pass
    # Orphans were reparented to us (subreaper); the PROCGUARD_PROCESS marker says whose they are, and
    # whatever they started is theirs too.
    live_leaders = {leader for leader in leaders.values() if leader is not None}
    for pid in children.get(os.getpid(), ()):
        if pid in tracked or pid in live_leaders:
            continue
        owner = _marker(pid)
        if owner in found:
            found[owner].add(pid)
            found[owner].update(_descendants(children, pid))
    return found


def _marker(pid: int) -> str | None:
    """The PROCGUARD_PROCESS marker in pid's environment, or None (gone, unreadable, unmarked)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return None
    return next((v[len(b"PROCGUARD_PROCESS="):].decode(errors="replace") for v in environ
                 if v.startswith(b"PROCGUARD_PROCESS=")), None)


def untracked_children(tracked: set[int]) -> list[int]:
    """Our direct children that no program owns (orphans reparented to the subreaper)."""
    return [pid for pid in direct_children() if pid not in tracked]


def direct_children() -> set[int]:
    """This process's children: /proc/self/task/*/children (proc(5)), not a scan of every process.

    A child is listed under the thread that forked it (or, once that thread ended, the one it was
    reparented to inside this process), so every thread's list is read. Without CONFIG_PROC_CHILDREN:
    psutil's scan of /proc.
    """
    out: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
        for tid in tids:
            try:
                with open(f"/proc/self/task/{tid}/children", "rb") as f:
                    out.update(int(pid) for pid in f.read().split())
            except FileNotFoundError:
                if not os.path.exists("/proc/self/task/" + tid):
                    continue  # that thread ended meanwhile
                raise
    except FileNotFoundError:
        import psutil  # lazily: only where the kernel lacks the children file

        return {child.pid for child in psutil.Process().children()}
    return out
