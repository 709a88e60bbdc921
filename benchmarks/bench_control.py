"""Control socket benchmarks against a real daemon: `procguardctl status` wall time, server-side latency.

    .venv/bin/python benchmarks/bench_control.py [--quick] [--json OUT]

Issue #3: `procguardctl status` under 80 ms with 50 programs, the daemon's side of `status` under 20 ms
with 1000 processes (supervisorctl takes ~1.5 s at 1000). N programs of `sleep 100000`, all RUNNING (log
and psutil agree) before anything is timed. Prints min / median / max beside the targets; never asserts
speed; exits non-zero only when the harness fails (a daemon does not start, a client errs or prints the
wrong number of processes).

1. Client start-up, no daemon: Popen -> exit of `python -c pass` and `procguardctl --version`; the import
   of `procguardctl.client` in a fresh interpreter, and one `-X importtime` run naming the costliest.
2. CLI: Popen -> exit of `procguardctl -s ENDPOINT status` (and `--json status`) at 50 and 1000
   programs; each run must exit 0 and list N processes.
3. Server side: one DEALER, warmed up, sends a pre-encoded `status` and times send -> reply frame
   (decoded after the clock stops), requests 5 ms apart; also the reply's size and the daemon's CPU per
   request. 4. At 50 programs, once each: `status -l` and a long server-side status.

Exits are seen through a pidfd: Popen.wait(timeout) polls with sleeps of up to 50 ms. Full: 20 runs of
each command, 200 requests; --quick: 5 and 30. Cleanup: each daemon gets SIGTERM after its section and
any surviving `sleep` child is reported and killed; the harness's Bench does the rest.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import Daemon  # noqa: E402
from benchmarks.harness.peers import PROCGUARDCTL as CTL, PYTHON, procguard_programs, sleep_programs  # noqa: E402
from benchmarks.harness.probes import Reply, StatusProbe, ZmqProbe  # noqa: E402
from benchmarks.harness.procs import clean_env, cli_ms, raise_nofile  # noqa: E402
from benchmarks.harness.run import Bench, BenchError, begin, bench_main  # noqa: E402
from benchmarks.harness.stats import fmt_row as stats_row, print_targets  # noqa: E402

TARGETS = {
    "cli_status_50_ms": 80.0,
    "server_status_1000_ms": 20.0,
}
SUPERVISORD_1000_MS = 1500.0  # supervisorctl status at 1000 processes, issue #3
REQUEST_GAP_S = 0.005
STARTUP_DEADLINE_S = 300.0
CLI_TIMEOUT_S = 30.0


def fmt_row(label: str, values: list[float], target: float | None = None, p90: bool = False) -> str:
    """One figure in ms: min / median (/ p90) / max, then the target and median / target if there is one."""
    row = stats_row(label, values, "ms", p90=p90, width=44)
    if target is not None:
        row += f"  target < {target:g} ms, median/target {statistics.median(values) / target:.2f}"
    return row


# ------------------------------------------------------------------------------------- the client


def time_command(argv: list[str], runs: int, out: Path, expect_lines: int | None = None) -> list[float]:
    """Wall times of `runs` runs of argv; each must exit 0 (and print expect_lines lines, if given)."""
    return [cli_ms(argv, out, expect_lines, CLI_TIMEOUT_S) for _ in range(runs)]


def time_import(runs: int) -> list[float]:
    """ms to import procguardctl.client in a fresh interpreter (after site, so start-up is excluded)."""
    code = "import time\nt=time.perf_counter()\nimport procguardctl.client\nprint(time.perf_counter()-t)"
    out = []
    for _ in range(runs):
        r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                           env=clean_env(), cwd="/")
        if r.returncode != 0:
            raise BenchError(f"import procguardctl.client failed:\n{r.stderr[-2000:]}")
        out.append(float(r.stdout.strip()) * 1e3)
    return out


IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def importtime_breakdown() -> dict[str, Any]:
    """One `-X importtime` run: total for procguardctl.client and its costliest nested imports (ms)."""
    r = subprocess.run([PYTHON, "-X", "importtime", "-c", "import procguardctl.client"], capture_output=True,
                       text=True, timeout=CLI_TIMEOUT_S, env=clean_env(), cwd="/")
    if r.returncode != 0:
        raise BenchError(f"python -X importtime failed:\n{r.stderr[-2000:]}")
    entries = []  # (depth, name, cumulative ms) in the order printed: children before their parent
    for line in r.stderr.splitlines():
        m = IMPORTTIME_LINE.match(line)
        if m:
            # One space after the bar at the top level, two more per level of nesting.
            entries.append(((len(m.group(3)) - 1) // 2, m.group(4), int(m.group(2)) / 1e3))
    # Top level (depth 0) entries printed after site's own imports: the ones this -c statement caused.
    ours = [(name, ms) for depth, name, ms in entries if depth == 0 and name.startswith("procguardctl")]
    if not ours:
        raise BenchError(f"no procguardctl line in -X importtime output:\n{r.stderr[-2000:]}")
    # Direct imports of procguardctl.client: the depth 1 entries between the top-level entry before it
    # (the procguardctl package) and its own line.
    end = next(i for i, (d, n, _) in enumerate(entries) if d == 0 and n == "procguardctl.client")
    start = max((i for i, (d, _, _) in enumerate(entries[:end]) if d == 0), default=-1)
    direct = sorted(((n, ms) for d, n, ms in entries[start + 1:end] if d == 1), key=lambda x: -x[1])
    return {"total_ms": sum(ms for _, ms in ours), "top_level": ours, "direct_imports": direct}


# -------------------------------------------------------------------------------------- the server


def check_all_running(reply: Reply, n: int) -> None:
    if reply.count != n:
        raise BenchError(f"status listed {reply.count} processes, expected {n}")
    bad = [st for st in reply.rows if st.get("state") != "RUNNING"]
    if bad:
        raise BenchError(f"{len(bad)} processes not RUNNING, e.g. {bad[0]}")


def time_server(probe: StatusProbe, daemon_pid: int, n: int, samples: int) -> dict[str, Any]:
    """`samples` status round trips, REQUEST_GAP_S apart, with the daemon's CPU time over all of them."""
    check_all_running(probe.status(), n)  # warm-up: connect and ZAP handshake happen here, outside the figures
    proc = psutil.Process(daemon_pid)
    cpu0 = proc.cpu_times()
    times = []
    size = 0
    for _ in range(samples):
        time.sleep(REQUEST_GAP_S)
        reply = probe.status()
        check_all_running(reply, n)
        times.append(reply.ms)
        size = reply.size
    cpu1 = proc.cpu_times()
    cpu_ms = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) * 1e3
    return {"round_trip_ms": times, "reply_bytes": size, "daemon_cpu_ms_per_request": cpu_ms / samples,
            "cpu_tick_ms": 1e3 / os.sysconf("SC_CLK_TCK")}


