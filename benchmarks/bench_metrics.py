"""Prometheus metrics (issue #18): the daemon's idle cost with and without them, and the scrape time.

    .venv/bin/python benchmarks/bench_metrics.py [--quick] [--json OUT]

1. Idle: a real daemon with 100 `sleep` programs, once without `metrics` and once with
   `metrics = "127.0.0.1:0"` and nobody scraping: CPU over a window (psutil ticks and schedstat),
   RSS and USS, threads (bench_engine.bench_idle). Metrics must cost nothing while nobody scrapes.
2. Scrape: a daemon with 1000 `sleep` programs (100 with --quick) and metrics on; N scrapes over HTTP
   one after the other. Server side is the daemon's own `procguard_metrics_scrape_seconds` (from the
   request read to the last byte written) as reported by the next scrape; client side is the wall
   time of the HTTP request. The first scrape renders every family (nothing cached); the next ones
   reuse the families whose values did not change. One more figure: a scrape right after a state
   change (a restart: the engine families are rendered again).

Figures only, never an assertion (DESIGN.md, "Tests"); cleanup by the harness's Bench.
"""

import argparse
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.bench_engine import bench_idle  # noqa: E402
from benchmarks.harness.daemon import Daemon  # noqa: E402
from benchmarks.harness.peers import PROCGUARDCTL, procguard_programs, sleep_programs  # noqa: E402
from benchmarks.harness.procs import raise_nofile, run_ctl  # noqa: E402
from benchmarks.harness.run import Bench, bench_main, poll_until  # noqa: E402

TARGET_SCRAPE_MS = 50.0


def metrics_daemon(bench: Bench, name: str, n: int, metrics: bool) -> Daemon:
    """A daemon with n sleep programs, its own control socket, and metrics on a free loopback port."""
    raise_nofile(n)
    d = bench.daemon(name, None)
    d.write_config(procguard_programs(sleep_programs(n)), extra='metrics = "127.0.0.1:0"\n' if metrics else "")
    d.start()
    poll_until(lambda: len(d.exec_children()) >= n or None, 300, f"{n} sleep children", interval_s=0.2)
    return d


