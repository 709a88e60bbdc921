"""App-server benchmarks: requests lost across restart, reload-app, deploy and SIGKILL of the coffeehouse demo.

    .venv/bin/python benchmarks/bench_servers.py [--quick] [--only SERVER[,SERVER]] [--json OUT]

Issues #6 and #16. For each app server (uwsgi, gunicorn, daphne, uvicorn, hypercorn; each skipped, with the
reason printed, when procguard.testing.demo.why_missing() names one), the coffeehouse demo runs
from the conf.d files we ship under a real daemon of its own, started by procguard/testing/demo.py
(`start()`: fresh directory, free ports, the migrate and collectstatic jobs). The script prints every
round and the median / max, next to the peers' figures the issue quotes (printed as a reference, not
measured here); it never asserts speed (DESIGN.md, "Tests"). It exits non-zero only when the harness
itself fails (a daemon or server that never comes up, a command that fails), after measuring the
other servers; survivors and failed requests are figures, not harness failures.

What is measured, and how (rounds: --quick 1, otherwise 5):

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
import os
import signal
import statistics
import sys
import threading
import time
import tomllib
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.daemon import LogTail, parse_ts  # noqa: E402
from benchmarks.harness.load import Hit, Load, error_counts, get_once, longest_gap_ms, recovered_at, transition  # noqa: E402
from benchmarks.harness.peers import HELD_FD, Program, System, make, peer_missing  # noqa: E402
from benchmarks.harness.procs import free_port  # noqa: E402
from benchmarks.harness.run import Bench, BenchError, begin, bench_main, poll_until  # noqa: E402
from benchmarks.harness.stats import summarize  # noqa: E402
from procguard.config.load import load_config  # noqa: E402
from procguard.testing.run import DaemonRun  # noqa: E402
from procguard.testing.demo import SERVERS, Breakage, Coffeehouse, program, start, why_missing  # noqa: E402

CLIENT_THREADS = 4
CLIENT_INTERVAL_S = 0.010
CLIENT_TIMEOUT_S = 5.0
PRE_OK = 40   # requests answered 200 before the action
STEADY_OK = 400  # ... before a deploy: their latencies are the steady p50/p99 the deploy's are set against
KILL = "SIGKILL"  # action_under_load's verb for a SIGKILL of the master
POST_OK = 40  # ... and after it returned (after the transition, for a HUP reload)
PROBE_INTERVAL_S = 0.005
PROBE_TIMEOUT_S = 1.0
SIGKILL_TIMEOUT_S = 120.0
STABLE_MARGIN_S = 0.5  # status's uptime_s and the daemon's own "ran for" are taken at different moments
LOG_POLL_S = 0.020
POLL_S = 0.010
# uvicorn --workers runs multiprocessing's resource tracker beside its workers; HUP keeps it.
HELPER_MARKERS = ("multiprocessing.resource_tracker",)
# From the issue; printed as a reference, never measured by this script.
REFERENCE = {
    "source": "issue #6, not measured here",
    "what": "restarting gunicorn under load on this class of machine",
    "supervisord_failed": 143,
    "circus_failed": 150,
    "gap_ms": 700.0,
}


# ------------------------------------------------------------------------------------ one action


def status_row(c: Coffeehouse, server: str) -> dict[str, Any]:
    row = c.status().get(program(server))
    if row is None:
        raise BenchError(f"{program(server)} missing from `procguardctl --json status`; log: {c.d.logfile}")
    return row


def workers_of(c: Coffeehouse, pid: int) -> set[int]:
    """The master's children that serve requests (not helpers such as a resource tracker)."""
    out = set()
    for child in c.children(pid):
        try:
            if not any(m in " ".join(psutil.Process(child).cmdline()) for m in HELPER_MARKERS):
                out.add(child)
        except psutil.Error:  # exited (or a zombie) meanwhile: not a worker any more
            pass
    return out


