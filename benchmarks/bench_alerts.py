"""The cost of the event stream and of alerts (issue #18): idle daemon with and without alerts, publish cost.

    .venv/bin/python benchmarks/bench_alerts.py [--quick]

1. Idle: a real `python -m procguard` with 20 programs (`sleep 100000`, RUNNING), once without alerts
   and once with two (an https webhook and a STARTTLS email to hosts that are never contacted, since
   nothing happens). After a 2 s settle, over a window (30 s, --quick 5 s): the daemon's CPU from
   /proc/PID/task/*/schedstat (ns), its context switches, RSS, threads. "With alerts, nothing
   happening, no periodic work" shows as the same CPU, the same context switches and no extra thread.
2. Publish cost, in this process: structlog configured as the daemon does (JSON to /dev/null), with
   the event bus and without; the time per `log.info("process_state_changed", ...)` (published) and
   per a debug event below the level (not rendered), best of 5 runs of 20000 calls.

Prints figures; asserts nothing about speed. Cleanup: each daemon gets SIGTERM (SIGKILL after 30 s)
and the temp directory is removed.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_engine import sched_ns  # noqa: E402

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


def run_idle(work: Path, with_alerts: bool, window_s: float) -> dict[str, Any]:
    work.mkdir()
    progs = "".join(f'[program.p{i}]\ncommand = ["sleep", "100000"]\nstartsecs = 0\nstdout_logfile = "NONE"\n\n'
                    for i in range(PROGRAMS))
    config = work / "procguard.toml"
    config.write_text(f'[procguard]\nlogdir = "{work}/logs"\ncontrol = "ipc://{work}/c.sock"\n\n'
                      + progs + (ALERTS if with_alerts else ""))
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "procguard", "-c", str(config), "--log-format", "json"],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 60
        while b"daemon_ready" not in (work / "daemon.log").read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"daemon did not get ready:\n{(work / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(2.0)  # settle
        p = psutil.Process(proc.pid)
        s0, x0, t0 = sched_ns(proc.pid), p.num_ctx_switches(), time.monotonic()
        time.sleep(window_s)
        s1, x1, t1 = sched_ns(proc.pid), p.num_ctx_switches(), time.monotonic()
        mem = p.memory_full_info()
        return {
            "cpu_pct": (s1 - s0) / 1e9 / (t1 - t0) * 100,
            "ctx_switches": (x1.voluntary - x0.voluntary) + (x1.involuntary - x0.involuntary),
            "rss_mib": mem.rss / 2**20, "uss_mib": mem.uss / 2**20, "threads": p.num_threads(),
            "ssl_loaded": "libssl" in " ".join(m.path for m in p.memory_maps()),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def publish_cost() -> dict[str, float]:
    import structlog

    from procguard.observe.events import EventBus
    from procguard.log import configure_logging

    devnull = open(os.devnull, "w")
    real_stderr = sys.stderr
    out: dict[str, float] = {}
    try:
        sys.stderr = devnull
        for label, bus in (("without bus", None), ("with bus", EventBus())):
            configure_logging("info", "json", bus=bus)
            log = structlog.get_logger()
            for what, call in (
                ("stable event", lambda: log.info("process_state_changed", program="web", process="web", pid=1,
                                                  old="RUNNING", new="EXITED", exit_status=1, expected=False)),
                ("debug, below level", lambda: log.debug("health_check_failed", process="web", reason="x")),
            ):
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
        structlog.reset_defaults()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    window = 5.0 if args.quick else 30.0
    root = Path(tempfile.mkdtemp(prefix="bench-alerts-"))
    try:
        print(f"idle daemon, {PROGRAMS} programs RUNNING, {window:g} s window after 2 s settle:")
        print(f"  {'':<16} {'CPU % core':>10} {'ctx sw':>7} {'RSS MiB':>8} {'USS MiB':>8} {'threads':>8} ssl")
        for i, with_alerts in enumerate((False, True, False, True)):
            r = run_idle(root / f"run{i}", with_alerts, window)
            label = "with 2 alerts" if with_alerts else "no alerts"
            print(f"  {label:<16} {r['cpu_pct']:>10.4f} {r['ctx_switches']:>7} {r['rss_mib']:>8.1f} "
                  f"{r['uss_mib']:>8.1f} {r['threads']:>8} {'loaded' if r['ssl_loaded'] else 'no'}")
        print("log call cost (us per call, best of 5 x 20000):")
        for k, v in publish_cost().items():
            print(f"  {k:<34} {v:8.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
