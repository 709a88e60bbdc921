"""The cost of the event stream and of alerts (issue #18): idle daemon with and without alerts, publish cost.

    .venv/bin/python benchmarks/bench_alerts.py [--quick] [--json OUT]

1. Idle: a real `python -m procguard` with 20 programs (`sleep 100000`, RUNNING), once without alerts
   and once with two (an https webhook and a STARTTLS email to hosts that are never contacted, since
   nothing happens). After a 2 s settle, over a window (30 s, --quick 5 s): the daemon's CPU from
   /proc/PID/task/*/schedstat (ns), its context switches, RSS, threads. "With alerts, nothing
   happening, no periodic work" shows as the same CPU, the same context switches and no extra thread.
2. Publish cost, in this process: the log configured as the daemon does (JSON to /dev/null), with
   the event bus and without; the time per `log.info("process_state_changed", ...)` (published) and
   per a debug event below the level (not rendered), best of 5 runs of 20000 calls.

Prints figures; asserts nothing about speed. Cleanup: each daemon gets SIGTERM (SIGKILL after 60 s)
and the temp directory is removed (the harness's Bench).
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.peers import procguard_programs, sleep_programs  # noqa: E402
from benchmarks.harness.procs import idle_cost  # noqa: E402
from benchmarks.harness.run import Bench, bench_main  # noqa: E402

PROGRAMS = 20
ALERTS = """
[alert.slack]
type = "webhook"
url = "https://hooks.example.invalid/services/T0/B0/x"

[alert.ops]
type = "email"
smtp = "smtp.example.invalid:587"
security = "starttls"
to = ["ops@example.invalid"]
"""


def run_idle(bench: Bench, name: str, with_alerts: bool, window_s: float) -> dict[str, Any]:
    d = bench.daemon(name, procguard_programs(sleep_programs(PROGRAMS)) + (ALERTS if with_alerts else ""))
    d.start()
    d.wait_event("daemon_ready", timeout_s=60)
    out = idle_cost(d.pid, window_s)
    out["ssl_loaded"] = "libssl" in " ".join(m.path for m in psutil.Process(d.pid).memory_maps())
    d.kill()
    return out


def publish_cost() -> dict[str, float]:
    from procguard.observe.events import EventBus
    from procguard.log import configure_logging, get_logger, reset_logging

    devnull = open(os.devnull, "w")
    real_stderr = sys.stderr
    out: dict[str, float] = {}
    try:
        sys.stderr = devnull
        for label, bus in (("without bus", None), ("with bus", EventBus())):
            configure_logging("info", "json", bus=bus)
            log = get_logger()
            calls: tuple[tuple[str, Callable[[], object]], ...] = (
                ("stable event", lambda: log.info("process_state_changed", program="web", process="web", pid=1,
                                                  old="RUNNING", new="EXITED", exit_status=1, expected=False)),
                ("debug, below level", lambda: log.debug("health_check_failed", process="web", reason="x")),
            )
            for what, call in calls:
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(20000):
                        call()
                    best = min(best, (time.perf_counter() - t0) / 20000)
                out[f"{what}, {label}"] = best * 1e6
    finally:
        sys.stderr = real_stderr
        devnull.close()
        reset_logging()
    return out


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    window = 5.0 if args.quick else 30.0
    out: dict[str, Any] = {"idle": []}
    print(f"idle daemon, {PROGRAMS} programs RUNNING, {window:g} s window after 2 s settle:")
    print(f"  {'':<16} {'CPU % core':>10} {'ctx sw':>7} {'RSS MiB':>8} {'USS MiB':>8} {'threads':>8} ssl")
    for i, with_alerts in enumerate((False, True, False, True)):
        r = run_idle(bench, f"run{i}", with_alerts, window)
        out["idle"].append(r | {"alerts": with_alerts})
        label = "with 2 alerts" if with_alerts else "no alerts"
        print(f"  {label:<16} {r['cpu_pct_schedstat']:>10.4f} {r['ctx_switches']:>7} {r['rss_mib']:>8.1f} "
              f"{r['uss_mib']:>8.1f} {r['threads']:>8} {'loaded' if r['ssl_loaded'] else 'no'}")
    print("log call cost (us per call, best of 5 x 20000):")
    out["publish_us"] = publish_cost()
    for k, v in out["publish_us"].items():
        print(f"  {k:<34} {v:8.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_alerts", "Benchmark the event stream and alerts against a real daemon.",
                      "5 s windows instead of 30 s", run, argv)


if __name__ == "__main__":
    sys.exit(main())