def action_under_load(c: Coffeehouse, server: str, verb: str, expect_ok: bool = True,
                      steady_ok: int = PRE_OK) -> dict[str, Any]:
    """One round of `procguardctl VERB coffeehouse<server>` (or, for verb KILL, a SIGKILL of its master)
    under the bounded load (see the docstring). steady_ok: requests answered 200 before the action, whose
    latencies are the steady p50/p99. expect_ok: the command's exit status expected (0 or not)."""
    before = status_row(c, server)
    old_pid = int(before["pid"])
    old_workers = workers_of(c, old_pid)
    with Load(c.ports[server], CLIENT_THREADS, CLIENT_INTERVAL_S, CLIENT_TIMEOUT_S, host="localhost") as load:
        poll_until(lambda: load.ok_done_after(load.started) >= steady_ok, 120,
                   f"{server}: {steady_ok} requests answered before {verb}", interval_s=POLL_S)
        t0 = time.monotonic()
        if verb == KILL:
            os.kill(old_pid, signal.SIGKILL)
            reply = f"SIGKILL to {old_pid}"
        else:
            r = c.ctl(verb, program(server))
            reply = (r.stdout + r.stderr).strip()
            if (r.returncode == 0) != expect_ok:
                raise BenchError(f"procguardctl {verb} {program(server)} exited {r.returncode}, expected "
                                 f"{'0' if expect_ok else 'non-zero'}: {reply[-3000:]}")
        t1 = time.monotonic()
        if verb == KILL:  # the transition ends when a new master is RUNNING
            poll_until(lambda: status_row(c, server).get("pid") not in (None, old_pid)
                       and status_row(c, server).get("state") == "RUNNING", 120,
                       f"{server}: a new master RUNNING after SIGKILL", interval_s=POLL_S)
            t1 = time.monotonic()
        after = status_row(c, server)
        new_pid = int(after["pid"]) if after.get("pid") is not None else None
        t_done = t1
        if new_pid == old_pid and verb != "deploy":
            # An in-place reload (HUP): the command returned once the signal was sent; the transition
            # ends when the old workers are gone and as many new ones serve.
            def replaced() -> bool:
                now = workers_of(c, old_pid)
                return not (now & old_workers) and len(now) >= len(old_workers)

            poll_until(replaced, 90, f"{server}: the workers {sorted(old_workers)} replaced after {verb}",
                       interval_s=POLL_S)
            t_done = time.monotonic()
        c.track()
        poll_until(lambda: load.ok_done_after(t_done) >= POST_OK, 60,
                   f"{server}: {POST_OK} requests answered after {verb}", interval_s=POLL_S)
    hits = list(load.hits)
    return {
        **transition(hits, t0, t1, t_done),
        "failed_before_action": sum(1 for h in hits if not h.ok and h.done < t0),
        "old_pid": old_pid,
        "new_pid": new_pid,
        "reply": reply,
    }


# ----------------------------------------------------------------------------------------- SIGKILL


def sigkill_once(c: Coffeehouse, server: str) -> dict[str, Any]:
    """SIGKILL the master; probe until the replacement is RUNNING and answered POST_OK probes."""
    name = program(server)
    port = c.ports[server]
    before = status_row(c, server)
    old_pid = int(before["pid"])
    tail = LogTail(c.d.logfile)
    tail.poll()  # only lines written after the kill count
    hits: list[Hit] = []
    running: dict[str, Any] | None = None
    running_at = 0.0  # the RUNNING line's timestamp on this script's monotonic clock
    t_wall = time.time()
    t_kill = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    next_log = t_kill
    while running is None or sum(1 for h in hits if h.ok and h.done >= running_at) < POST_OK:
        if time.monotonic() - t_kill > SIGKILL_TIMEOUT_S:
            raise BenchError(f"{server}: no new RUNNING master answering {POST_OK} probes within "
                             f"{SIGKILL_TIMEOUT_S:g} s of SIGKILL to {old_pid}; RUNNING line: {running}; last "
                             f"probes: {hits[-3:]}; log: {c.d.logfile}")
        hits.append(get_once(port, PROBE_TIMEOUT_S, host="localhost"))
        if running is None and time.monotonic() >= next_log:
            next_log = time.monotonic() + LOG_POLL_S
            for e in tail.poll():
                if (running is None and e.get("event") == "process_state_changed" and e.get("process") == name
                        and e.get("new") == "RUNNING" and e.get("pid") not in (None, old_pid)):
                    running = e
                    running_at = t_kill + parse_ts(e) - t_wall
        time.sleep(max(0.0, hits[-1].sent + PROBE_INTERVAL_S - time.monotonic()))
    ok_done = [h.done for h in hits if h.ok]
    first_200 = min(ok_done)
    new_pid = int(running["pid"])
    c.wait_healthy(server)
    st = status_row(c, server)
    if st.get("pid") != new_pid:
        print(f"    note: status shows pid {st.get('pid')} ({st.get('state')}); the log's RUNNING line said {new_pid}")
    return {
        "first_200_ms": (first_200 - t_kill) * 1e3,
        "running_ms": (running_at - t_kill) * 1e3,
        "failed": sum(1 for h in hits if not h.ok),
        "failed_before_first_200": sum(1 for h in hits if not h.ok and h.done < first_200),
        "probes": len(hits),
        "errors": error_counts(hits),
        "max_gap_ms": longest_gap_ms(hits, t_kill, max(ok_done)),
        "recovered_ms": (recovered_at(hits, t_kill) - t_kill) * 1e3,
        "uptime_before_kill_s": before.get("uptime_s"),
        "old_pid": old_pid,
        "new_pid": new_pid,
    }


