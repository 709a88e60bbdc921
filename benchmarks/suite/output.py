"""Workload output: bench_output.py's capture runs on each system, as suite figures."""

from benchmarks import bench_output
from benchmarks.harness.run import BenchError
from benchmarks.suite.model import Ctx


# ----------------------------------------------------------------------------------------- output


OUTPUT_SIDES = {"a": "procguard", "c": "supervisord", "e": "circus"}


def phase_output(ctx: Ctx) -> None:
    p, res = ctx.params, ctx.res
    res.figure("output.mibs", "output", "log throughput: one child's stdout to a file", "MiB/s", higher_is_better=True)
    res.figure("output.cpu", "output", "log capture: daemon CPU per GiB", "s/GiB")
    res.figure("output.lost", "output", "log capture: bytes lost (all runs)", "bytes")
    if "b" in p.output_sides:
        res.figure("output.mibs_ts", "output", "log throughput, procguard with timestamps", "MiB/s",
                   higher_is_better=True, headline=False)
    if "d" in p.output_sides:
        res.figure("output.mibs_direct", "output", "log throughput, child writing the file itself (no daemon)",
                   "MiB/s", higher_is_better=True, headline=False)
    keys = "".join(k for k in p.output_sides if OUTPUT_SIDES.get(k, "procguard") in ctx.systems)
    try:
        out = bench_output.run_sides(ctx.bench, p.output_bytes, p.output_rounds, keys,
                                     mode=ctx.mode)
    except BenchError as exc:
        ctx.res.fail("output", "all", str(exc))
        return
    res.raw["output"] = out
    for key, runs in out["runs"].items():
        system = OUTPUT_SIDES.get(key)
        for run in runs:
            if run["mib_per_s"] is not None:
                fig = {"b": "output.mibs_ts", "d": "output.mibs_direct"}.get(key, "output.mibs")
                res.add(fig, system or "procguard", run["mib_per_s"])
            if system and run["daemon_cpu_s_per_gib"] is not None:
                res.add("output.cpu", system, run["daemon_cpu_s_per_gib"])
        lost = sum(int(r["bytes_lost"]) for r in runs) + sum(0 if r["content_ok"] else 1 for r in runs
                                                             if r["bytes_lost"] == 0)
        if system:
            res.add("output.lost", system, lost)
            res.count_lost(system, lost)
        elif key == "b":
            res.count_lost("procguard", lost)
        incomplete = [r["round"] for r in runs if not r["complete"]]
        if incomplete and system:
            res.notes.append(f"output: {system}'s capture never reached full size in rounds {incomplete}")