def scrape(url: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as reply:
        body = reply.read().decode()
    return (time.perf_counter() - t0) * 1e3, body


def sample(body: str, name: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def server_ms(body: str) -> float | None:
    seconds = sample(body, "procguard_metrics_scrape_seconds")
    return None if seconds is None else seconds * 1e3


def best_cpu_ms(fn: Callable[[], object], rounds: int = 5) -> float:
    """The least CPU time (this thread's) of a few calls: what the work costs when nothing else competes."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best * 1e3


def component_cpu_ms(pids: list[int]) -> dict[str, float]:
    """A scrape's two big parts, timed here in CPU time on the daemon's real children: the /proc pass
    (procfs.tree_usage) and the per-process families (ProcessCollector), steady and with every CPU value
    changed (the worst case of a busy host: that family is rendered again for every process)."""
    from procguard.runtime import procfs
    from procguard.observe.metrics import ProcessCollector, Row
    from procguard.engine.states import ProcessState

    usage = procfs.tree_usage(pids)
    rows = [Row(program=f"p{i:04d}", process=f"p{i:04d}", state=ProcessState.RUNNING, pid=pid, started_at=1.7e9,
                healthy=None, health_check_s=None, restarts=0, exits=(0, 0, 0, 0, 0),
                output=(("stdout", 0, 0), ("stderr", 0, 0))) for i, pid in enumerate(pids)]
    collector = ProcessCollector()
    cold = best_cpu_ms(lambda: ProcessCollector()(rows, usage), rounds=2)
    collector(rows, usage)
    steady = best_cpu_ms(lambda: collector(rows, usage))
    flip = [0]

    def cpu_changed() -> None:
        flip[0] += 1
        collector(rows, {pid: procfs.TreeUsage(cpu_s=u.cpu_s + flip[0], rss_bytes=u.rss_bytes, fds=u.fds, pids=u.pids)
                         for pid, u in usage.items()})

    reader = procfs.TreeReader()  # the scrape's: its files held open between passes
    reader.usage(pids)
    held = best_cpu_ms(lambda: reader.usage(pids))
    reader.close()
    return {"proc_scan": best_cpu_ms(lambda: procfs.tree_usage(pids)), "proc_held": held, "families_cold": cold,
            "families_steady": steady, "families_cpu_changed": best_cpu_ms(cpu_changed)}


def bench_scrapes(bench: Bench, n: int, rounds: int) -> dict[str, Any]:
    d = metrics_daemon(bench, f"scrape-{n}", n, metrics=True)
    url = "http://" + d.wait_event("metrics_listening")["address"] + "/metrics"
    client: list[float] = []
    server: list[float] = []
    first_client, body = scrape(url)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    cpu0 = None
    for _ in range(rounds):
        ms, body = scrape(url)
        client.append(ms)
        previous = server_ms(body)  # the scrape before this one
        if previous is not None:
            server.append(previous)
        if cpu0 is None:  # from the second scrape on: the first one's cold render is not a steady scrape's
            cpu0 = sample(body, "procguard_daemon_cpu_seconds_total")
    first_server = server.pop(0)
    cpu1 = sample(body, "procguard_daemon_cpu_seconds_total")
    # The daemon's CPU time per scrape (the idle daemon spends ~0 between them): unlike wall time, it does
    # not grow when other processes compete for the cores.
    cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1e3 / (rounds - 1)
    # A state change: the engine families are rendered again on the next scrape.
    run_ctl([PROCGUARDCTL, "-s", d.endpoint, "restart", "p0000"], "procguardctl restart p0000")
    changed_client, _ = scrape(url)
    _, body = scrape(url)
    changed_server = server_ms(body)
    host_processes = sum(e.isdigit() for e in os.listdir("/proc"))
    parts = component_cpu_ms([c.pid for c in d.exec_children()])
    d.kill()
    return {"n": n, "samples": samples, "bytes": len(body), "cpu_ms_per_scrape": cpu_ms, "parts_cpu_ms": parts,
            "load_average": os.getloadavg(), "processes_on_host": host_processes,
            "first_client_ms": first_client,
            "first_server_ms": first_server, "client_ms": client, "server_ms": server,
            "after_change_client_ms": changed_client, "after_change_server_ms": changed_server}


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    window = 5.0 if args.quick else 20.0
    idle: dict[str, Any] = {}
    for metrics in (False, True):
        d = metrics_daemon(bench, f"idle-{'metrics' if metrics else 'plain'}", 100, metrics)
        idle["with" if metrics else "without"] = bench_idle(d, window)
        d.kill()
    n = 100 if args.quick else 1000
    scrapes = bench_scrapes(bench, n, 5 if args.quick else 20)
    print(f"\nidle daemon, 100 sleep programs, {window:g} s window (nobody scrapes)")
    print(f"  {'':<22} {'CPU% sched':>11} {'CPU% ticks':>11} {'RSS MiB':>8} {'USS MiB':>8} {'threads':>8}")
    for k in ("without", "with"):
        r = idle[k]
        print(f"  {k + ' metrics':<22} {r['cpu_pct_schedstat']:>11.3f} {r['cpu_pct_psutil']:>11.3f} "
              f"{r['rss_mib']:>8.1f} {r['uss_mib']:>8.1f} {r['threads']:>8}")
    s = scrapes
    print(f"\nscrape of {s['n']} processes ({s['samples']} samples, {s['bytes']} bytes)")

    def row(label: str, values: list[float]) -> None:
        print(f"  {label:<34} min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
              f"max {max(values):7.1f} ms")

    row("server side (steady)", s["server_ms"])
    parts = s["parts_cpu_ms"]
    print(f"  {'parts, CPU ms (best of 5, in the bench)':<34} /proc pass {parts['proc_scan']:.1f} "
          f"(files held: {parts['proc_held']:.1f}), families: steady {parts['families_steady']:.1f}, every CPU "
          f"value changed {parts['families_cpu_changed']:.1f}, cold {parts['families_cold']:.1f}")
    if s["cpu_ms_per_scrape"] is not None:
        print(f"  {'daemon CPU per scrape (steady)':<34} {s['cpu_ms_per_scrape']:.1f} ms")
    row("client wall (steady)", s["client_ms"])
    print(f"  {'first scrape (nothing cached)':<34} server {s['first_server_ms']:.1f} ms, client "
          f"{s['first_client_ms']:.1f} ms")
    print(f"  {'after a restart (engine re-render)':<34} server {s['after_change_server_ms']:.1f} ms, client "
          f"{s['after_change_client_ms']:.1f} ms")
    print(f"  machine load average during the scrapes: {' '.join(f'{x:.2f}' for x in s['load_average'])} "
          f"({os.cpu_count()} cores); {s['processes_on_host']} processes on the host (a scrape reads each one's "
          "/proc/PID/stat once)")
    print(f"  target: < {TARGET_SCRAPE_MS:g} ms server side at 1000 processes; median "
          f"{statistics.median(s['server_ms']):.1f} ms")
    return {"idle": idle, "scrape": scrapes}


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_metrics", "Benchmark procguard's Prometheus endpoint against a real daemon.",
                      "100 programs, short windows (< ~30 s)", run, argv)


if __name__ == "__main__":
    sys.exit(main())