# ----------------------------------------------------------------------------------------- rounds


def load_line(label: str, i: int, r: dict[str, Any]) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "no errors"
    extra = f"; transition {r['transition_ms']:.0f} ms" if r["transition_ms"] > r["cli_ms"] + 1 else ""
    return (f"  {label:<34} round {i + 1}: failed {r['failed']:>4} of {r['requests']:>5} ({errors}); "
            f"command {r['cli_ms']:.0f} ms{extra}; longest gap {r['gap_ms']:.0f} ms (steady {r['steady_gap_ms']:.0f}); "
            f"slowest request {r['slowest_request_ms']:.0f} ms; p50/p99 {r['across_p50_ms']:.1f}/"
            f"{r['across_p99_ms']:.1f} ms across ({r['across_requests']} requests), steady "
            f"{r['steady_p50_ms']:.1f}/{r['steady_p99_ms']:.1f} ms")


def med_max_line(label: str, s: dict[str, Any], keys: tuple[tuple[str, str, str], ...]) -> str:
    parts = []
    for key, what, unit in keys:
        mm = s[key]
        parts.append(f"{what} {mm['median']:.0f} / {mm['max']:.0f}{unit}")
    return f"  {label:<34} median / max: " + "; ".join(parts)


LOAD_KEYS = ("failed", "cli_ms", "gap_ms", "steady_gap_ms", "transition_ms", "slowest_request_ms", "steady_p50_ms",
             "steady_p99_ms", "across_p50_ms", "across_p99_ms")
SIGKILL_KEYS = ("first_200_ms", "running_ms", "failed", "max_gap_ms", "recovered_ms")


@contextmanager
def coffeehouse(server: str, held: bool, survivors: list[str]) -> Iterator[Coffeehouse]:
    """A daemon of its own running conf.d/<server>.toml (held socket or own bind), RUNNING and healthy.

    Always stopped on the way out (also on Ctrl-C); the processes that outlived it go into `survivors`
    and are printed.
    """
    setup = "held socket" if held else "own bind"
    print(f"{server}: {setup} " + (f"(conf.d/{server}.toml as shipped, in releases/N + current)" if held else
                                   "(the server binds its port itself, no held socket)"), flush=True)
    d = DaemonRun()
    c: Coffeehouse | None = None
    try:
        c = start(d, (server,), held=held, releases=held)  # deploys need the release layout
        c.wait_healthy(server)
        yield c
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave servers behind
        try:
            if c is not None:
                survivors.extend(c.stop())
            survivors.extend(f"{pid} (recorded by a probe)" for pid in d.cleanup())
        finally:
            signal.signal(signal.SIGINT, old)
        if survivors:
            print(f"  {server} ({setup}): {len(survivors)} process(es) outlived the daemon (killed now):")
            for line in survivors:
                print(f"    {line}")
        else:
            print(f"  {server} ({setup}): no process outlived the daemon", flush=True)


def load_rounds(c: Coffeehouse, server: str, verb: str, label: str, rounds: int, steady_ok: int = PRE_OK,
                breakage: Breakage | None = None) -> dict[str, Any]:
    """`rounds` of action_under_load. breakage (deploy only): each round deploys a fresh release,
    Breakage.NONE a good one (it stays), another a broken one (expected to fail; `current` is flipped
    back to the good release afterwards)."""
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        c.wait_healthy(server)
        good = c.current() if c.releases is not None else None
        if breakage is not None:
            c.flip(c.new_release(breakage))
        try:
            runs.append(action_under_load(c, server, verb, expect_ok=breakage in (None, Breakage.NONE),
                                          steady_ok=steady_ok))
        finally:
            if breakage not in (None, Breakage.NONE) and good is not None:
                c.flip(good)
        print(load_line(label, i, runs[-1]), flush=True)
    out = summarize(runs, LOAD_KEYS)
    print(med_max_line(label, out, (("failed", "failed", ""), ("cli_ms", "command", " ms"), ("gap_ms", "gap", " ms"))),
          flush=True)
    return out


