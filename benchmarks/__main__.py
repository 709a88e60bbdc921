"""procguard side by side with supervisord and circus: one run, the same workloads, interleaved (issue #9).

    .venv/bin/python -m benchmarks --quick | --full | --smoke [--only NAME ...] [--json OUT] [--markdown OUT]
    .venv/bin/python -m benchmarks model --examples N | soak --minutes N     (issue #20: benchmarks/proof.py)

Workloads (suite/__init__.py says how each is measured; harness/peers.py lists the equivalent configs,
RESULTS.md every choice that could favour a side): respawn, status, startup, idle, shutdown, output, restart.
`--quick` (small sizes, one round where the full run does several; about a minute on 2 cores) gives a
first look; `--full` produces the figures of benchmarks/RESULTS.md (several minutes); `--smoke` is what
the test suite runs: every workload on every system at the smallest sizes (figures too small to compare,
the same checks: nothing lost, nothing left behind, every row measured). Peers that are not
installed (`pip install -e '.[bench]'`) show as n/a.

Every figure prints min / median / max per system and the ratio procguard / peer of the medians (for
times, below 1 means procguard is ahead; for throughput, above 1). Nothing here asserts speed. The exit
status is 0 unless a workload could not complete on some system, procguard lost captured bytes, or
children outlived a procguard daemon's shutdown (1), or the run was interrupted (130). Lost bytes and
survivors of the peers are reported too; they do not change the exit status.

Cleanup is the harness's Bench (harness/run.py); then any process still naming the temp directory in
its argv is reported and killed.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.harness.peers import SYSTEMS, peer_missing, version_of
from benchmarks.harness.procs import kill_all, naming
from benchmarks.harness.run import REPO, Bench, Interrupted, installed_bytecode, machine, sigterm_unwinds
from benchmarks.harness.stats import median as med
from benchmarks.suite import MODES, PHASES, WORKLOAD_PHASES, Ctx, Figure, Results

PEERS = [s for s in SYSTEMS if s != "procguard"]


def git_head() -> str:
    """The checkout's commit, `+modified` if tracked files differ from it ("" if git cannot tell)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head + ("+modified" if dirty else "")


