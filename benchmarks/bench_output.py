"""Output-capture benchmark: one child writes 1 GiB to stdout; procguard and supervisord capture it to a file.

    .venv/bin/python benchmarks/bench_output.py [--quick] [--json OUT]
    (also `python -m benchmarks --only output`, which runs it beside the other workloads)

Issue #4: throughput (MiB/s) and daemon CPU seconds per GiB for one child writing 1 GiB (--quick:
200 MiB), captured by (a) procguard, (b) procguard with `stdout_logfile_timestamps`, (c) supervisord,
(d) no daemon (the child's stdout opened on the file: the ceiling), (e) circus if installed. Prints
min / median / max and procguard / supervisord ratios; never asserts speed. Exits non-zero only when
the harness fails (a daemon or command fails, a capture stops growing); lost bytes are printed.
The pieces live in benchmarks/output/ (stream: the child and the check; sides; run: one timed run).

Invariants of every run: the same child and argv on every side, started through the daemon's own
control command, blocked on a FIFO until this script has taken the daemon's CPU times, so neither
interpreter start-up nor the command is inside a figure. Throughput ends when the file reaches its
full size; daemon CPU is psutil user + system of the daemon alone (schedstat as a cross-check).
After the child exits the file is compared line by line with the stream it wrote. Daemons start once,
idle, before round 1; rounds are interleaved a, b, c, d, ...; unless --no-prefault it touches 1.5x the
file's size of memory before each run (RESULTS.md, "Prefault"). Config choices per side are in
harness/peers.py and RESULTS.md; cleanup (SIGTERM, SIGKILL, survivors counted) is the harness's Bench.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.peers import CIRCUSD, peer_missing, version_of  # noqa: E402
from benchmarks.harness.procs import naming  # noqa: E402
from benchmarks.harness.run import CHILD_PYTHON, Bench, bench_main, machine  # noqa: E402
from benchmarks.harness.stats import fmt_row, median  # noqa: E402
from benchmarks.output.run import GIB, MIB, one_run  # noqa: E402
from benchmarks.output.sides import DaemonSide, Side, prepare_sides  # noqa: E402
from benchmarks.output.stream import n_lines  # noqa: E402

TARGETS = {"throughput_ratio_min": 1.5, "cpu_per_gib_ratio_max": 0.5}


# -------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    keys = "abcde" if os.path.exists(CIRCUSD) else "abcd"
    return run_sides(bench, 200 * MIB if args.quick else GIB, 2 if args.quick else 3, keys,
                     prefault_on=not args.no_prefault, mode="quick" if args.quick else "full")


def run_sides(bench: Bench, n: int, rounds: int, keys: str, prefault_on: bool = True,
              mode: str = "full") -> dict[str, Any]:
    """`rounds` interleaved rounds of n bytes on the sides named by `keys` (SIDES); prints and returns figures.

    Also the entry point of `python -m benchmarks` (its "output" workload).
    """
    sides = prepare_sides(bench, n, keys)
    sup_version = version_of("supervisord")
    results: dict[str, Any] = {
        "mode": mode, "bytes_per_run": n, "rounds": rounds,
        "machine": machine() | {"supervisord": sup_version, "fs": fs_type(bench.root), "vm_dirty": vm_dirty(),
                                "prefault": prefault_on},
        "targets": TARGETS, "runs": {s.key: [] for s in sides},
    }
    print(f"procguard output benchmark ({results['mode']}): {n / MIB:.0f} MiB per run, {rounds} rounds "
          f"interleaved {','.join(s.key for s in sides)}; {os.cpu_count()} CPUs, Python "
          f"{results['machine']['python']}, kernel {results['machine']['kernel']}, supervisord {sup_version}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"child: {CHILD_PYTHON} -S child.py (64 KiB writes, 100-byte lines); temp dir {bench.root} "
          f"({results['machine']['fs']}); prefault {'on' if prefault_on else 'off'}\n")
    for r in range(1, rounds + 1):
        for side in sides:
            res = one_run(bench, side, n, r, do_prefault=prefault_on)
            results["runs"][side.key].append(res)
            mibs = f"{res['mib_per_s']:8.1f} MiB/s" if res["mib_per_s"] else "  incomplete"
            cpu = (f"{res['daemon_cpu_s_per_gib']:6.2f} CPU s/GiB (user {res['daemon_user_s']:.2f} s, "
                   f"sys {res['daemon_system_s']:.2f} s)" if res["daemon_cpu_s_per_gib"] is not None else "")
            print(f"  round {r} ({side.key}) {side.label:<28} {mibs}  {cpu}  lost {res['bytes_lost']} B"
                  f"{'' if res['content_ok'] else '  CONTENT DIFFERS at ' + str(res['first_mismatch_at'])}")
    print()
    for side in sides:
        results.setdefault("daemon_warnings", {})[side.key] = print_side(side, results["runs"][side.key], n)
    print_summary(results, sides)
    return results


def print_side(side: Side, runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The side's rows; returns procguard's log events above info (log_write_failed and the like)."""
    print(f"({side.key}) {side.label}:")
    tp = [x["mib_per_s"] for x in runs if x["mib_per_s"] is not None]
    if tp:
        print(fmt_row("throughput, child's first write -> file full", tp, "MiB/s", digits=1))
    if side.daemon_pid() is not None:
        print(fmt_row("daemon CPU (user+system) per GiB", [x["daemon_cpu_s_per_gib"] for x in runs], "s"))
        print(fmt_row("  of which system", [x["daemon_system_s"] * GIB / n for x in runs], "s"))
        print(fmt_row("  cross-check: schedstat (ns resolution)", [x["daemon_schedstat_s_per_gib"] for x in runs],
                      "s"))
        print(fmt_row("daemon RSS when the file was full", [x["daemon_rss_mib"] for x in runs], "MiB", digits=1))
    print(fmt_row("child's own write rate (into its stdout)", [x["child_write_mib_per_s"] for x in runs],
                  "MiB/s", digits=1))
    lag = [x["full_after_child_done_ms"] for x in runs if x["full_after_child_done_ms"] is not None]
    if lag:
        print(fmt_row("file full after the child's last write", lag, "ms", digits=1))
    lost = [x["bytes_lost"] for x in runs]
    extra = sum(x["bytes_extra"] for x in runs)
    bad = [x for x in runs if not x["content_ok"]]
    print(f"  {'bytes lost (all runs)':<46} {sum(lost)}  (per run {lost}); extra {extra}; content "
          f"{'identical in every run' if not bad else 'DIFFERS in rounds ' + str([x['round'] for x in bad])}")
    if side.stamped:
        print(f"  {'lines stamped / expected, bad prefixes':<46} "
              f"{[x['lines'] for x in runs]} / {n_lines(n)}, {sum(x['lines_bad_prefix'] for x in runs)}")
    complaints: list[dict[str, Any]] = []
    if isinstance(side, DaemonSide) and side.kind == "procguard":
        side.system.daemon.poll_log()
        complaints = [e for e in side.system.daemon.tail.events if e.get("level") not in ("info", "debug")]
        print(f"  {'procguard log events above info':<46} {len(complaints)}"
              f"{': ' + ', '.join(sorted({str(e.get('event')) for e in complaints})) if complaints else ''}")
    held = [x["round"] for x in runs if x["daemon_holds_file_after_exit"]]
    if held and side.daemon_pid() is not None:
        when = "after the child's exit" if side.keeps_file_open else "2 s after exit"
        print(f"  {'daemon still had the file open ' + when:<46} rounds {held}")
    print()
    return complaints