def backoff_reset_s(c: Coffeehouse, server: str) -> float:
    """The program's backoff_reset as procguard resolves this run's config (conf.d's value, else the default)."""
    progs = {p.name: p for p in load_config(c.d.config).programs}
    return progs[program(server)].backoff_reset


def wait_stable(c: Coffeehouse, server: str, stable_s: float, what: str) -> None:
    """Until the master has been up stable_s. A crash after a stable run (up >= backoff_reset) is
    restarted at once; an earlier one waits a backoff that doubles per crash in a row
    (procguard/engine/process.py, exited()). Every round times the first case, the usual production crash,
    instead of a backoff growing round by round."""
    poll_until(lambda: (status_row(c, server).get("uptime_s") or 0.0) >= stable_s, stable_s + 120,
               f"{server}: up for {stable_s:g} s (backoff_reset + {STABLE_MARGIN_S:g} s) before {what}",
               interval_s=0.2)


def sigkill_rounds(c: Coffeehouse, server: str, rounds: int, under_load: bool) -> dict[str, Any]:
    """SIGKILL of the master, each after a stable uptime: under the load (the requests lost; issue #16: a
    crashed master loses none) or probed one request at a time (sigkill_once)."""
    label = "SIGKILL of the master, " + ("under load" if under_load else "held socket")
    stable_s = backoff_reset_s(c, server) + STABLE_MARGIN_S
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        c.wait_healthy(server)
        wait_stable(c, server, stable_s, f"{label}, round {i + 1}")
        runs.append(k := action_under_load(c, server, KILL) if under_load else sigkill_once(c, server))
        print(load_line(label, i, k) if under_load else sigkill_line(label, i, k), flush=True)
    if under_load:
        out = summarize(runs, LOAD_KEYS)
        keys = (("failed", "lost", ""), ("cli_ms", "to RUNNING", " ms"), ("gap_ms", "gap", " ms"))
    else:
        out = summarize(runs, SIGKILL_KEYS)
        keys = (("first_200_ms", "first 200", " ms"), ("running_ms", "RUNNING", " ms"), ("failed", "failed", ""))
    print(med_max_line(label, out, keys), flush=True)
    return out


def sigkill_line(label: str, i: int, k: dict[str, Any]) -> str:
    errors = ", ".join(f"{e} {n}" for e, n in sorted(k["errors"].items())) or "no errors"
    return (f"  {label:<34} round {i + 1}: first 200 after {k['first_200_ms']:.0f} ms; RUNNING (new pid) after "
            f"{k['running_ms']:.0f} ms; failed {k['failed']} of {k['probes']} probes ({errors}); longest "
            f"without a 200 {k['max_gap_ms']:.0f} ms, ended {k['recovered_ms']:.0f} ms after the kill")