def start_daemon(bench: Bench, n: int) -> tuple[Daemon, float]:
    """A daemon with n sleep programs, all RUNNING; returns it and the seconds from its Popen until then."""
    raise_nofile(n)
    d = bench.daemon(f"control-{n}", procguard_programs(sleep_programs(n)))
    d.start()
    d.wait_event("control_listening", timeout_s=60)
    d.wait_running(n, STARTUP_DEADLINE_S)
    return d, time.monotonic() - d.popen_mono


# -------------------------------------------------------------------------------------------- main


def bench_programs(bench: Bench, n: int, cli_runs: int, samples: int) -> dict[str, Any]:
    d, up_s = start_daemon(bench, n)
    endpoint = d.endpoint
    print(f"{n} programs of `sleep 100000`: all RUNNING {up_s:.2f} s after the daemon's Popen; endpoint {endpoint}")
    out = bench.root / f"ctl-{n}.out"
    res: dict[str, Any] = {"n": n, "startup_s": up_s}
    try:
        res["cli_status_ms"] = time_command([CTL, "-s", endpoint, "status"], cli_runs, out, expect_lines=n)
        print(fmt_row("procguardctl status (Popen -> exit)", res["cli_status_ms"],
                      TARGETS["cli_status_50_ms"] if n == 50 else None))
        res["cli_status_json_ms"] = time_command([CTL, "-s", endpoint, "--json", "status"], cli_runs, out)
        if len(json.loads(out.read_text())) != n:
            raise BenchError(f"procguardctl --json status did not list {n} processes")
        print(fmt_row("procguardctl --json status", res["cli_status_json_ms"]))
        with ZmqProbe(endpoint, procguard=True) as probe:
            res["server"] = srv = time_server(probe, d.pid, n, samples)
            print(fmt_row("server side: status round trip (DEALER)", srv["round_trip_ms"],
                          TARGETS["server_status_1000_ms"] if n == 1000 else None, p90=True))
            print(f"  {'  reply size':<44} {srv['reply_bytes']} bytes ({srv['reply_bytes'] / n:.0f} per process)")
            print(f"  {'  daemon CPU per request (psutil)':<44} {srv['daemon_cpu_ms_per_request']:.2f} ms "
                  f"(clock ticks of {srv['cpu_tick_ms']:.0f} ms: resolution {srv['cpu_tick_ms'] / samples:.2f} ms)")
            if n == 50:
                # A header line, then one per process.
                dt = cli_ms([CTL, "-s", endpoint, "status", "-l"], out, n + 1, CLI_TIMEOUT_S)
                long = probe.status(long=True)
                check_all_running(long, n)
                long_ms = long.ms
                res["cli_status_long_ms"] = dt
                res["server_status_long_ms"] = long_ms
                print(f"  {'procguardctl status -l (once; 0.2 s sample)':<44} {dt:.1f} ms")
                print(f"  {'server side: status long=true (once)':<44} {long_ms:.1f} ms")
    finally:
        survivors = d.kill()
    res["children_surviving_daemon"] = survivors
    print(f"  {'sleep children surviving the daemon':<44} {len(survivors)}"
          + (f"  (killed: {survivors})" if survivors else ""))
    return res


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    quick = args.quick
    cli_runs = 5 if quick else 20
    samples = 30 if quick else 200
    base_runs = 5 if quick else 20
    results = begin("control", args, children=f"python: {PYTHON}; procguardctl: {CTL}", root=bench.root,
                    targets=TARGETS)

    out = bench.root / "baseline.out"
    print("client start-up, no daemon (Popen -> exit):")
    results["python_pass_ms"] = time_command([PYTHON, "-c", "pass"], base_runs, out)
    print(fmt_row("python -c pass", results["python_pass_ms"]))
    results["ctl_version_ms"] = time_command([CTL, "--version"], base_runs, out)
    print(fmt_row("procguardctl --version (no pyzmq)", results["ctl_version_ms"]))
    results["import_client_ms"] = time_import(base_runs)
    print(fmt_row("import procguardctl.client (perf_counter)", results["import_client_ms"]))
    results["importtime"] = it = importtime_breakdown()
    direct = ", ".join(f"{name} {ms:.1f}" for name, ms in it["direct_imports"][:4])
    print(f"  {'  -X importtime, once: total':<44} {it['total_ms']:.1f} ms; costliest direct imports (ms): {direct}")
    print()

    results["programs"] = {}
    for n in (50, 1000):
        results["programs"][str(n)] = bench_programs(bench, n, cli_runs, samples)
        print()

    print_summary(results)
    return results


