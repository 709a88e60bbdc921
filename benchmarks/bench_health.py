"""Health-check benchmarks against a real daemon: the checker's CPU cost, and bad endpoint -> restart.

    .venv/bin/python benchmarks/bench_health.py [--quick] [--json OUT]

Issue #5: (1) the daemon's CPU for checking 100 programs every 5 s over HTTP (aim: under 1 % of a
core); (2) bad endpoint -> restart (aim: within about interval x retries). The servers are
tests/programs/healthserver.py: /health/ answers 200 while DIR/health says "ok", 503 while "bad", and
each answer appends "NAME PID health ok|bad" to DIR/events.log. Prints min / median / max beside the
aims; never asserts speed; exits non-zero only when the harness fails.

1. Checker CPU: two daemons in turn with the same 100 servers, without and with
   `healthcheck = {type = "http", interval = "5s", timeout = "2s", retries = 3}`. Once all are RUNNING
   (and healthy), SETTLE_S, then a window (60 s; --quick 15 s) in 5 s slices of the daemon's own pid:
   psutil user + system and the sum of its threads' schedstat (ns; a thread lost inside the window is
   printed). The checks' cost is with minus without, also per check; checks performed are the servers'
   "health" lines in the window (counted after it, so nothing is parsed while measuring). Nothing
   talks to the daemon during a window. Runs after section 2, so that one is quiet.
2. Bad endpoint -> restart: two settings (interval 1s x 3 retries, 500ms x 2), ROUNDS rounds each. A
   round waits for a "health ok" line, then (i + 0.5) / rounds of the interval (rounds spread over the
   check cycle's phase), flips DIR/health to "bad" atomically, and times the daemon's STOPPING line
   (reason "restarting: unhealthy") both when the POLL_S poll sees it and by the line's own timestamp;
   also flip -> first bad check, first bad check -> STOPPING, bad checks answered, STOPPING -> RUNNING
   and healthy. Expected: (retries - 1) x interval .. retries x interval, plus the checks' durations.

Cleanup: every daemon and server pid is recorded; each daemon gets SIGTERM after its section, any
surviving server is reported and killed; in `finally` the harness's Bench stops the rest and removes
the temp directory.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import Daemon, LineTail, parse_ts  # noqa: E402
from benchmarks.harness.peers import PROCGUARDCTL, Program, procguard_programs  # noqa: E402
from benchmarks.harness.procs import clean_env, ctx_switches, free_ports, raise_nofile, sched_ns, tids  # noqa: E402
from benchmarks.harness.run import CHILD_PYTHON, REPO, Bench, BenchError, bench_main, begin, poll_until  # noqa: E402
from benchmarks.harness.stats import print_targets, summary  # noqa: E402

HEALTHSERVER = str(REPO / "tests" / "programs" / "healthserver.py")
AIMS = {
    "check_cpu_pct": 1.0,  # % of one core for 100 programs checked every 5 s
}
FLEET = 100
FLEET_INTERVAL_S = 5.0
SLICE_S = 5.0
SETTLE_S = 5.0
STARTUP_DEADLINE_S = 300.0
POLL_S = 0.002
LATENCY_SETTINGS = (("hc1s", "1s", 1.0, 3), ("hc500ms", "500ms", 0.5, 2))  # name, interval, its seconds, retries


@dataclass
class App:
    """One healthserver program: where it reports, how it is checked, its current pid."""

    name: str
    work: Path
    port: int
    interval: str = ""
    interval_s: float = 0.0
    retries: int = 0
    pid: int | None = None
    argv: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ set-up


def set_health(work: Path, mode: str) -> None:
    """Atomically make DIR/health say `mode`: a server reading it mid-write would see "" (503)."""
    tmp = work / "health.tmp"
    tmp.write_text(mode)
    os.replace(tmp, work / "health")


def app_program(app: App, checks: bool, timeout: str) -> Program:
    keys: dict[str, Any] = {"start_timeout": f"{STARTUP_DEADLINE_S:g}s"}
    if checks:
        keys["healthcheck"] = {"type": "http", "url": f"http://127.0.0.1:{app.port}/health/",
                               "interval": app.interval, "timeout": timeout, "retries": app.retries}
    return Program(name=app.name, argv=tuple(app.argv), stopwaitsecs=5.0, procguard_keys=keys)


def new_daemon(bench: Bench, name: str, apps: list[App], checks: bool, timeout: str) -> Daemon:
    """A daemon (not started) with these apps; their argv become known to cleanup."""
    for app in apps:
        app.argv = [CHILD_PYTHON, "-S", HEALTHSERVER, "--dir", str(app.work), "--name", app.name,
                    "--port", str(app.port)]
        bench.known_cmdlines.append(app.argv)
        app.work.mkdir(parents=True, exist_ok=True)
        set_health(app.work, "ok")
    return bench.daemon(name, procguard_programs([app_program(a, checks, timeout) for a in apps]))


def ctl_status(d: Daemon) -> list[dict[str, Any]]:
    r = subprocess.run([PROCGUARDCTL, "-s", d.endpoint, "--json", "status"], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL, env=clean_env(), cwd="/")
    if r.returncode not in (0, 3):
        raise BenchError(f"procguardctl --json status exited {r.returncode}: {r.stderr[-2000:]}")
    text = r.stdout
    out = json.loads(text)
    if not isinstance(out, list):
        raise BenchError(f"procguardctl --json status printed {text[:500]!r}")
    return out


# ---------------------------------------------------------------------------------------- CPU cost


def start_fleet(bench: Bench, checks: bool) -> tuple[Daemon, list[App], float]:
    """FLEET servers under one daemon, all up (and healthy with checks); returns it, them, seconds to up."""
    raise_nofile(FLEET)
    label = "checks" if checks else "baseline"
    work = bench.root / f"fleet-{label}-apps"
    apps = [App(name=f"app{i:03d}", work=work, port=port, interval=f"{FLEET_INTERVAL_S:g}s",
                interval_s=FLEET_INTERVAL_S, retries=3)
            for i, port in enumerate(free_ports(FLEET))]
    d = new_daemon(bench, f"fleet-{label}", apps, checks, timeout="2s")
    d.start()
    running: set[str] = set()
    healthy: set[str] = set()
    listening: set[str] = set()
    events = LineTail(work / "events.log")

    def all_up() -> bool:
        for e in d.poll_log():
            if e.get("event") == "process_state_changed" and e.get("new") == "RUNNING":
                running.add(e["process"])
            elif e.get("event") == "health_changed" and e.get("new") == "healthy":
                healthy.add(e["process"])
        listening.update(line.split()[0] for line in events.poll() if line.endswith(" listening"))
        return len(running) >= FLEET and len(listening) >= FLEET and (not checks or len(healthy) >= FLEET)

    try:
        poll_until(all_up, STARTUP_DEADLINE_S, f"{FLEET} servers up ({label})", interval_s=0.1)
    except BenchError as exc:
        raise BenchError(f"{exc}: {len(running)} RUNNING, {len(listening)} listening, {len(healthy)} healthy") \
            from None
    up_s = time.monotonic() - d.popen_mono
    st = ctl_status(d)
    want_health = "healthy" if checks else None
    bad = [s for s in st if s.get("state") != "RUNNING" or s.get("health") != want_health]
    if len(st) != FLEET or bad:
        raise BenchError(f"procguardctl status: {len(st)} processes, {len(bad)} not RUNNING with health "
                         f"{want_health!r}, e.g. {bad[:1]}")
    return d, apps, up_s


def measure_cpu(d: Daemon, events_log: Path, window_s: float) -> dict[str, Any]:
    """The daemon's CPU over `window_s` in SLICE_S slices, and the health requests the servers logged."""
    time.sleep(SETTLE_S)
    p = psutil.Process(d.pid)
    d.poll_log()
    log0 = d.tail.size
    tids0 = tids(d.pid)
    x0 = ctx_switches(d.pid)
    marks: list[tuple[float, float, int, int]] = []  # monotonic, psutil user+system s, schedstat ns, log offset

    def mark() -> None:
        c = p.cpu_times()
        marks.append((time.monotonic(), c.user + c.system, sched_ns(d.pid), events_log.stat().st_size))

    mark()
    t0 = marks[0][0]
    slices = max(1, round(window_s / SLICE_S))
    for i in range(1, slices + 1):
        time.sleep(max(0.0, t0 + i * SLICE_S - time.monotonic()))
        mark()
    x1 = ctx_switches(d.pid)
    tids1 = tids(d.pid)
    mem = p.memory_full_info()
    threads = p.num_threads()
    d.poll_log()
    with open(events_log, "rb") as f:
        f.seek(marks[0][3])
        data = f.read(marks[-1][3] - marks[0][3])
    # Count per slice: split the bytes read at each slice's end offset.
    checks_per_slice = []
    for a, b in zip(marks, marks[1:]):
        chunk = data[a[3] - marks[0][3]:b[3] - marks[0][3]]
        checks_per_slice.append(sum(1 for line in chunk.split(b"\n") if b" health " in line))
    bad_checks = sum(1 for line in data.split(b"\n") if line.endswith(b" health bad"))
    dt = marks[-1][0] - marks[0][0]
    slice_psutil = [(b[1] - a[1]) / (b[0] - a[0]) * 100 for a, b in zip(marks, marks[1:])]
    slice_sched = [(b[2] - a[2]) / 1e9 / (b[0] - a[0]) * 100 for a, b in zip(marks, marks[1:])]
    return {
        "window_s": dt,
        "slices": slices,
        "cpu_pct_psutil": (marks[-1][1] - marks[0][1]) / dt * 100,
        "cpu_pct_schedstat": (marks[-1][2] - marks[0][2]) / 1e9 / dt * 100,
        "cpu_s_schedstat": (marks[-1][2] - marks[0][2]) / 1e9,
        "slice_cpu_pct_psutil": slice_psutil,
        "slice_cpu_pct_schedstat": slice_sched,
        "cpu_tick_resolution_pct": 1 / os.sysconf("SC_CLK_TCK") / dt * 100,
        "ctx_switches": x1 - x0,
        "threads": threads,
        "threads_exited_in_window": sorted(tids0 - tids1),
        "threads_started_in_window": sorted(tids1 - tids0),
        "rss_mib": mem.rss / 2**20,
        "uss_mib": mem.uss / 2**20,
        "checks": sum(checks_per_slice),
        "checks_per_slice": checks_per_slice,
        "checks_per_s": sum(checks_per_slice) / dt,
        "bad_checks": bad_checks,
        "daemon_log_bytes_in_window": d.tail.size - log0,
    }


