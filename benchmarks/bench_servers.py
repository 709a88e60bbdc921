"""App-server benchmarks: requests lost across restart, reload-app, deploy and SIGKILL of the coffeehouse demo.

    .venv/bin/python benchmarks/bench_servers.py [--quick | --smoke] [--only SERVER[,SERVER]] [--json OUT]

Issues #6 and #16. For each app server (uwsgi, gunicorn, daphne, uvicorn, hypercorn; each skipped, with the
reason printed, when procguard.testing.demo.why_missing() names one), the coffeehouse demo runs
from the conf.d files we ship under a real daemon of its own, started by procguard/testing/demo.py
(`start()`: fresh directory, free ports, the migrate and collectstatic jobs). The script prints every
round and the median / max, next to the peers' figures the issue quotes (printed as a reference, not
measured here); it never asserts speed (DESIGN.md, "Tests"). It exits non-zero only when the harness
itself fails (a daemon or server that never comes up, a command that fails), after measuring the
other servers; survivors and failed requests are figures, not harness failures. The pieces live in
benchmarks/servers/ (actions, rounds, memory, peers, report); this script runs them per server.

What is measured, and how (rounds: --quick 1, otherwise 5; --smoke, the test suite's, measures every figure
once with 10 requests where the text says 40 or STEADY_OK, and SIGKILLs without the stable wait):

1. Restart under load, held socket (the shipped conf.d file: procguard binds the port and passes it
   on) and own bind (`start(held=False)`: the server binds its port itself, what a supervisord user
   has), each on a daemon of its own. The load: 4 client threads, each a GET / with Host: localhost
   on a new http.client connection every ~10 ms (start to start), 5 s timeout; a request failed on an
   exception or a status other than 200. A round runs the load until 40 requests answered 200, then
   `procguardctl restart coffeehouse<server>` (its wall time includes procguardctl's own start-up),
   then waits until 40 more answered 200 after the command returned, and stops the load: so the
   load is bounded and covers the whole transition. Figures: failed requests (all of the round's;
   those failed before the command are also given apart, expected 0), the command's wall time, and
   the longest gap between two successive 200 responses (by the time each was received) from the
   last one before the command to the first one after it returned.
2. `procguardctl reload-app coffeehouse<server>` under the same load, held socket. reload-app sends
   HUP to gunicorn, uWSGI and uvicorn (with --workers), which replace their workers while the master
   stays: the command returns once the signal is sent, so the round also waits until every worker
   the master had before is gone and as many new ones run (uvicorn's multiprocessing resource
   tracker is a helper, not a worker: it stays) before counting the 40 requests after. Daphne and
   Hypercorn have no in-place reload: reload-app restarts them and returns when they are RUNNING.
3. SIGKILL of the server's master (the `pid` of `procguardctl --json status`), held socket, no load.
   From the kill, one probe at a time: a GET / (Host: localhost) on a new connection with a short
   timeout (PROBE_TIMEOUT_S), started every PROBE_INTERVAL_S (start to start; at once after a probe
   that took longer). The port stays open (held socket), so a probe waits in the backlog and is
   answered as soon as a server accepts again; one at a time, so the probes never queue more work
   than the demo serves (a probe that timed out leaves one dead request in the backlog). Figures:
   kill -> first 200 received (whichever process answered it: until procguard kills the old master's
   group, its orphaned workers may still accept on the held socket); kill -> the daemon's
   process_state_changed new=RUNNING line for a new pid (the line's own timestamp; the log is read
   every LOG_POLL_S between probes); probes failed, by kind (TimeoutError: waited longer than
   PROBE_TIMEOUT_S), from the kill until 40 probes answered 200 after that RUNNING line (the whole
   transition); the longest time without a 200 from the kill on, and when the 200 that ended it was
   received (the recovery, when orphaned workers answered first). Each kill waits until the master
   has been up for the program's backoff_reset (10 s by default) plus STABLE_MARGIN_S: procguard
   restarts a process that crashed after such a stable run at once, and one that crashed sooner
   after a backoff doubling per crash in a row; so every round times the usual production crash,
   not a backoff that grows round by round.

4. Deploys (issue #16), held socket, in the release layout (`start(releases=True)`: releases/N and a
   `current` symlink the programs' directory goes through; the restart and reload-app rounds above run
   in it too): each round copies demo/ to the next release, flips `current` to it and runs
   `procguardctl deploy coffeehouse<server>` under the load (the migrate and collectstatic jobs run
   again, then the next generation starts beside the current one and takes over once healthy). The
   load first runs until STEADY_OK requests answered: their latencies (those completed before the
   command) are the steady p50/p99, against the p50/p99 of the requests sent from the command to its
   return ("across"). The restart rounds get the same steady phase. Figures as in 1.
5. A broken release: `current` flipped to a copy whose wsgi.py/asgi.py import a module nobody
   installed, `procguardctl deploy` under the load (it must fail; `current` is flipped back after).
   Figures: failed requests, and the command's wall time: the seconds to the deploy's verdict (jobs
   included; start_timeout where the next generation never exits, as uvicorn's process manager keeps
   respawning workers that cannot import). One round.
6. SIGKILL of the master under the load (after the same stable uptime as 3): the requests lost, and
   the longest gap until the new master is RUNNING and 40 more answered.
7. Peers, gunicorn only: the same gunicorn (conf.d/gunicorn.toml's command, the same release
   directory and database) under supervisord (gunicorn binds its port: supervisord holds no socket for
   a [program]) and under circus (its held socket, use_sockets), `restart` under the same load, with
   the same figures (the transition ends with the first 200 after their ctl returned: both return
   before the new gunicorn answers). benchmarks/harness/peers.py renders their configs.

Cleanup: each daemon runs inside try/finally (also on Ctrl-C and SIGTERM, which bench_main turns into
an exception): the load threads stop, then `Coffeehouse.stop()` stops the daemon and names (and kills)
every server process that outlived it (printed, counted, in the JSON), then `DaemonRun.cleanup()`
removes its directory. A second Ctrl-C is ignored while a daemon is being stopped.
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
