"""App-server benchmarks: requests lost across restart, reload-app, deploy and SIGKILL of the coffeehouse demo.

    .venv/bin/python benchmarks/bench_servers.py [--quick | --smoke] [--only SERVER[,SERVER]] [--json OUT]

Issues #6 and #16. Per app server (uwsgi, gunicorn, daphne, uvicorn, hypercorn; skipped with the reason
when procguard.testing.demo.why_missing() names one) the demo runs from the shipped conf.d files under a
daemon of its own (procguard/testing/demo.py `start()`). Prints every round and median / max, beside the
peers' figures the issue quotes; never asserts speed. Exits non-zero only when the harness fails, after
measuring the other servers; survivors and failed requests are figures. The pieces are in
benchmarks/servers/ (actions, rounds, memory, peers, report). Rounds: --quick 1, else 5; --smoke measures
each figure once with 10 requests where the text says 40 or STEADY_OK, and kills without the stable wait.

The load: 4 threads, each a GET / (Host: localhost) on a new connection every ~10 ms, 5 s timeout;
failed = an exception or a status other than 200. A round loads until 40 requests answered 200, runs
the command, loads until 40 more answered after it returned: bounded, covering the whole transition.

1. Restart, held socket (the shipped file) and own bind (`start(held=False)`, as under supervisord):
   failed requests (those before the command apart, expected 0), the command's wall time (procguardctl's
   start-up included), the longest gap between successive 200s across the command.
2. reload-app, held socket: HUP for gunicorn, uWSGI and uvicorn, so the round also waits until every
   old worker is gone and as many new ones run; daphne and hypercorn restart instead.
3. SIGKILL of the master (`pid` of `procguardctl --json status`), no load: one probe at a time every
   PROBE_INTERVAL_S with PROBE_TIMEOUT_S; kill -> first 200, kill -> the daemon's RUNNING line for a new
   pid, probes failed by kind until 40 answered after RUNNING, and the longest time without a 200. Each
   kill waits until the master has been up backoff_reset + STABLE_MARGIN_S, so every round times the
   usual production crash, not a growing backoff.
4. Deploys (#16) in the release layout (`start(releases=True)`, where 1-2 run too): copy demo/ to the
   next release, flip `current`, `procguardctl deploy` under load. STEADY_OK requests first give the
   steady p50/p99, against the p50/p99 "across" the command. Figures as in 1.
5. A broken release (an import nobody installed): the deploy must fail; failed requests and the seconds
   to its verdict. One round.
6. SIGKILL of the master under load, after the stable wait of 3: requests lost, the longest gap.
7. Peers, gunicorn only: the same gunicorn under supervisord (it binds its port) and circus (held
   socket), `restart` under the same load (harness/peers.py renders their configs).

Cleanup: per daemon, try/finally (Ctrl-C and SIGTERM become an exception in bench_main): the load stops,
`Coffeehouse.stop()` stops the daemon and names and kills any server process that outlived it (counted
in the JSON), `DaemonRun.cleanup()` removes its directory.
"""

import argparse
import json
import sys
import traceback
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.run import Bench, BenchError, begin, bench_main  # noqa: E402
from benchmarks.servers.actions import (  # noqa: E402
    CLIENT_INTERVAL_S, CLIENT_THREADS, CLIENT_TIMEOUT_S, PLANS, PROBE_INTERVAL_S, PROBE_TIMEOUT_S, Plan,
)
from benchmarks.servers.memory import generation_memory, peak_rss  # noqa: E402
from benchmarks.servers.peers import peer_restarts  # noqa: E402
from benchmarks.servers.report import print_table  # noqa: E402
from benchmarks.servers.rounds import coffeehouse, load_rounds, sigkill_rounds  # noqa: E402
from procguard.testing.demo import SERVERS, Breakage, why_missing  # noqa: E402

# From the issue; printed as a reference, never measured by this script.
REFERENCE = {
    "source": "issue #6, not measured here",
    "what": "restarting gunicorn under load on this class of machine",
    "supervisord_failed": 143,
    "circus_failed": 150,
    "gap_ms": 700.0,
}