def bench_server(server: str, rounds: int, out: dict[str, Any], bench: Bench) -> None:
    """Every measurement of one server into `out` (filled as it goes, so a failure keeps what was done)."""
    out["survivors"] = {"held": [], "own_bind": []}
    with coffeehouse(server, True, out["survivors"]["held"]) as c:
        out["restart_held"] = load_rounds(c, server, "restart", "restart, held socket", rounds, STEADY_OK)
        out["reload_app"] = load_rounds(c, server, "reload-app", "reload-app, held socket", rounds)
        print(f"  {'':<34} reload-app replied: {out['reload_app']['rounds'][-1]['reply']!r}")
        out["memory"] = generation_memory(c, server)
        with peak_rss(c, server, out["memory"]):
            out["deploy"] = load_rounds(c, server, "deploy", "deploy (next release), held socket", rounds,
                                        STEADY_OK, Breakage.NONE)
        m = out["memory"]
        print(f"  {'memory':<34} one generation: {m['processes']} processes, RSS {m['rss_mib']:.0f} MiB, PSS "
              f"{m['pss_mib']:.0f} MiB; peak RSS of both generations during the deploys {m['peak_rss_mib']:.0f} MiB",
              flush=True)
        # One round: the verdict waits for the next generation to fail (start_timeout where it never
        # exits, e.g. uvicorn's workers respawned by its own manager).
        out["deploy_broken"] = load_rounds(c, server, "deploy", "deploy of a release that fails import", 1,
                                           PRE_OK, Breakage.IMPORT_ERROR)
        out["sigkill"] = sigkill_rounds(c, server, rounds, under_load=False)
        if server == "gunicorn":
            # Their own gunicorn, beside this one: meanwhile the master the SIGKILL above started passes
            # backoff_reset, so the SIGKILL under load below need not wait for it again.
            out["peers"] = peer_restarts(c, bench, rounds)
        out["sigkill_load"] = sigkill_rounds(c, server, rounds, under_load=True)
    with coffeehouse(server, False, out["survivors"]["own_bind"]) as c:
        out["restart_own_bind"] = load_rounds(c, server, "restart", "restart, own bind", rounds)


# ------------------------------------------------------------------------------------------ report


def print_table(results: dict[str, Any]) -> None:
    def mm(s: dict[str, Any] | None, key: str) -> str:
        if not s or not s.get(key):
            return "-"
        return f"{s[key]['median']:.0f}/{s[key]['max']:.0f}"

    def med(s: dict[str, Any] | None, key: str) -> str:
        if not s or not s.get(key):
            return "-"
        return f"{s[key]['median']:.0f}"

    cols = ("server", "restart failed held", "restart failed own bind", "gap held/own (ms)", "reload-app failed",
            "SIGKILL->first 200", "SIGKILL->RUNNING")
    units = ("", "median/max", "median/max", "median", "median/max", "median ms", "median ms")
    widths = [max(10, len(c)) for c in cols]
    rows = []
    for server, r in results["servers"].items():
        if r.get("skipped"):
            rows.append(f"{server:<{widths[0]}} | skipped: {r['skipped']}")
            continue
        held, own = r.get("restart_held"), r.get("restart_own_bind")
        cells = (server, mm(held, "failed"), mm(own, "failed"), f"{med(held, 'gap_ms')}/{med(own, 'gap_ms')}",
                 mm(r.get("reload_app"), "failed"), med(r.get("sigkill"), "first_200_ms"),
                 med(r.get("sigkill"), "running_ms"))
        line = " | ".join(f"{v:<{w}}" for v, w in zip(cells, widths))
        if r.get("error"):
            line += f"  (harness error: {r['error'].splitlines()[0][:80]})"
        rows.append(line)
    print(f"summary ({results['mode']}, {results['rounds']} round(s) per figure; figures only, none fails the run):")
    print("  " + " | ".join(f"{c:<{w}}" for c, w in zip(cols, widths)).rstrip())
    print("  " + " | ".join(f"{u:<{w}}" for u, w in zip(units, widths)).rstrip())
    print("  " + "-+-".join("-" * w for w in widths))
    for row in rows:
        print("  " + row.rstrip())
    ref = results["reference"]
    print(f"  reference ({ref['source']}): {ref['what']}, supervisord fails {ref['supervisord_failed']} requests "
          f"and circus {ref['circus_failed']}, with gaps of about {ref['gap_ms'] / 1e3:.1f} s "
          f"({ref['gap_ms']:.0f} ms); compare the gunicorn row (own bind is their setup)")
    for server, r in results["servers"].items():
        kills = (r.get("sigkill") or {}).get("rounds", [])
        early = [k for k in kills if k["running_ms"] - k["first_200_ms"] > 100]
        if early:
            gaps = statistics.median(k["max_gap_ms"] for k in kills)
            print(f"  note: {server}: in {len(early)} of {len(kills)} SIGKILL round(s) the first 200 came before the "
                  f"new master was RUNNING (the old master's orphaned workers answered on the held socket); the "
                  f"longest time without a 200 was {gaps:.0f} ms (median)")
    print_deploy_table(results)
    print(f"  server processes that outlived their daemon: {results['survivors_total']}")


