"""What a deploy's longest gap is made of: every request's timeline beside the daemon's events (issue #16).

    PYTHONPATH=. .venv/bin/python benchmarks/deploy_timeline.py [--only SERVER[,SERVER]] [--rounds N]
                                                                [--window-ms MS] [--json OUT]

For each server, the coffeehouse demo runs as bench_servers.py's deploy rows run it (conf.d as shipped, held
sockets, the release layout, the same load: CLIENT_THREADS threads, each a GET / on a new connection every
CLIENT_INTERVAL_S). Each request is timed on the client's monotonic clock at four points: sent (before
connect()), connected, first byte of the answer, answer complete; with its status and the release that
answered (X-Coffeehouse-Release: the generation). The daemon's JSON log gives, on the same clock (its
wall-clock stamps shifted by time.time() - time.monotonic() taken at the start), the deploy's steps: jobs,
the next generation spawned and RUNNING, the switch, the drain's end, the current generation's stop signal
(its STOPPING) and its end (STOPPED).

Printed per round: the longest gap between two successive 200s received from the command to the end of the
transition (as bench_servers.py counts it), the same load's steady gap before the command, every event in
order with the requests completing around the gap (+-window), and where the gap lies: which requests were
in flight across it, which phase they were sent, connected and answered in, and who answered them; every
failed request; the deploy row's figures (failed, p50/p99 across the deploy vs the steady load). Also the
CPU time the daemon, each generation, the jobs and the load's clients used in each step and in the first
50-500 ms after the switch (/proc/PID/stat, sampled every 5 ms; 10 ms ticks). The load average is printed
with every round. Figures only: nothing here asserts.
"""

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import LogTail, parse_ts  # noqa: E402
from benchmarks.harness.stats import percentile_ms  # noqa: E402
from procguard.testing.demo import SERVERS, Coffeehouse, get, program, start, why_missing  # noqa: E402
from procguard.testing.run import DaemonRun  # noqa: E402

CLIENT_THREADS = 4
CLIENT_INTERVAL_S = 0.010
CLIENT_TIMEOUT_S = 5.0
STEADY_OK = 400
POST_OK = 40
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Req:
    """One request on the monotonic clock (connected/first/done: None when it never got there)."""

    thread: int
    sent: float
    connected: float | None
    first: float | None
    done: float
    status: int | None
    release: str | None
    error: str


def one_request(port: int, thread: int) -> Req:
    sent = time.monotonic()
    connected = first = None
    status: int | None = None
    release = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S) as s:
            connected = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = s.recv(65536)
            first = time.monotonic()
            while data and b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            want = int(m[1]) if m else None
            while want is None or len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            status = int(head.split(b" ", 2)[1])
            r = re.search(rb"(?im)^x-coffeehouse-release:\s*(\S+)", head)
            release = r[1].decode() if r else None
        return Req(thread, sent, connected, first, time.monotonic(), status, release,
                   "" if status == 200 else f"HTTP {status}")
    except (OSError, ValueError, IndexError) as exc:
        return Req(thread, sent, connected, first, time.monotonic(), status, release, type(exc).__name__)


