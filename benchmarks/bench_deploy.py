"""The engine of deploys (issue #16) on a small test server: requests lost and the longest gap across a change.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_deploy.py [--rounds N] [--delay S]

A real daemon runs tests/programs/fdserver.py (single-threaded HTTP on a held TCP socket, READY=1 once
serving, --abrupt: TERM cuts off the request in hand) under a load of 4 client threads, each a GET / on
a new connection every ~10 ms (start to start). Each round: the load until 40 answers, then the command,
then 40 more answers after it returned. Rows:

- deploy (overlap): `procguardctl deploy web`: the next generation starts beside the current one, is
  ready (READY=1), then takes every new connection;
- restart (recreate, drain): `restart_strategy = "recreate"`, `drain_timeout = "10s"`: stop (after the
  handover drain), then start, as before issue #16;
- a broken release (exits at start): `deploy` fails; seconds to the verdict, failed requests;
- no change (`procguardctl status` as the command): the same figures of the steady load, the baseline.

Figures per row (median and max over the rounds): failed requests, the longest time without a 200 (from
the last 200 received before the command to the first one after it returned), and p50 / p99 latency of
the requests started during the command against the steady load's before it. Figures, never assertions.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers import DaemonRun, prog, wait_until  # noqa: E402

FDSERVER = str(REPO / "tests" / "programs" / "fdserver.py")
CTL = [sys.executable, "-m", "procguardctl"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """4 clients; every request as (start, end, ok)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(4)]

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            ok = False
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            t1 = time.monotonic()
            self.samples.append((t0, t1, ok))
            self._stop.wait(max(0.0, 0.01 - (t1 - t0)))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def answered(self) -> int:
        return sum(ok for _, _, ok in self.samples)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def round_of(d: DaemonRun, port: int, command: list[str]) -> dict[str, float]:
    with Load(port) as load:
        wait_until(lambda: load.answered() >= 40, 30, "40 answers before")
        t_cmd = time.monotonic()
        r = subprocess.run([*CTL, "-s", d.endpoint, *command], capture_output=True, text=True, timeout=120)
        t_ret = time.monotonic()
        done = load.answered()
        wait_until(lambda: load.answered() >= done + 40, 30, "40 answers after")
    samples = list(load.samples)
    oks = sorted(t1 for _, t1, ok in samples if ok)
    before = [t for t in oks if t <= t_cmd]
    after = [t for t in oks if t >= t_ret]
    span = [t for t in oks if before and t >= before[-1] and (not after or t <= after[0])]
    gap = max((b - a for a, b in zip(span, span[1:])), default=float("nan"))
    steady = [t1 - t0 for t0, t1, ok in samples if ok and t1 <= t_cmd]
    across = [t1 - t0 for t0, t1, _ in samples if t_cmd <= t0 <= t_ret]
    return {"exit": r.returncode, "failed": sum(not ok for _, _, ok in samples), "gap_ms": gap * 1e3,
            "command_s": t_ret - t_cmd, "steady_p50_ms": pct(steady, 0.5) * 1e3,
            "steady_p99_ms": pct(steady, 0.99) * 1e3, "across_p50_ms": pct(across, 0.5) * 1e3,
            "across_p99_ms": pct(across, 0.99) * 1e3}


def daemon_for(strategy: str, delay: float) -> tuple[DaemonRun, int]:
    d = DaemonRun()
    port = free_port()
    (d.work / "release.json").write_text(json.dumps({"name": "v1", "mode": "ok"}))
    keys: dict[str, object] = {"restart_strategy": strategy}
    if strategy == "recreate":
        keys["drain_timeout"] = "10s"
    d.write_config(f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\n\n'
                   + prog("web", [sys.executable, FDSERVER, "--dir", str(d.work), "--release",
                                  str(d.work / "release.json"), "--delay", str(delay), "--abrupt"],
                          sockets=["web"], ready="notify", start_timeout="10s", **keys))
    d.start()
    d.wait_state("web", "RUNNING")
    return d, port


def summary(name: str, rows: list[dict[str, float]]) -> None:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def top(key: str) -> float:
        return max(r[key] for r in rows)

    print(f"{name:<34} exit {sorted({int(r['exit']) for r in rows})}  failed {int(sum(r['failed'] for r in rows))}"
          f"  gap ms median {med('gap_ms'):.0f} max {top('gap_ms'):.0f}"
          f"  p50 {med('steady_p50_ms'):.1f} -> {med('across_p50_ms'):.1f}"
          f"  p99 {med('steady_p99_ms'):.1f} -> {med('across_p99_ms'):.1f}"
          f"  command s {med('command_s'):.2f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--delay", type=float, default=0.02, help="seconds each request takes in the server")
    args = ap.parse_args()
    for strategy, label in (("overlap", "deploy (overlap)"), ("recreate", "restart (recreate, drain)")):
        d, port = daemon_for(strategy, args.delay)
        try:
            command = ["deploy", "web"] if strategy == "overlap" else ["restart", "web"]
            rows = [round_of(d, port, command) for _ in range(args.rounds)]
            summary(label, rows)
            if strategy == "overlap":
                summary("no change (status: the baseline)", [round_of(d, port, ["status", "web"])
                                                              for _ in range(args.rounds)])
                (d.work / "release.json").write_text(json.dumps({"name": "v2", "mode": "exit"}))
                rows = [round_of(d, port, ["deploy", "web"]) for _ in range(args.rounds)]
                summary("deploy, broken release (verdict)", rows)
        finally:
            left = d.cleanup()
            if left:
                print(f"survivors killed: {left}")
    print(f"({args.rounds} rounds each; fdserver --delay {args.delay}; 4 clients, new connection per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