def bench_cpu(bench: Bench, window_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, checks in (("baseline", False), ("checks", True)):
        d, apps, up_s = start_fleet(bench, checks)
        try:
            m = measure_cpu(d, apps[0].work / "events.log", window_s)
        finally:
            survivors = d.kill()
        m["startup_s"] = up_s
        m["servers_surviving_daemon"] = survivors
        out[label] = m
    base, chk = out["baseline"], out["checks"]
    net_pct = chk["cpu_pct_schedstat"] - base["cpu_pct_schedstat"]
    out["net_cpu_pct_schedstat"] = net_pct
    out["net_cpu_pct_psutil"] = chk["cpu_pct_psutil"] - base["cpu_pct_psutil"]
    # Each program answers floor or ceil(window / its cycle) checks in the window, so the mean cycle is
    # about programs x window / checks: interval plus the check's duration plus loop delay (the checker
    # sleeps a full interval after each check ends).
    out["implied_mean_cycle_s"] = FLEET * chk["window_s"] / chk["checks"] if chk["checks"] else None
    # Per check: the extra CPU seconds of the checks' window over the checks the servers answered.
    out["net_cpu_us_per_check"] = (net_pct / 100 * chk["window_s"] / chk["checks"] * 1e6) if chk["checks"] else None
    return out


def pct_row(label: str, m: dict[str, Any], key: str) -> str:
    s = summary(m[f"slice_{key}"])
    return (f"  {label:<44} {m[key]:>7.3f} %  slices of {SLICE_S:g} s: min {s['min']:.3f}  median "
            f"{s['median']:.3f}  max {s['max']:.3f} %  (n={s['n']})")


def print_cpu(r: dict[str, Any]) -> None:
    print(f"checker CPU: {FLEET} healthserver programs, daemon pid only; baseline without checks, then http "
          f"checks every {FLEET_INTERVAL_S:g} s:")
    for label in ("baseline", "checks"):
        m = r[label]
        print(f" {label}: up {m['startup_s']:.1f} s after Popen; window {m['window_s']:.1f} s after {SETTLE_S:g} s "
              f"settle")
        print(pct_row("daemon CPU, schedstat (ns)", m, "cpu_pct_schedstat"))
        print(pct_row("daemon CPU, psutil user+system", m, "cpu_pct_psutil")
              + f"  (resolution {m['cpu_tick_resolution_pct']:.3f} %)")
        cs = summary([float(c) for c in m["checks_per_slice"]])
        print(f"  {'health requests answered (servers log)':<44} {m['checks']} = {m['checks_per_s']:.2f}/s  "
              f"per slice min {cs['min']:.0f}  median {cs['median']:.0f}  max {cs['max']:.0f}"
              + (f"  ({m['bad_checks']} bad)" if m["bad_checks"] else ""))
        print(f"  {'ctx switches (all threads); threads; RSS/USS':<44} {m['ctx_switches']}; {m['threads']}; "
              f"{m['rss_mib']:.1f} / {m['uss_mib']:.1f} MiB; daemon log +{m['daemon_log_bytes_in_window']} bytes")
        if m["threads_exited_in_window"]:
            print(f"  note: {len(m['threads_exited_in_window'])} thread(s) exited in the window: their schedstat "
                  f"time is missing (psutil's row includes it)")
        if m["servers_surviving_daemon"]:
            print(f"  servers surviving the daemon (killed): {m['servers_surviving_daemon']}")
    net = r["net_cpu_pct_schedstat"]
    per = r["net_cpu_us_per_check"]
    print(f"  {'checks minus baseline, schedstat':<44} {net:>7.3f} % of a core  "
          f"(psutil {r['net_cpu_pct_psutil']:.3f} %)  aim < {AIMS['check_cpu_pct']:g} %, "
          f"ratio {net / AIMS['check_cpu_pct']:.3f}")
    if per is not None:
        print(f"  {'  per check answered':<44} {per:>7.0f} us of daemon CPU")
    if r["implied_mean_cycle_s"] is not None:
        print(f"  {'  implied mean check cycle per program':<44} {r['implied_mean_cycle_s']:>7.3f} s  "
              f"({FLEET} x window / checks; interval {FLEET_INTERVAL_S:g} s)")


# ---------------------------------------------------------------------------------------- latency


def wait_running_healthy(d: Daemon, app: App, since: int, old_pid: int | None,
                         timeout_s: float) -> tuple[int, dict[str, Any]]:
    """Wait until the log, after event index `since`, shows app healthy and RUNNING with a pid other than old_pid.

    Returns that pid and its RUNNING event.
    """
    def found() -> tuple[int, dict[str, Any]] | None:
        d.poll_log()
        window = d.tail.events[since:]
        running = [e for e in window if e.get("event") == "process_state_changed" and e.get("process") == app.name
                   and e.get("new") == "RUNNING" and e.get("pid") != old_pid]
        healthy = [e for e in window if e.get("event") == "health_changed" and e.get("process") == app.name
                   and e.get("new") == "healthy"]
        if running and healthy:
            return int(running[-1]["pid"]), running[-1]
        return None

    return poll_until(found, timeout_s, f"{app.name} RUNNING and healthy", interval_s=0.01)


def latency_round(d: Daemon, app: App, events: LineTail, frac: float) -> dict[str, Any]:
    """Flip app's health to bad at `frac` of its interval after a good check; time until the restart."""
    pid = app.pid
    ok_line, bad_line = f"{app.name} {pid} health ok", f"{app.name} {pid} health bad"
    events.poll()  # drop older lines: the anchor must be a check that happens from now on
    poll_until(lambda: ok_line in events.poll(), app.interval_s * 3 + 10, f"{app.name}'s next good check",
               interval_s=POLL_S)
    t_ok = time.monotonic()
    time.sleep(max(0.0, t_ok + frac * app.interval_s - time.monotonic()))
    d.poll_log()
    since = len(d.tail.events)
    t_flip_wall = time.time()
    t_flip = time.monotonic()
    set_health(app.work, "bad")
    bad_seen: list[float] = []
    stop_ev: dict[str, Any] | None = None
    t_stop = 0.0
    deadline = t_flip + app.interval_s * app.retries * 3 + 10
    while stop_ev is None:
        lines = events.poll()
        now = time.monotonic()
        bad_seen.extend(now for line in lines if line == bad_line)
        for e in d.poll_log():
            if (e.get("event") == "process_state_changed" and e.get("process") == app.name
                    and e.get("new") == "STOPPING" and str(e.get("reason", "")).startswith("restarting: unhealthy")):
                stop_ev = e
                t_stop = time.monotonic()
        if stop_ev is None:
            if now > deadline:
                raise BenchError(f"{app.name}: no restart within {deadline - t_flip:.0f} s of its endpoint going bad")
            time.sleep(POLL_S)
    set_health(app.work, "ok")
    bad_seen.extend(time.monotonic() for line in events.poll() if line == bad_line)
    unhealthy = [e for e in d.tail.events[since:] if e.get("event") == "health_changed"
                 and e.get("process") == app.name and e.get("new") == "unhealthy"]
    t_stop_logged = parse_ts(stop_ev) - t_flip_wall
    new_pid, running = wait_running_healthy(d, app, since, pid, 60)
    app.pid = new_pid
    return {
        "phase_frac": frac,
        "flip_to_stopping_s": t_stop - t_flip,
        "flip_to_stopping_logged_s": t_stop_logged,
        "flip_to_unhealthy_logged_s": (parse_ts(unhealthy[0]) - t_flip_wall) if unhealthy else None,
        "flip_to_first_bad_check_s": (bad_seen[0] - t_flip) if bad_seen else None,
        "first_bad_check_to_stopping_s": (t_stop - bad_seen[0]) if bad_seen else None,
        "bad_checks": len(bad_seen),
        "stopping_to_running_healthy_logged_s": parse_ts(running) - parse_ts(stop_ev),
        "reason": stop_ev.get("reason"),
    }


def bench_latency(bench: Bench, rounds: int) -> dict[str, Any]:
    ports = free_ports(len(LATENCY_SETTINGS))
    apps = [App(name=name, work=bench.root / f"latency-{name}", port=port, interval=interval, interval_s=seconds,
                retries=retries)
            for (name, interval, seconds, retries), port in zip(LATENCY_SETTINGS, ports)]
    d = new_daemon(bench, "latency", apps, checks=True, timeout="1s")
    d.start()
    out: dict[str, Any] = {}
    try:
        for app in apps:
            app.pid, _ = wait_running_healthy(d, app, 0, None, STARTUP_DEADLINE_S)
        st = {s["name"]: s for s in ctl_status(d)}
        for app in apps:
            if st.get(app.name, {}).get("health") != "healthy":
                raise BenchError(f"procguardctl status: {app.name} is not healthy: {st.get(app.name)}")
        for app in apps:
            events = LineTail(app.work / "events.log")
            runs = [latency_round(d, app, events, (i + 0.5) / rounds) for i in range(rounds)]
            out[app.name] = {"interval_s": app.interval_s, "retries": app.retries,
                             "aim_s": app.interval_s * app.retries, "runs": runs}
    finally:
        survivors = d.kill()
    out["servers_surviving_daemon"] = survivors
    return out


def col(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in runs if r.get(key) is not None]


def print_latency(r: dict[str, Any]) -> None:
    for name, _, _, _ in LATENCY_SETTINGS:
        s = r[name]
        aim = s["aim_s"]
        runs = s["runs"]
        print(f"bad endpoint -> restart, interval {s['interval_s']:g} s, retries {s['retries']} "
              f"(aim: about interval x retries = {aim:g} s; expected {aim - s['interval_s']:g} .. {aim:g} s "
              f"plus check durations):")
        for key, label, with_aim in (
            ("flip_to_stopping_s", "flip -> STOPPING seen in the log (poll)", True),
            ("flip_to_stopping_logged_s", "flip -> STOPPING, the line's timestamp", True),
            ("flip_to_unhealthy_logged_s", "  flip -> health_changed unhealthy (stamp)", False),
            ("flip_to_first_bad_check_s", "  flip -> first bad check (server log)", False),
            ("first_bad_check_to_stopping_s", "  first bad check -> STOPPING seen", False),
            ("stopping_to_running_healthy_logged_s", "  STOPPING -> RUNNING and healthy (stamps)", False),
        ):
            vals = col(runs, key)
            if not vals:
                continue
            sm = summary(vals)
            row = (f"  {label:<44} min {sm['min'] * 1e3:>7.1f}  median {sm['median'] * 1e3:>7.1f}  "
                   f"max {sm['max'] * 1e3:>7.1f} ms  (n={sm['n']})")
            if with_aim:
                row += f"  median/aim {sm['median'] / aim:.2f}, max/aim {sm['max'] / aim:.2f}"
            print(row)
        bad = sorted({int(x["bad_checks"]) for x in runs})
        print(f"  {'bad checks answered before the restart':<44} {', '.join(map(str, bad))}  "
              f"(retries {s['retries']}); reason e.g. {runs[0]['reason']!r}")
    if r["servers_surviving_daemon"]:
        print(f"  servers surviving the daemon (killed): {r['servers_surviving_daemon']}")


# -------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    quick = args.quick
    window_s = 15.0 if quick else 60.0
    rounds = 2 if quick else 6
    results = begin("health-check", args, children=f"servers: {CHILD_PYTHON} -S {HEALTHSERVER}", root=bench.root,
                    aims=AIMS)

    results["latency"] = lat = bench_latency(bench, rounds)
    print_latency(lat)
    print()
    results["cpu"] = cpu = bench_cpu(bench, window_s)
    print_cpu(cpu)
    print()
    print_summary(results)
    return results


def print_summary(res: dict[str, Any]) -> None:
    cpu, lat = res["cpu"], res["latency"]
    rows: list[tuple[str, float, float | None, str]] = [
        (f"checker CPU, {FLEET} programs every {FLEET_INTERVAL_S:g} s (net)", cpu["net_cpu_pct_schedstat"],
         AIMS["check_cpu_pct"], "% of a core"),
    ]
    for name, _, _, _ in LATENCY_SETTINGS:
        s = lat[name]
        vals = col(s["runs"], "flip_to_stopping_s")
        label = f"bad -> restart, {s['interval_s']:g} s x {s['retries']}"
        rows.append((label + " (median)", summary(vals)["median"], s["aim_s"], "s"))
        rows.append((label + " (max)", max(vals), s["aim_s"], "s"))
    surv = len(cpu["baseline"]["servers_surviving_daemon"]) + len(cpu["checks"]["servers_surviving_daemon"]) \
        + len(lat["servers_surviving_daemon"])
    print_targets(rows, ("servers surviving SIGTERM (all daemons)", surv))


def main(argv: list[str] | None = None) -> int:
    return bench_main("bench_health", "Benchmark procguard's health checks against a real daemon.",
                      "15 s CPU windows and 2 restart rounds (~1 min)", run, argv)


if __name__ == "__main__":
    sys.exit(main())
