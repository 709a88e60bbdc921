"""Rounds of one action on a coffeehouse daemon of its own, each round printed, then their median / max."""

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.harness.run import poll_until
from benchmarks.harness.stats import summarize
from benchmarks.servers.actions import KILL, STABLE_MARGIN_S, Plan, action_under_load, sigkill_once, status_row
from procguard.config.load import load_config
from procguard.testing.demo import Breakage, Coffeehouse, program, start
from procguard.testing.run import DaemonRun

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


def load_rounds(c: Coffeehouse, server: str, verb: str, label: str, plan: Plan, steady: bool = False,
                breakage: Breakage | None = None) -> dict[str, Any]:
    """`plan.rounds` of action_under_load, each after plan.steady_ok answered requests if `steady` (else
    pre_ok). breakage (deploy only): each round deploys a fresh release, Breakage.NONE a good one (it
    stays), another a broken one (expected to fail; `current` is flipped back to the good release
    afterwards)."""
    runs: list[dict[str, Any]] = []
    for i in range(plan.rounds):
        c.wait_healthy(server)
        good = c.current() if c.releases is not None else None
        if breakage is not None:
            c.flip(c.new_release(breakage))
        try:
            runs.append(action_under_load(c, server, verb, expect_ok=breakage in (None, Breakage.NONE),
                                          steady_ok=plan.steady_ok if steady else plan.pre_ok,
                                          post_ok=plan.post_ok))
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


def sigkill_rounds(c: Coffeehouse, server: str, plan: Plan, under_load: bool) -> dict[str, Any]:
    """SIGKILL of the master, each after a stable uptime: under the load (the requests lost; issue #16: a
    crashed master loses none) or probed one request at a time (sigkill_once)."""
    label = "SIGKILL of the master, " + ("under load" if under_load else "held socket")
    stable_s = backoff_reset_s(c, server) + STABLE_MARGIN_S
    runs: list[dict[str, Any]] = []
    for i in range(plan.rounds):
        c.wait_healthy(server)
        if plan.stable_wait:
            wait_stable(c, server, stable_s, f"{label}, round {i + 1}")
        runs.append(k := action_under_load(c, server, KILL, steady_ok=plan.pre_ok, post_ok=plan.post_ok)
                    if under_load else sigkill_once(c, server, plan.post_ok))
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