def versions() -> dict[str, str]:
    out = {s: version_of(s) for s in SYSTEMS}
    if head := git_head():
        out["procguard"] += f" (git {head})"
    for pkg in ("gunicorn", "pyzmq", "tornado"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["python"] = platform.python_version()
    return out


# -------------------------------------------------------------------------------------------- print


def ratio(fig: Figure, peer: str) -> float | None:
    """procguard's median / the peer's; None if either is missing or the peer's is 0 (and procguard's not)."""
    a, b = med(fig.values.get("procguard", [])), med(fig.values.get(peer, []))
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return a / b


def verdict(fig: Figure, peer: str) -> str:
    a, b = med(fig.values.get("procguard", [])), med(fig.values.get(peer, []))
    if a is None or b is None:
        return ""
    if a == b:
        return "same"
    ahead = a > b if fig.higher_is_better else a < b
    return "ahead" if ahead else "BEHIND"


def num(x: float | None, width: int = 9) -> str:
    if x is None:
        return f"{'-':>{width}}"
    if x == 0:
        return f"{'0':>{width}}"
    mag = abs(x)
    digits = 0 if mag >= 1000 else 1 if mag >= 100 else 2 if mag >= 1 else 3 if mag >= 0.01 else 4
    return f"{x:>{width}.{digits}f}"


def print_figure(fig: Figure) -> None:
    better = "higher" if fig.higher_is_better else "lower"
    print(f"{fig.label} ({fig.unit + ', ' if fig.unit else ''}{better} is better)")
    for s in SYSTEMS:
        vals = fig.values.get(s)
        if not vals:
            print(f"  {s:<12} n/a: {fig.na.get(s, 'not measured')}")
            continue
        row = (f"  {s:<12} min {num(min(vals))}  median {num(statistics.median(vals))}  max {num(max(vals))}"
               f"  (n={len(vals)})")
        if s != "procguard":
            r = ratio(fig, s)
            if r is not None:
                row += f"   procguard/{s} {r:.3g} ({verdict(fig, s)})"
        print(row)


def print_summary(res: Results) -> None:
    print("summary: medians; ratio = procguard / peer (times: < 1 is ahead; throughput: > 1 is ahead)")
    head = f"  {'figure':<62} {'unit':<11} {'procguard':>9} {'supervisord':>11} {'ratio':>7} {'circus':>9} {'ratio':>7}"
    print(head)
    for fig in res.ordered():
        if not fig.headline:
            continue
        cells = []
        for peer in PEERS:
            r = ratio(fig, peer)
            cells.append((num(med(fig.values.get(peer, [])), 11 if peer == "supervisord" else 9),
                          f"{r:7.3g}" if r is not None else f"{'n/a' if peer in fig.na else '-':>7}"))
        print(f"  {fig.label:<62} {fig.unit:<11} {num(med(fig.values.get('procguard', [])))} "
              f"{cells[0][0]} {cells[0][1]} {cells[1][0]} {cells[1][1]}")


def markdown(res: Results) -> str:
    """Every figure as one Markdown table row: medians (min-max), ratios, verdicts (for RESULTS.md)."""
    def cell(fig: Figure, s: str) -> str:
        v = fig.values.get(s)
        if not v:
            return "n/a"
        return f"{num(statistics.median(v), 0)} ({num(min(v), 0)}-{num(max(v), 0)}, n={len(v)})"

    def rcell(fig: Figure, peer: str) -> str:
        r = ratio(fig, peer)
        return f"{r:.3g} {verdict(fig, peer)}" if r is not None else "-"

    lines = ["| figure | unit | procguard | supervisord | procguard / supervisord | circus | procguard / circus |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for fig in res.ordered():
        better = "higher" if fig.higher_is_better else "lower"
        lines.append(f"| {fig.label} | {fig.unit} ({better} better) | {cell(fig, 'procguard')} | "
                     f"{cell(fig, 'supervisord')} | {rcell(fig, 'supervisord')} | {cell(fig, 'circus')} | "
                     f"{rcell(fig, 'circus')} |")
    return "\n".join(lines) + "\n"


def figures_json(res: Results) -> dict[str, Any]:
    out = {}
    for fig in res.ordered():
        out[fig.key] = {
            "workload": fig.workload, "label": fig.label, "unit": fig.unit, "higher_is_better": fig.higher_is_better,
            "headline": fig.headline, "values": fig.values,
            "summary": {s: {"n": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
                        for s, v in fig.values.items() if v},
            "ratio": {p: ratio(fig, p) for p in PEERS},
            "verdict": {p: verdict(fig, p) for p in PEERS},
            "na": {s: why for s, why in fig.na.items() if not fig.values.get(s)},
        }
    return out


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="small sizes, mostly one round (CI; under a minute on 2 cores)")
    mode.add_argument("--full", action="store_true", help="the sizes and rounds of RESULTS.md (several minutes)")
    mode.add_argument("--smoke", action="store_true",
                      help="the smallest sizes that still run every workload on every system (the test suite's)")
    ap.add_argument("--only", action="append", choices=sorted(WORKLOAD_PHASES), metavar="NAME",
                    help=f"run only these workloads (repeatable): {', '.join(WORKLOAD_PHASES)}")
    ap.add_argument("--json", metavar="OUT", help="also write every sample and summary as JSON to OUT")
    ap.add_argument("--markdown", metavar="OUT", help="also write the figures as a Markdown table (RESULTS.md)")
    return ap.parse_args(argv)


def run_phases(ctx: Ctx, phases: list[str]) -> tuple[bool, list[int], list[int]]:
    """Every phase, then the cleanup: (interrupted, children the cleanup killed, processes naming the temp
    dir that outlived it, killed)."""
    interrupted = False
    try:
        with sigterm_unwinds():
            for ph in phases:
                t_ph = time.monotonic()
                print(f"== {ph} (load {os.getloadavg()[0]:.2f})", flush=True)
                PHASES[ph](ctx)
                print(f"== {ph} done in {time.monotonic() - t_ph:.1f} s\n", flush=True)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        print("\nbenchmarks: interrupted; cleaning up", file=sys.stderr)
    finally:
        killed = ctx.bench.close_uninterrupted()
        leaked = kill_all(naming(str(ctx.bench.root), ctx.bench.started_wall))
    if killed:
        print(f"benchmarks: cleanup killed leftover children: {killed}", file=sys.stderr)
    if leaked:
        ctx.res.fail("cleanup", "all", f"processes naming the temp dir outlived cleanup (killed): {leaked}")
    return interrupted, killed, leaked


def report(res: Results, procguard_version: str) -> int:
    """Print every figure and the summary; the exit status (0, or 1: a workload failed, procguard lost
    bytes or left survivors)."""
    head_at_end = git_head()
    if procguard_version.endswith(")") and head_at_end and head_at_end not in procguard_version:
        # Every daemon imports procguard from the checkout when it starts: a commit during the run means
        # the figures mix two versions.
        res.notes.append(f"the checkout changed during the run: {procguard_version} at the start, "
                         f"git {head_at_end} at the end")
    for fig in res.ordered():
        print_figure(fig)
    print()
    print_summary(res)
    pg_lost = res.lost_bytes.get("procguard", 0)
    pg_surv = res.survivors.get("procguard", 0)
    print(f"\nlost bytes: {res.lost_bytes or 'none measured'}; survivors: {res.survivors or 'none measured'}")
    for note in res.notes:
        print(f"note: {note}")
    status = 0
    if res.failures:
        status = 1
        print(f"FAILED to complete: {len(res.failures)}:")
        for f in res.failures:
            print(f"  {f['workload']} on {f['system']}: {f['error'].splitlines()[0][:300]}")
    if pg_lost or pg_surv:
        status = 1
        print(f"FAILED: procguard lost {pg_lost} bytes and left {pg_surv} survivors")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("model", "soak"):  # issue #20's long runs: benchmarks/proof.py
        from benchmarks.proof import main as proof_main
        return proof_main(argv)
    args = parse_args(argv)
    mode_name = next(m for m in MODES if getattr(args, m))
    params = MODES[mode_name]
    installed_bytecode()
    wanted = args.only or list(WORKLOAD_PHASES)
    phases = [ph for ph in PHASES if any(ph in WORKLOAD_PHASES[w] for w in wanted)]
    missing = {s: why for s in SYSTEMS if (why := peer_missing(s))}
    res = Results(systems=[s for s in SYSTEMS if s not in missing], missing=missing)
    ctx = Ctx(bench=Bench(), params=params, res=res, mode=mode_name)
    t0 = time.monotonic()
    info: dict[str, Any] = {
        "mode": mode_name, "date": date.today().isoformat(), "machine": machine(),
        "versions": versions(), "params": params.__dict__, "phases": phases,
        "load_avg_at_start": os.getloadavg(),
    }
    print(f"procguard vs supervisord vs circus ({info['mode']}): {info['machine']['cpus']} CPUs "
          f"({info['machine']['cpu_model']}), kernel {info['machine']['kernel']}, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    for s, why in missing.items():
        print(f"{s}: n/a ({why})")
    print(f"phases: {', '.join(phases)}; temp dir {ctx.bench.root}\n", flush=True)
    interrupted, killed, leaked = run_phases(ctx, phases)
    status = report(res, info["versions"]["procguard"])
    if interrupted:
        status = 130
    elapsed = time.monotonic() - t0
    print(f"\nelapsed {elapsed:.1f} s; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; exit {status}")
    if args.json:
        doc = {**info, "figures": figures_json(res), "lost_bytes": {s: res.lost_bytes.get(s, 0) for s in res.systems},
               "survivors": {s: res.survivors.get(s, 0) for s in res.systems}, "failures": res.failures,
               "notes": res.notes, "raw": res.raw, "cleanup_killed": killed, "leaked": leaked,
               "load_avg_at_end": os.getloadavg(), "elapsed_s": elapsed, "exit_status": status}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(res))
        print(f"Markdown table written to {args.markdown}")
    return status


if __name__ == "__main__":
    sys.exit(main())
