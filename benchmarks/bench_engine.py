"""Engine benchmarks against a real daemon: respawn latency, start-up, idle cost, shutdown.

    .venv/bin/python benchmarks/bench_engine.py [--quick] [--json OUT]

Prints min / median / max beside the issue's targets; never asserts speed; exits non-zero only when the
harness fails (a daemon does not start, a child never shows up).

1. Respawn: SIGKILL of a RUNNING child (startsecs = 0, backoff_reset = 0) until the replacement is (a) a
   new child of the daemon, (b) exec'd, (c) running its first instruction (it appends
   time.monotonic_ns() to a file). (c) includes interpreter start-up, so the same child started plainly
   is the baseline to subtract. (a) and (b) poll /proc every 0.5 ms (up to ~0.5 ms of error).
2. Start-up: N programs of `sleep 100000` from the daemon's Popen until the log has N RUNNING lines and
   psutil sees N exec'd `sleep` children.
3. Idle: with 100 idle children, the daemon's CPU over a window (psutil ticks and schedstat ns),
   context switches, RSS and USS.
4. Shutdown: SIGTERM with the children up; time until the daemon exited; children still alive after.

Cleanup is the harness's Bench: daemons and every child pid seen are recorded and stopped.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import Daemon, parse_ts  # noqa: E402
from benchmarks.harness.peers import Program, procguard_programs, sleep_programs  # noqa: E402
from benchmarks.harness.procs import (  # noqa: E402
    STAMP_CHILD, alive_of, child_pids, idle_cost, kill_and_respawned, raise_nofile, stamps_in, wait_exit,
)
from benchmarks.harness.run import (  # noqa: E402
    CHILD_PYTHON, SLEEP, Bench, BenchError, begin, bench_main, poll_until,
)
from benchmarks.harness.stats import fmt_row, print_targets, summary  # noqa: E402

TARGETS = {
    "respawn_median_ms": 10.0,
    "start_100_s": 0.300,
    "start_1000_s": 3.0,
    "idle_cpu_pct": 0.02,
    "idle_rss_mib": 26.0,
    "shutdown_survivors": 0,
}


# ----------------------------------------------------------------------------------------- respawn


def bench_respawn(bench: Bench, samples: int) -> dict[str, Any]:
    stamps = bench.root / "respawn-stamps"
    argv = [CHILD_PYTHON, "-S", "-c", STAMP_CHILD, str(stamps)]
    bench.known_cmdlines.append(argv)
    d = bench.daemon("respawn", procguard_programs([Program(name="respawn", argv=tuple(argv), stopwaitsecs=2.0,
                                                            procguard_keys={"backoff_reset": "0"})]))
    d.start()
    pid = d.wait_event("process_state_changed", process="respawn", new="RUNNING")["pid"]
    poll_until(lambda: len(stamps_in(stamps)) >= 1, 10, "first respawn child's stamp")

    rows: dict[str, list[float]] = {k: [] for k in (
        "kill_to_forked_ms", "kill_to_exec_ms", "kill_to_first_instruction_ms", "kill_to_running_logged_ms",
        "kill_to_exited_logged_ms", "exited_to_spawned_logged_ms")}
    for _ in range(samples):
        time.sleep(0.05)  # let the previous round's logging and Popen bookkeeping finish
        n_stamps = len(stamps_in(stamps))
        n_events = len(d.tail.events)
        t0_wall = time.time()
        t0_ns, new_pid, t_fork, t_exec = kill_and_respawned(d.pid, pid, argv)
        bench.child_pids_seen.add(new_pid)
        first = poll_until(lambda: stamps_in(stamps)[n_stamps:], 10, "replacement's stamp")[0]
        running = d.wait_event("process_state_changed", process="respawn", new="RUNNING", pid=new_pid)
        window = d.tail.events[n_events:]
        exited = next(e for e in window if e.get("event") == "process_state_changed" and e.get("new") == "EXITED")
        spawned = next(e for e in window if e.get("event") == "process_spawned" and e.get("pid") == new_pid)
        rows["kill_to_forked_ms"].append((t_fork - t0_ns) / 1e6)
        rows["kill_to_exec_ms"].append((t_exec - t0_ns) / 1e6)
        rows["kill_to_first_instruction_ms"].append((first - t0_ns) / 1e6)
        rows["kill_to_running_logged_ms"].append((parse_ts(running) - t0_wall) * 1e3)
        rows["kill_to_exited_logged_ms"].append((parse_ts(exited) - t0_wall) * 1e3)
        rows["exited_to_spawned_logged_ms"].append((parse_ts(spawned) - parse_ts(exited)) * 1e3)
        pid = new_pid

    # Baseline: the same child started plainly from this (Python) process, as the daemon's Popen does.
    base_stamps = bench.root / "baseline-stamps"
    base_argv = [CHILD_PYTHON, "-S", "-c", STAMP_CHILD, str(base_stamps)]
    bench.known_cmdlines.append(base_argv)
    baseline: list[float] = []
    for _ in range(samples):
        n = len(stamps_in(base_stamps))
        t0_ns = time.monotonic_ns()
        p = subprocess.Popen(base_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, close_fds=True, process_group=0,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        bench.plain_children.append(p)
        first = poll_until(lambda: stamps_in(base_stamps)[n:], 10, "baseline child's stamp")[0]
        baseline.append((first - t0_ns) / 1e6)
        p.kill()
        p.wait()
        time.sleep(0.02)
    rows["baseline_popen_to_first_instruction_ms"] = baseline

    d.poll_log()
    spawns = len(d.tail.find("process_spawned"))
    out: dict[str, Any] = {k: summary(v) for k, v in rows.items()}
    out["samples"] = rows
    out["log_bytes_per_respawn"] = d.tail.size / max(1, spawns)
    out["log_lines_per_respawn"] = len(d.tail.events) / max(1, spawns)
    d.kill()
    return out


def print_respawn(r: dict[str, Any]) -> None:
    s = r["samples"]
    print("respawn (SIGKILL a RUNNING child; startsecs = 0, backoff_reset = 0):")
    print(fmt_row("kill -> replacement forked (seen in /proc)", s["kill_to_forked_ms"], "ms"))
    print(fmt_row("kill -> replacement exec'd (cmdline in /proc)", s["kill_to_exec_ms"], "ms"))
    print(fmt_row("kill -> child's first instruction", s["kill_to_first_instruction_ms"], "ms"))
    print(fmt_row("baseline: plain Popen -> first instruction", s["baseline_popen_to_first_instruction_ms"], "ms"))
    net = statistics.median(s["kill_to_first_instruction_ms"]) - statistics.median(s["baseline_popen_to_first_instruction_ms"])
    print(f"  {'first instruction minus baseline (medians)':<46} {net:.2f} ms")
    print("  daemon-side, from its log timestamps:")
    print(fmt_row("  kill -> EXITED logged (reap)", s["kill_to_exited_logged_ms"], "ms"))
    print(fmt_row("  EXITED logged -> process_spawned logged", s["exited_to_spawned_logged_ms"], "ms"))
    print(fmt_row("  kill -> RUNNING logged", s["kill_to_running_logged_ms"], "ms"))
    print(f"  log volume: {r['log_lines_per_respawn']:.1f} lines, {r['log_bytes_per_respawn']:.0f} bytes per respawn\n")


# ---------------------------------------------------------------------------------- start-up etc.


def bench_startup(bench: Bench, n: int, run: int, log_level: str = "info") -> tuple[dict[str, Any], Daemon]:
    """Start a daemon with n sleep programs; time until all are RUNNING (log) and exec'd (psutil)."""
    raise_nofile(n)
    d = bench.daemon(f"start-{n}-{log_level}-{run}", procguard_programs(sleep_programs(n)), log_level)
    d.start()
    deadline = d.popen_mono + 300
    running: set[str] = set()
    t_log: float | None = None
    t_done: float | None = None
    checks = 0
    while t_done is None:
        if time.monotonic() > deadline:
            raise BenchError(f"{n} programs not all up after 300s: {len(running)} RUNNING in the log")
        if log_level == "info":
            for e in d.poll_log():
                if e.get("event") == "process_state_changed" and e.get("new") == "RUNNING":
                    running.add(e["process"])
            if len(running) >= n and t_log is None:
                t_log = time.monotonic()
            ready = t_log is not None
        else:
            # No RUNNING lines below info: count children cheaply, then confirm with psutil.
            d.poll_log()
            ready = len(child_pids(d.pid)) >= n
        if ready:
            checks += 1
            t_check = time.monotonic()
            if len(d.exec_children()) >= n:
                # Each RUNNING line follows its Popen's return, i.e. the exec: if psutil confirms at the
                # first look, all were up when the log said so.
                # Otherwise take the start of the successful scan (early by at most the scan's length).
                t_done = t_log if (checks == 1 and t_log is not None) else t_check
                break
        time.sleep(0.002)
    cpu = psutil.Process(d.pid).cpu_times()
    d.poll_log()
    started = d.tail.find("daemon_started")
    spawned = d.tail.find("process_spawned")
    out: dict[str, Any] = {
        "n": n,
        "log_level": log_level,
        "wall_s": t_done - d.popen_mono,
        "log_all_running_s": (t_log - d.popen_mono) if t_log is not None else None,
        "psutil_checks": checks,
        "daemon_cpu_s": cpu.user + cpu.system,  # its whole life so far, interpreter start-up included
        "log_bytes": d.tail.size,
        "log_lines": len(d.tail.events),
    }
    if started:
        out["popen_to_daemon_started_s"] = parse_ts(started[0]) - d.popen_wall
    if started and spawned:
        out["daemon_started_to_first_spawn_s"] = parse_ts(spawned[0]) - parse_ts(started[0])
        out["first_to_last_spawn_s"] = parse_ts(spawned[-1]) - parse_ts(spawned[0])
    return out, d