def print_deploy_table(results: dict[str, Any]) -> None:
    """Deploys beside restarts (issue #16): medians, max in brackets where it matters."""
    def med(s: dict[str, Any] | None, key: str, fmt: str = ".0f") -> str:
        return format(s[key]["median"], fmt) if s and s.get(key) else "-"

    def mx(s: dict[str, Any] | None, key: str) -> str:
        return f"{s[key]['max']:.0f}" if s and s.get(key) else "-"

    print("deploys (median; [max] over the rounds; latencies: p50/p99 ms across the action vs the steady load "
          "before it):")
    head = ("row", "failed [max]", "longest gap ms [max]", "steady gap ms", "p50/p99 across", "p50/p99 steady",
            "command ms")
    print("  " + " | ".join(head))
    for server, r in results["servers"].items():
        if r.get("skipped"):
            continue
        rows = [(f"{server}: deploy", r.get("deploy")), (f"{server}: restart (held)", r.get("restart_held")),
                (f"{server}: SIGKILL under load", r.get("sigkill_load"))]
        rows += [(f"{server} under {kind}: restart", s) for kind, s in (r.get("peers") or {}).items()
                 if not s.get("skipped")]
        for label, s in rows:
            print(f"  {label} | {med(s, 'failed')} [{mx(s, 'failed')}] | {med(s, 'gap_ms')} [{mx(s, 'gap_ms')}] | "
                  f"{med(s, 'steady_gap_ms')} | "
                  f"{med(s, 'across_p50_ms', '.1f')}/{med(s, 'across_p99_ms', '.1f')} | "
                  f"{med(s, 'steady_p50_ms', '.1f')}/{med(s, 'steady_p99_ms', '.1f')} | {med(s, 'cli_ms')}")
        m = r.get("memory")
        if m and "peak_rss_mib" in m:
            print(f"  {server}: memory of one generation: RSS {m['rss_mib']:.0f} MiB, PSS {m['pss_mib']:.0f} MiB "
                  f"({m['processes']} processes); both generations during the deploys, peak RSS "
                  f"{m['peak_rss_mib']:.0f} MiB")
        broken = r.get("deploy_broken")
        if broken:
            print(f"  {server}: deploy of a broken release (fails import) | failed {med(broken, 'failed')} | verdict "
                  f"after {broken['cli_ms']['median'] / 1e3:.1f} s | p50/p99 {med(broken, 'across_p50_ms', '.1f')}/"
                  f"{med(broken, 'across_p99_ms', '.1f')}")


# ------------------------------------------------------------------------------------------ memory


def generation_memory(c: Coffeehouse, server: str) -> dict[str, float]:
    """RSS and PSS (MiB) of the serving generation: its master and every descendant."""
    rss = pss = 0
    root = psutil.Process(int(status_row(c, server)["pid"]))
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            m = proc.memory_full_info()
        except psutil.Error:  # exited meanwhile
            continue
        rss, pss = rss + m.rss, pss + m.pss
    return {"processes": len(procs), "rss_mib": rss / 2**20, "pss_mib": pss / 2**20}


@contextmanager
def peak_rss(c: Coffeehouse, server: str, out: dict[str, Any]) -> Iterator[None]:
    """While the body runs, sample every 5 POLL_S the summed RSS of the process trees of the daemon's
    children that run this server (both generations during a deploy); the peak goes into
    out["peak_rss_mib"]."""
    assert c.d.proc is not None
    daemon = psutil.Process(c.d.proc.pid)
    marker = f"/bin/{server}"
    stop = threading.Event()
    peak = [0]

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for master in daemon.children():  # each generation's master, then its whole tree
                try:
                    if marker in " ".join(master.cmdline()):
                        total += sum(p.memory_info().rss for p in (master, *master.children(recursive=True)))
                except psutil.Error:  # exited meanwhile
                    pass
            peak[0] = max(peak[0], total)
            stop.wait(POLL_S * 5)

    thread = threading.Thread(target=sample, daemon=True, name="peak-rss")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        out["peak_rss_mib"] = peak[0] / 2**20


# ------------------------------------------------------------------------------------------- peers