def print_summary(res: dict[str, Any]) -> None:
    p50, p1000 = res["programs"]["50"], res["programs"]["1000"]
    rows: list[tuple[str, float, float | None, str]] = [
        ("procguardctl status, 50 programs", statistics.median(p50["cli_status_ms"]), TARGETS["cli_status_50_ms"],
         ""),
        ("procguardctl status, 1000 programs", statistics.median(p1000["cli_status_ms"]), None,
         f"supervisorctl ~{SUPERVISORD_1000_MS:g} ms"),
        ("server-side status, 1000 processes", statistics.median(p1000["server"]["round_trip_ms"]),
         TARGETS["server_status_1000_ms"], ""),
        ("server-side status, 50 processes", statistics.median(p50["server"]["round_trip_ms"]), None, ""),
        ("python -c pass (interpreter start-up)", statistics.median(res["python_pass_ms"]), None, ""),
        ("procguardctl --version (start-up, no pyzmq)", statistics.median(res["ctl_version_ms"]), None, ""),
    ]
    surv = len(p50["children_surviving_daemon"]) + len(p1000["children_surviving_daemon"])
    print_targets(rows, ("sleep children surviving SIGTERM (both daemons)", surv), ", medians in ms")


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_control", "Benchmark procguard's control socket against a real daemon.",
                      "5 runs and 30 requests instead of 20 and 200 (~6 s)", run, argv)


if __name__ == "__main__":
    sys.exit(main())