def bench_idle(d: Daemon, window_s: float) -> dict[str, Any]:
    time.sleep(2.0)  # settle
    d.poll_log()
    log0 = d.tail.size
    out = idle_cost(d.pid, window_s, settle_s=0.0)
    d.poll_log()
    return {"children": len(d.exec_children()), **out, "log_bytes_during_window": d.tail.size - log0}


def bench_shutdown(d: Daemon, timeout_s: float = 120.0) -> dict[str, Any]:
    assert d.proc is not None
    before = d.record_children()  # psutil.Process remembers create_time: no pid-reuse mistakes below
    d.stopping = True
    d.poll_log()
    n_events = len(d.tail.events)
    t0, t0_wall = time.monotonic(), time.time()
    d.proc.send_signal(signal.SIGTERM)
    code = wait_exit(d.proc, timeout_s)
    dt = time.monotonic() - t0
    survivors = [p.pid for p in alive_of(before)]
    d.poll_log()
    if code is None:
        d.kill()
    window = d.tail.events[n_events:]
    stopped = [e for e in window if e.get("event") == "process_state_changed" and e.get("new") == "STOPPED"]
    done = [e for e in window if e.get("event") == "daemon_stopped"]
    out: dict[str, Any] = {
        "children_before": len(before),
        "exit_s": dt if code is not None else None,
        "exit_code": code,
        "survivors": survivors,
        "stopped_events": len(stopped),
        "orphans_signalled_events": sum(1 for e in window if e.get("event") == "orphans_signalled"),
    }
    # Daemon-side breakdown from its log clock: when the last program was STOPPED, when it said goodbye.
    if stopped:
        out["sigterm_to_last_stopped_s"] = parse_ts(stopped[-1]) - t0_wall
    if done:
        out["sigterm_to_daemon_stopped_logged_s"] = parse_ts(done[-1]) - t0_wall
    return out