def bench_server(server: str, plan: Plan, out: dict[str, Any], bench: Bench) -> None:
    """Every measurement of one server into `out` (filled as it goes, so a failure keeps what was done)."""
    out["survivors"] = {"held": [], "own_bind": []}
    with coffeehouse(server, True, out["survivors"]["held"]) as c:
        out["restart_held"] = load_rounds(c, server, "restart", "restart, held socket", plan, steady=True)
        out["reload_app"] = load_rounds(c, server, "reload-app", "reload-app, held socket", plan)
        print(f"  {'':<34} reload-app replied: {out['reload_app']['rounds'][-1]['reply']!r}")
        out["memory"] = generation_memory(c, server)
        with peak_rss(c, server, out["memory"]):
            out["deploy"] = load_rounds(c, server, "deploy", "deploy (next release), held socket", plan,
                                        True, Breakage.NONE)
        m = out["memory"]
        print(f"  {'memory':<34} one generation: {m['processes']} processes, RSS {m['rss_mib']:.0f} MiB, PSS "
              f"{m['pss_mib']:.0f} MiB; peak RSS of both generations during the deploys {m['peak_rss_mib']:.0f} MiB",
              flush=True)
        # One round: the verdict waits for the next generation to fail (start_timeout where it never
        # exits, e.g. uvicorn's workers respawned by its own manager).
        out["deploy_broken"] = load_rounds(c, server, "deploy", "deploy of a release that fails import",
                                           replace(plan, rounds=1), False, Breakage.IMPORT_ERROR)
        out["sigkill"] = sigkill_rounds(c, server, plan, under_load=False)
        if server == "gunicorn":
            # Their own gunicorn, beside this one: meanwhile the master the SIGKILL above started passes
            # backoff_reset, so the SIGKILL under load below need not wait for it again.
            out["peers"] = peer_restarts(c, bench, plan)
        out["sigkill_load"] = sigkill_rounds(c, server, plan, under_load=True)
    with coffeehouse(server, False, out["survivors"]["own_bind"]) as c:
        out["restart_own_bind"] = load_rounds(c, server, "restart", "restart, own bind", plan)


def run(only: tuple[str, ...], smoke: bool, args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    mode = "smoke" if smoke else "quick" if args.quick else "full"
    plan = PLANS[mode]
    results = begin("app-server", args, f", {plan.rounds} round(s)", rounds=plan.rounds, mode=mode,
                    load={"threads": CLIENT_THREADS, "interval_s": CLIENT_INTERVAL_S, "timeout_s": CLIENT_TIMEOUT_S,
                          "pre_ok": plan.pre_ok, "post_ok": plan.post_ok},
                    probe={"interval_s": PROBE_INTERVAL_S, "timeout_s": PROBE_TIMEOUT_S, "post_ok": plan.post_ok},
                    reference=REFERENCE, servers={}, harness_errors={})
    print(f"load: {CLIENT_THREADS} threads, GET / every {CLIENT_INTERVAL_S * 1e3:.0f} ms each on a new connection, "
          f"{CLIENT_TIMEOUT_S:g} s timeout; {plan.pre_ok} answered before each action, {plan.post_ok} after\n",
          flush=True)
    if not plan.stable_wait:
        print("smoke: each SIGKILL without the stable wait: its figures include procguard's backoff\n", flush=True)
    for server in only:
        out: dict[str, Any] = {}
        results["servers"][server] = out
        reason = why_missing(server)
        if reason is not None:
            out["skipped"] = reason
            print(f"{server}: skipped: {reason}\n", flush=True)
            continue
        try:
            bench_server(server, plan, out, bench)
        # A server's boundary: record why the harness could not measure it (a server that never came
        # up, a command that failed, a wait that timed out) and go on with the next one; run() then
        # fails the run. KeyboardInterrupt and bench_main's Interrupted are BaseExceptions: they unwind.
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
            results["harness_errors"][server] = traceback.format_exc()
            print(f"{server}: cannot measure: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        print(flush=True)
    results["survivors_total"] = sum(len(v) for r in results["servers"].values()
                                     for v in r.get("survivors", {}).values())
    print_table(results)
    if results["harness_errors"]:
        if args.json:  # bench_main writes the JSON only for a run that succeeded
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
            print(f"figures so far written to {args.json}")
        raise BenchError(f"could not measure {', '.join(results['harness_errors'])} (tracebacks above and in "
                         f"the JSON's harness_errors)")
    return results


def main(argv: list[str] | None = None) -> int:
    # bench_main owns --quick and --json; --only and --smoke are this script's own, parsed first.
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--only", metavar="SERVER[,SERVER]")
    ap.add_argument("--smoke", action="store_true")
    known, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    only = tuple(SERVERS)
    if known.only is not None:
        only = tuple(s.strip() for s in known.only.split(",") if s.strip())
        unknown = [s for s in only if s not in SERVERS]
        if unknown or not only:
            print(f"bench_servers: --only: expected some of {','.join(SERVERS)}, got {known.only!r}", file=sys.stderr)
            return 2
    return bench_main("bench_servers",
                      "Benchmark restart, reload-app and SIGKILL of the coffeehouse demo on each app server "
                      f"under procguard. Also: --only SERVER[,SERVER] (of {','.join(SERVERS)}) measures only "
                      "those, in that order; --smoke (the test suite's) measures every figure once with 10 requests "
                      "around each action and no stable wait before a SIGKILL (figures too small to compare).",
                      "1 round per figure instead of 5 (~20 s per server instead of ~2 min)",
                      partial(run, only, known.smoke), rest)


if __name__ == "__main__":
    sys.exit(main())