class TimedLoad:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reqs: list[Req] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENT_THREADS)]

    def _run(self, i: int) -> None:
        while not self._stop.is_set():
            r = one_request(self.port, i)
            self.reqs.append(r)
            self._stop.wait(max(0.0, r.sent + CLIENT_INTERVAL_S - time.monotonic()))

    def ok_after(self, t: float) -> int:
        return sum(1 for r in list(self.reqs) if r.status == 200 and r.done >= t)

    def __enter__(self) -> "TimedLoad":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(CLIENT_TIMEOUT_S + 5)


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def run_ns(pid: int) -> int:
    """CPU time of pid, every thread (also those that exited: an executor's idle threads leave), ns;
    /proc/PID/stat utime + stime, so in clock ticks (10 ms with CLK_TCK 100)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            out += [int(k) for k in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except OSError:
            pass
    return out


class CpuSampler:
    """Every SAMPLE_S: CPU ns so far of the daemon itself, of each of its children's trees (by the child's
    pid: a generation's master, a job), and of this process (the load's clients). A tree's count is the sum
    over its live processes: one that exits drops out, so per-phase figures are deltas of live trees."""

    SAMPLE_S = 0.005

    def __init__(self, daemon: int) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self, root: int) -> int:
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            total += run_ns(pid)
            todo += children_of(pid)
        return total

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            snap = {"daemon": run_ns(self.daemon), "clients": run_ns(me)}
            for child in children_of(self.daemon):
                snap[str(child)] = self._tree(child)
            self.samples.append((time.monotonic(), snap))
            self._stop.wait(self.SAMPLE_S)

    def used_ms(self, a: float, b: float) -> dict[str, float]:
        """CPU ms each tree used between monotonic a and b (nearest samples; trees alive at both)."""
        if not self.samples:
            return {}
        sa = min(self.samples, key=lambda s: abs(s[0] - a))[1]
        sb = min(self.samples, key=lambda s: abs(s[0] - b))[1]
        return {k: (sb[k] - sa[k]) / 1e6 for k in sb if k in sa and sb[k] >= sa[k]}

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def thread_ns(pid: int) -> int:
    """CPU time of every live thread of pid, ns, exact (/proc/PID/task/*/schedstat; a thread that exited
    drops out, so take deltas over short spans)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def first_requests(c: Coffeehouse, server: str, paths: tuple[str, ...] = ("/health/", "/")) -> list[dict[str, Any]]:
    """The CPU each process of a fresh generation spends on its first requests (`--first-requests`): one
    request at a time, 4 of each path in turn, after the generation became healthy (its health check
    has reached one worker). CPU is independent of the machine's load, unlike the wall time beside it."""
    master = int(c.status()[program(server)]["pid"])
    procs = [master]
    todo = [master]
    while todo:
        kids = children_of(todo.pop())
        procs += kids
        todo += kids
    out = []
    for path in [p for p in paths for _ in range(4)]:
        before = {p: thread_ns(p) for p in procs}
        sent = time.monotonic()
        status = get(c.ports[server], path, timeout=CLIENT_TIMEOUT_S)[0]
        wall_ms = (time.monotonic() - sent) * 1e3
        cpu = {p: (thread_ns(p) - before[p]) / 1e6 for p in procs}
        out.append({"path": path, "status": status, "wall_ms": wall_ms,
                    "cpu_ms": {str(p): round(v, 1) for p, v in cpu.items() if v >= 0.5}})
        print(f"  {path:<9} {status} wall {wall_ms:6.1f} ms; cpu ms by pid "
              f"{ {p: round(v, 1) for p, v in cpu.items() if v >= 0.5} }", flush=True)
    return out


def event_label(e: dict[str, Any], name: str) -> str | None:
    ev = e.get("event")
    if ev == "process_state_changed":
        gen = e.get("generation", 1)
        if e.get("process") == name:
            return f"{name} gen {gen} pid {e.get('pid')}: {e.get('old')} -> {e.get('new')}"
        if e.get("process", "").startswith("coffeehouse") and e.get("new") in ("STARTING", "EXITED"):
            return f"job {e.get('process')}: {e.get('new')}"
        return None
    if ev in ("deploy_started", "deploy_step", "deploy_succeeded", "deploy_failed"):
        return f"{ev} {e.get('step', '')} {e.get('job', '')}".rstrip()
    if ev in ("process_switched", "process_drained", "process_spawned") and e.get("process") == name:
        extra = {k: e[k] for k in ("pid", "previous_pid", "waited_ms", "unanswered") if k in e}
        return f"{ev} {extra}"
    return None


def gap_of(reqs: list[Req], t0: float, t_end: float) -> tuple[float, float, float]:
    """(gap ms, from, to): the longest time between successive 200s received, from the last 200 at or
    before t0 to the first at or after t_end (bench_servers.py's longest_gap_ms)."""
    done = sorted(r.done for r in reqs if r.status == 200)
    a0 = max((t for t in done if t <= t0), default=t0)
    b0 = min((t for t in done if t >= t_end), default=t_end)
    pts = [a0, *(t for t in done if a0 < t < b0), b0]
    best = max(zip(pts, pts[1:]), key=lambda ab: ab[1] - ab[0], default=(t0, t0))
    return (best[1] - best[0]) * 1e3, best[0], best[1]


def steady_gap(reqs: list[Req], t0: float) -> float:
    done = sorted(r.done for r in reqs if r.status == 200 and r.done < t0)
    return max((b - a for a, b in zip(done, done[1:])), default=0.0) * 1e3


def phase_at(t: float | None, marks: list[tuple[float, str]]) -> str:
    if t is None:
        return "-"
    last = "before"
    for at, label in marks:
        if at <= t:
            last = label
    return last


def print_cpu(sampler: CpuSampler, marks: list[tuple[float, str]], t_end: float, names: dict[str, str]) -> None:
    """CPU per phase, and in the first moments after the switch: what competes with serving for the cores."""
    bounds = [*marks, (t_end, "end")]
    for (a, label), (b, _) in zip(bounds, bounds[1:]):
        used = sampler.used_ms(a, b)
        other = sum(v for k, v in used.items() if k not in names)
        parts = ", ".join(f"{names[k]} {v:.0f}" for k, v in used.items() if k in names)
        print(f"  cpu ms in {label:<10} ({(b - a) * 1e3:7.0f} ms wall): {parts}, other children {other:.0f}")
    a_sw = next((a for a, label in marks if label == "switched"), None)
    if a_sw is not None:
        for span in (0.05, 0.1, 0.2, 0.5):
            used = sampler.used_ms(a_sw, a_sw + span)
            print(f"  cpu ms in the {span * 1e3:.0f} ms after the switch: "
                  + ", ".join(f"{names.get(k, 'child ' + k)} {v:.0f}" for k, v in used.items() if v >= 0.5))


def print_requests(reqs: list[Req], events: list[tuple[float, str, dict[str, Any]]], marks: list[tuple[float, str]],
                   t0: float, ga: float, gb: float, window_ms: float) -> None:
    """Every failed request; then the events and the requests completing around the gap (ga..gb), in order."""
    for q in reqs:
        if q.status != 200:
            print(f"  failed: {q.error} (status {q.status}), sent {(q.sent - t0) * 1e3:.0f} ms after the command "
                  f"(in {phase_at(q.sent, marks)}), connected {'no' if q.connected is None else 'yes'}, "
                  f"first byte {'no' if q.first is None else 'yes'}, after {(q.done - q.sent) * 1e3:.0f} ms")

    def ms(t: float | None) -> str:
        return "-" if t is None else f"{(t - t0) * 1e3:8.1f}"

    lo, hi = ga - window_ms / 1e3, gb + window_ms / 1e3
    rows: list[tuple[float, str]] = [(at - t0, f"EVENT {label}") for at, label, _ in events]
    for q in reqs:
        if q.done < lo or q.sent > hi:
            continue
        rows.append((q.done - t0, f"req t{q.thread} sent {ms(q.sent)} conn {ms(q.connected)} first {ms(q.first)} "
                                  f"done {ms(q.done)} [{(q.done - q.sent) * 1e3:6.1f} ms] {q.status} "
                                  f"rel {q.release} (sent in {phase_at(q.sent, marks)}, answered in "
                                  f"{phase_at(q.first, marks)})"))
    for at, text in sorted(rows):
        flag = " <== gap" if abs(at - (gb - t0)) < 1e-6 else ""
        print(f"   {at * 1e3:9.1f} ms  {text}{flag}")


def one_round(c: Coffeehouse, server: str, window_ms: float) -> dict[str, Any]:
    name = program(server)
    port = c.ports[server]
    tail = LogTail(c.d.logfile)
    tail.poll()
    st = c.status()[name]
    old_pid = int(st["pid"])
    daemon_pid = c.d.proc.pid if c.d.proc is not None else 0
    c.flip(c.new_release())
    offset = time.time() - time.monotonic()
    with TimedLoad(port) as load, CpuSampler(daemon_pid) as sampler:
        wait_for(lambda: load.ok_after(0) >= STEADY_OK, 120, f"{server}: steady requests")
        load_avg = os.getloadavg()
        t0 = time.monotonic()
        r = c.ctl("deploy", name)
        t1 = time.monotonic()
        wait_for(lambda: load.ok_after(t1) >= POST_OK, 60, f"{server}: requests after the deploy")
    if r.returncode != 0:
        raise RuntimeError(f"deploy failed: {r.stdout}{r.stderr}")
    events = [(parse_ts(e) - offset, label, e) for e in tail.poll() if (label := event_label(e, name))]
    new_pid = int(c.status()[name]["pid"])
    reqs = sorted(load.reqs, key=lambda q: q.sent)
    gap, ga, gb = gap_of(reqs, t0, t1)
    marks = [(t0, "command")]
    for at, label, e in events:
        if e.get("event") == "deploy_step" and e.get("step"):
            marks.append((at, f"{e['step']}"))
        elif e.get("event") == "process_switched":
            marks.append((at, "switched"))
        elif e.get("event") == "process_drained":
            marks.append((at, "drained"))
    marks.sort()
    # bench_servers.py's deploy row: steady = answered before the command, across = sent from the
    # command to the end of the transition (the first 200 after it returned).
    t_done = min((q.done for q in reqs if q.status == 200 and q.done >= t1), default=t1)
    steady = [q.done - q.sent for q in reqs if q.done < t0]
    across = [q.done - q.sent for q in reqs if t0 <= q.sent <= t_done]
    row = {"failed": sum(1 for q in reqs if q.status != 200), "requests": len(reqs),
           "steady_p50_ms": percentile_ms(steady, 50), "steady_p99_ms": percentile_ms(steady, 99),
           "across_p50_ms": percentile_ms(across, 50), "across_p99_ms": percentile_ms(across, 99)}
    print_cpu(sampler, marks, t1, {str(old_pid): "old gen", str(new_pid): "new gen", "daemon": "daemon",
                                   "clients": "clients"})
    print(f"  round: load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}; deploy {(t1 - t0) * 1e3:.0f} "
          f"ms; failed {row['failed']} of {row['requests']}; p50/p99 across {row['across_p50_ms']:.1f}/"
          f"{row['across_p99_ms']:.1f} ms, steady {row['steady_p50_ms']:.1f}/{row['steady_p99_ms']:.1f}; longest gap "
          f"{gap:.0f} ms (steady {steady_gap(reqs, t0):.0f}), from {(ga - t0) * 1e3:.0f} to "
          f"{(gb - t0) * 1e3:.0f} ms after the command; old pid {old_pid} -> new {new_pid}")
    print_requests(reqs, events, marks, t0, ga, gb, window_ms)
    spanning = [q for q in reqs if q.sent < gb and q.done > ga]
    return {"server": server, "load_avg": load_avg, **row, "deploy_ms": (t1 - t0) * 1e3, "gap_ms": gap,
            "steady_gap_ms": steady_gap(reqs, t0), "gap_from_ms": (ga - t0) * 1e3, "gap_to_ms": (gb - t0) * 1e3,
            "events": [((at - t0) * 1e3, label) for at, label, _ in events],
            "in_flight_across_gap": [{k: (v - t0) * 1e3 if isinstance(v, float) else v for k, v in asdict(q).items()}
                                     for q in spanning]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SERVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window-ms", type=float, default=60.0)
    ap.add_argument("--json")
    ap.add_argument("--first-requests", action="store_true",
                    help="instead of deploys: the CPU a fresh generation's processes spend on their first requests")
    args = ap.parse_args()
    out = []
    for server in [s for s in args.only.split(",") if s]:
        missing = why_missing(server)
        if missing:
            print(f"{server}: skipped: {missing}")
            continue
        print(f"{server}:", flush=True)
        d = DaemonRun()
        c = None
        try:
            c = start(d, (server,), releases=True)
            c.wait_healthy(server)
            if args.first_requests:
                out.append({"server": server, "first_requests": first_requests(c, server)})
                continue
            for _ in range(args.rounds):
                c.wait_healthy(server)
                out.append(one_round(c, server, args.window_ms))
                sys.stdout.flush()
        finally:
            if c is not None:
                left = c.stop()
                if left:
                    print(f"  survivors (killed): {left}")
            d.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.first_requests:
        return 0
    print("summary per round: failed, longest gap / steady gap ms, p99 across / steady ms (load average, 1 min)")
    for server in dict.fromkeys(o["server"] for o in out):
        rows = [o for o in out if o["server"] == server]
        print(f"  {server}: " + "; ".join(
            f"{o['failed']}, {o['gap_ms']:.0f}/{o['steady_gap_ms']:.0f}, {o['across_p99_ms']:.0f}/{o['steady_p99_ms']:.0f} "
            f"({o['load_avg'][0]:.1f})" for o in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