# -------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    quick = args.quick
    samples = 10 if quick else 30
    starts = {100: 3} if quick else {100: 5, 1000: 3}
    idle_window_s = 5.0 if quick else 30.0
    results = begin("engine", args, children=f"child python: {CHILD_PYTHON} -S; sleep: {SLEEP}", root=bench.root,
                    targets=TARGETS)
    results["respawn"] = bench_respawn(bench, samples)
    print_respawn(results["respawn"])

    results["startup"] = {}
    results["shutdown"] = {}
    for n, repeats in starts.items():
        runs = []
        shutdowns = []
        for i in range(repeats):
            fig, d = bench_startup(bench, n, i)
            runs.append(fig)
            if n == 100 and i == repeats - 1:
                results["idle"] = idle = bench_idle(d, idle_window_s)
            shutdowns.append(bench_shutdown(d))
        # The same start with the log at warning: how much of the start-up is the daemon's own logging.
        fig_w, d = bench_startup(bench, n, 0, log_level="warning")
        shutdowns.append(bench_shutdown(d))
        results["startup"][str(n)] = {"runs": runs, "wall_s": summary([x["wall_s"] for x in runs]),
                                      "warning_level_run": fig_w}
        results["shutdown"][str(n)] = {"runs": shutdowns}
        print_startup(n, runs, fig_w, shutdowns)
        if n == 100:
            print_idle(idle)
        print()

    print_summary(results)
    return results


