"""The engine of deploys (issue #16) on a small test server: requests lost and the longest gap across a change.

    .venv/bin/python benchmarks/bench_deploy.py [--quick] [--rounds N] [--delay S] [--json OUT]

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
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import Daemon  # noqa: E402
from benchmarks.harness.load import Load, transition  # noqa: E402
from benchmarks.harness.peers import PROCGUARDCTL, Program, procguard_programs  # noqa: E402
from benchmarks.harness.procs import free_port, run_ctl  # noqa: E402
from benchmarks.harness.run import REPO, Bench, bench_main, begin, poll_until  # noqa: E402

FDSERVER = str(REPO / "tests" / "programs" / "fdserver.py")
ROWS = ("failed", "gap_ms", "cli_ms", "steady_p50_ms", "steady_p99_ms", "across_p50_ms", "across_p99_ms")


def round_of(d: Daemon, port: int, command: list[str], expect_ok: bool = True) -> dict[str, Any]:
    """One command under the load: 40 answers before it, 40 after it returned."""
    with Load(port) as load:
        poll_until(lambda: load.ok_done_after(load.started) >= 40, 30, "40 answers before", interval_s=0.01)
        t_cmd = time.monotonic()
        run_ctl([PROCGUARDCTL, "-s", d.endpoint, *command], " ".join(command), (0,) if expect_ok else (1, 2, 3))
        t_ret = time.monotonic()
        poll_until(lambda: load.ok_done_after(t_ret) >= 40, 30, "40 answers after", interval_s=0.01)
    return transition(list(load.hits), t_cmd, t_ret, t_ret)


def daemon_for(bench: Bench, strategy: str, delay: float) -> tuple[Daemon, int]:
    d = bench.daemon(f"deploy-{strategy}", None)
    port = free_port()
    (d.work / "release.json").write_text(json.dumps({"name": "v1", "mode": "ok"}))
    keys: dict[str, object] = {"restart_strategy": strategy, "ready": "notify", "start_timeout": "10s"}
    if strategy == "recreate":
        keys["drain_timeout"] = "10s"
    argv = (sys.executable, FDSERVER, "--dir", str(d.work), "--release", str(d.work / "release.json"),
            "--delay", str(delay), "--abrupt")
    d.write_config(procguard_programs([Program(name="web", argv=argv, held_socket="web", procguard_keys=keys)],
                                      {"web": port}))
    d.bench.known_cmdlines.append(list(argv))
    d.start()
    d.wait_event("process_state_changed", timeout_s=60, process="web", new="RUNNING")
    return d, port


def summary(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    print(f"{name:<34} failed {int(sum(r['failed'] for r in rows))}"
          f"  gap ms median {med('gap_ms'):.0f} max {max(r['gap_ms'] for r in rows):.0f}"
          f"  p50 {med('steady_p50_ms'):.1f} -> {med('across_p50_ms'):.1f}"
          f"  p99 {med('steady_p99_ms'):.1f} -> {med('across_p99_ms'):.1f}"
          f"  command s {med('cli_ms') / 1e3:.2f}", flush=True)
    return {"rounds": rows, **{k: med(k) for k in ROWS}}


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    rounds = args.rounds or (2 if args.quick else 5)
    out = begin("deploy", args, rounds=rounds)
    for strategy, label in (("overlap", "deploy (overlap)"), ("recreate", "restart (recreate, drain)")):
        d, port = daemon_for(bench, strategy, args.delay)
        command = ["deploy", "web"] if strategy == "overlap" else ["restart", "web"]
        out[label] = summary(label, [round_of(d, port, command) for _ in range(rounds)])
        if strategy == "overlap":
            out["baseline"] = summary("no change (status: the baseline)",
                                      [round_of(d, port, ["status", "web"]) for _ in range(rounds)])
            (d.work / "release.json").write_text(json.dumps({"name": "v2", "mode": "exit"}))
            out["broken"] = summary("deploy, broken release (verdict)",
                                    [round_of(d, port, ["deploy", "web"], expect_ok=False) for _ in range(rounds)])
        left = d.kill()
        if left:
            print(f"survivors killed: {left}")
    print(f"({rounds} rounds each; fdserver --delay {args.delay}; 4 clients, new connection per request)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--rounds", type=int, help="rounds per row (default 5, --quick 2)")
    ap.add_argument("--delay", type=float, default=0.02, help="seconds each request takes in the server")
    return bench_main("bench_deploy", "Benchmark deploys against restarts on a small test server.",
                      "2 rounds per row", run, argv, ap)


if __name__ == "__main__":
    sys.exit(main())