def vm_dirty() -> dict[str, int]:
    out = {}
    for name in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes",
                 "dirty_expire_centisecs"):
        try:
            out[name] = int(Path(f"/proc/sys/vm/{name}").read_text())
        except (OSError, ValueError):
            pass
    return out


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    for p in psutil.disk_partitions(all=True):
        if str(path).startswith(p.mountpoint) and len(p.mountpoint) > len(best):
            best, kind = p.mountpoint, p.fstype
    return f"{kind} on {best}"


def print_summary(res: dict[str, Any], sides: list[Side]) -> None:
    runs = res["runs"]

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        return median([r[key] for r in runs if r.get(key) is not None])

    sup_tp, sup_cpu = med(runs.get("c", []), "mib_per_s"), med(runs.get("c", []), "daemon_cpu_s_per_gib")
    res["ratios"] = {}
    print("summary, medians (figures only; nothing here fails the run):")
    print(f"  {'side':<30} {'MiB/s':>8} {'CPU s/GiB':>10}  {'tp / sup':>8} {'aim':>6}  {'CPU / sup':>9} {'aim':>6}"
          f"  lost B")
    for side in sides:
        tp, cpu = med(runs[side.key], "mib_per_s"), med(runs[side.key], "daemon_cpu_s_per_gib")
        lost = sum(x["bytes_lost"] for x in runs[side.key])
        tp_s = f"{tp:8.1f}" if tp is not None else f"{'-':>8}"
        cpu_s_ = f"{cpu:10.3f}" if cpu is not None else f"{'-':>10}"
        ratio_tp = tp / sup_tp if tp is not None and sup_tp else None
        ratio_cpu = cpu / sup_cpu if cpu is not None and sup_cpu else None
        aim_tp = aim_cpu = ""
        if side.key in ("a", "b"):
            res["ratios"][side.key] = {"throughput": ratio_tp, "cpu_per_gib": ratio_cpu}
            if ratio_tp is not None:
                aim_tp = "meets" if ratio_tp >= TARGETS["throughput_ratio_min"] else "MISSES"
            if ratio_cpu is not None:
                aim_cpu = "meets" if ratio_cpu <= TARGETS["cpu_per_gib_ratio_max"] else "MISSES"
        rt = f"{ratio_tp:8.2f}" if ratio_tp is not None else f"{'-':>8}"
        rc = f"{ratio_cpu:9.2f}" if ratio_cpu is not None else f"{'-':>9}"
        print(f"  ({side.key}) {side.label:<26} {tp_s} {cpu_s_}  {rt} {aim_tp:>6}  {rc} {aim_cpu:>6}  {lost}")
    print(f"  aims (issue #4): throughput >= {TARGETS['throughput_ratio_min']:g}x supervisord's, "
          f"CPU per GiB <= {TARGETS['cpu_per_gib_ratio_max']:g}x supervisord's; 0 bytes lost")


def main(argv: list[str] | None = None) -> int:
    missing = peer_missing("supervisord")
    if missing is not None:
        print(f"bench_output: {missing}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--no-prefault", action="store_true",
                    help="do not touch and free memory before each run (see the docstring: noisy in some VMs)")

    def check_survivors(bench: Bench, results: dict[str, Any]) -> None:
        results["children_surviving"] = left = [p.pid for p in naming(str(bench.root / "child.py"), bench.started_wall)]
        print(f"children surviving cleanup: {len(left)}" + (f": {left}" if left else ""))

    return bench_main("bench_output", "Benchmark procguard's output capture against supervisord's.",
                      "200 MiB per run, 2 rounds instead of 1 GiB, 3 rounds", run, argv, ap, check_survivors)


if __name__ == "__main__":
    sys.exit(main())