def print_startup(n: int, runs: list[dict[str, Any]], fig_w: dict[str, Any], shutdowns: list[dict[str, Any]]) -> None:
    print(f"start-up, {n} programs of `sleep 100000` (startsecs = 0), Popen -> all RUNNING and exec'd:")
    print(fmt_row("wall (log shows all RUNNING, psutil agrees)", [x["wall_s"] for x in runs], "ms", 1e3, 1))
    for key, label in (("popen_to_daemon_started_s", "  Popen -> daemon_started logged"),
                       ("daemon_started_to_first_spawn_s", "  daemon_started -> first process_spawned"),
                       ("first_to_last_spawn_s", "  first -> last process_spawned")):
        vals = [x[key] for x in runs if key in x]
        if vals:
            print(fmt_row(label, vals, "ms", 1e3, 1))
    print(fmt_row("  daemon CPU (user+sys) until then", [x["daemon_cpu_s"] for x in runs], "ms", 1e3, 1))
    print(f"  {'same, --log-level warning (psutil only)':<46} {fig_w['wall_s'] * 1e3:.1f} ms  "
          f"(log {fig_w['log_bytes']} bytes vs {runs[-1]['log_bytes']} at info, "
          f"{runs[-1]['log_lines']} lines)")
    exits = [s["exit_s"] for s in shutdowns if s["exit_s"] is not None]
    surv = sum(len(s["survivors"]) for s in shutdowns)
    print(f"shutdown (SIGTERM) with {n} children, {len(shutdowns)} daemons (log-timed rows: info-level ones):")
    if exits:
        print(fmt_row("SIGTERM -> daemon exited", exits, "ms", 1e3, 1))
    for key, label in (("sigterm_to_last_stopped_s", "  SIGTERM -> last STOPPED logged"),
                       ("sigterm_to_daemon_stopped_logged_s", "  SIGTERM -> daemon_stopped logged")):
        vals = [s[key] for s in shutdowns if key in s]
        if vals:
            print(fmt_row(label, vals, "ms", 1e3, 1))
    hung = [s for s in shutdowns if s["exit_s"] is None]
    if hung:
        print(f"  {len(hung)} daemon(s) did not exit within 120 s (killed)")
    print(f"  {'children surviving the daemon':<46} {surv}  (of {sum(s['children_before'] for s in shutdowns)})")


def print_idle(idle: dict[str, Any]) -> None:
    print(f"idle, 100 idle children, {idle['window_s']:.1f} s window after 2 s settle:")
    print(f"  {'daemon CPU, psutil user+system':<46} {idle['cpu_pct_psutil']:.4f} % of a core  "
          f"(resolution {idle['cpu_tick_resolution_pct']:.4f} %)")
    print(f"  {'daemon CPU, schedstat (ns)':<46} {idle['cpu_pct_schedstat']:.4f} % of a core")
    print(f"  {'context switches in the window':<46} {idle['ctx_switches']}")
    print(f"  {'RSS / USS':<46} {idle['rss_mib']:.1f} / {idle['uss_mib']:.1f} MiB  "
          f"({idle['threads']} threads, {idle['fds']} fds)")


def print_summary(res: dict[str, Any]) -> None:
    r, idle = res["respawn"], res["idle"]
    rows: list[tuple[str, float, float | None, str]] = [
        ("median respawn, kill -> exec'd", r["kill_to_exec_ms"]["median"], TARGETS["respawn_median_ms"],
         "ms; supervisord ~1 s, circus ~1.8 s"),
        ("median respawn, kill -> first instr. - baseline",
         r["kill_to_first_instruction_ms"]["median"] - r["baseline_popen_to_first_instruction_ms"]["median"],
         TARGETS["respawn_median_ms"], "ms"),
        ("100 programs started (median)", res["startup"]["100"]["wall_s"]["median"] * 1e3,
         TARGETS["start_100_s"] * 1e3, "ms"),
    ]
    if "1000" in res["startup"]:
        rows.append(("1000 programs running (median)", res["startup"]["1000"]["wall_s"]["median"] * 1e3,
                     TARGETS["start_1000_s"] * 1e3, "ms; supervisord 24.6 s"))
    rows += [("idle CPU, 100 children (schedstat)", idle["cpu_pct_schedstat"], TARGETS["idle_cpu_pct"], "%"),
             ("idle RSS, 100 children", idle["rss_mib"], TARGETS["idle_rss_mib"], "MiB")]
    surv = sum(len(s["survivors"]) for v in res["shutdown"].values() for s in v["runs"])
    print_targets(rows, ("children surviving shutdown (all daemons)", surv))


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_engine", "Benchmark the procguard engine against a real daemon.",
                      "fewer samples, 100 programs only (< ~40 s)", run, argv)


if __name__ == "__main__":
    sys.exit(main())