def peer_restarts(c: Coffeehouse, bench: Bench, rounds: int) -> dict[str, Any]:
    """The same gunicorn (conf.d/gunicorn.toml's command, the same release directory and database)
    under supervisord (it binds its port: supervisord holds no socket for a [program]) and circus (its
    held socket, use_sockets), each `restart` under the same load: their figures beside procguard's."""
    with open(c.d.work / "conf.d" / "gunicorn.toml", "rb") as f:
        table = tomllib.load(f)["program"][program("gunicorn")]
    argv = [a.replace("{here}/..", str(c.d.work)) for a in table["command"]]
    bind = argv.index("--bind") + 1
    database = table["environment"]["COFFEEHOUSE_DB"]
    out: dict[str, Any] = {}
    for kind, held in (("supervisord", False), ("circus", True)):
        missing = peer_missing(kind)
        if missing is not None:
            out[kind] = {"skipped": missing}
            print(f"  peer {kind}: skipped: {missing}", flush=True)
            continue
        port = free_port()
        peer_argv = list(argv)
        peer_argv[bind] = f"fd://{HELD_FD}" if held else f"127.0.0.1:{port}"
        prog = Program(name="web", argv=("/usr/bin/env", f"COFFEEHOUSE_DB={database}", *peer_argv),
                       directory=str(c.d.work / "current"), held_socket="web" if held else None,
                       stdout=str(c.d.work / "logs" / f"peer-{kind}.log"), stopwaitsecs=15.0)
        system = make(kind, bench, f"coffeehouse-{kind}", [prog], {"web": port} if held else None)
        system.start()
        label = f"restart under {kind} ({'held socket' if held else 'gunicorn binds'})"
        runs: list[dict[str, Any]] = []
        try:
            poll_until(lambda: system.serving(port, "localhost"), 120,
                       f"{kind}: the coffeehouse gunicorn answering", interval_s=0.1)
            system.wait_control()
            for i in range(rounds):
                runs.append(peer_restart_once(system, port, label))
                print(load_line(label, i, runs[-1]), flush=True)
        finally:
            system.children()  # record them for the bench's cleanup
            system.terminate(60)
        out[kind] = summarize(runs, LOAD_KEYS) | {"held": held}
    return out


def peer_restart_once(system: System, port: int, label: str) -> dict[str, Any]:
    """`<peer>ctl restart web` under the load: the same figures as action_under_load."""
    with Load(port, CLIENT_THREADS, CLIENT_INTERVAL_S, CLIENT_TIMEOUT_S, host="localhost") as load:
        poll_until(lambda: load.ok_done_after(load.started) >= STEADY_OK, 120, f"{label}: steady requests",
                   interval_s=POLL_S)
        t0 = time.monotonic()
        system.run_ctl("restart", "web")
        t1 = time.monotonic()
        system.children()
        poll_until(lambda: load.ok_done_after(t1) >= POST_OK, 120, f"{label}: requests after", interval_s=POLL_S)
    hits = list(load.hits)
    # The transition ends with the first 200 after the command returned (supervisord's and circus's
    # restart return before the new gunicorn answers).
    t_done = min((h.done for h in hits if h.ok and h.done >= t1), default=t1)
    return transition(hits, t0, t1, t_done)


def run(only: tuple[str, ...], args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    rounds = 1 if args.quick else 5
    results = begin("app-server", args, f", {rounds} round(s)", rounds=rounds,
                    load={"threads": CLIENT_THREADS, "interval_s": CLIENT_INTERVAL_S, "timeout_s": CLIENT_TIMEOUT_S,
                          "pre_ok": PRE_OK, "post_ok": POST_OK},
                    probe={"interval_s": PROBE_INTERVAL_S, "timeout_s": PROBE_TIMEOUT_S, "post_ok": POST_OK},
                    reference=REFERENCE, servers={}, harness_errors={})
    print(f"load: {CLIENT_THREADS} threads, GET / every {CLIENT_INTERVAL_S * 1e3:.0f} ms each on a new connection, "
          f"{CLIENT_TIMEOUT_S:g} s timeout; {PRE_OK} answered before each action, {POST_OK} after\n", flush=True)
    for server in only:
        out: dict[str, Any] = {}
        results["servers"][server] = out
        reason = why_missing(server)
        if reason is not None:
            out["skipped"] = reason
            print(f"{server}: skipped: {reason}\n", flush=True)
            continue
        try:
            bench_server(server, rounds, out, bench)
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
    # bench_main owns --quick and --json; --only is this script's own, parsed first.
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--only", metavar="SERVER[,SERVER]")
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
                      "those, in that order.",
                      "1 round per figure instead of 5 (~20 s per server instead of ~2 min)", partial(run, only), rest)


if __name__ == "__main__":
    sys.exit(main())
