"""One action on a coffeehouse server and what the clients saw: a command (restart, reload-app, deploy) or a
SIGKILL under the bounded load, or a SIGKILL probed one request at a time (bench_servers.py's docstring says
how each is measured)."""

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks.harness.daemon import LogTail, parse_ts
from benchmarks.harness.load import Hit, Load, error_counts, get_once, longest_gap_ms, recovered_at, transition
from benchmarks.harness.run import BenchError, poll_until
from procguard.testing.demo import Coffeehouse, program

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


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How much a run measures: rounds per figure, requests answered around each action, the stable wait."""

    rounds: int
    pre_ok: int = PRE_OK
    steady_ok: int = STEADY_OK
    post_ok: int = POST_OK
    stable_wait: bool = True  # SIGKILL only a master up backoff_reset (else its backoff is in the figures)


PLANS = {
    "full": Plan(rounds=5),
    "quick": Plan(rounds=1),
    # The test suite's: every figure once, 10 requests around each action, no stable wait before a SIGKILL.
    "smoke": Plan(rounds=1, pre_ok=10, steady_ok=10, post_ok=10, stable_wait=False),
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
                      steady_ok: int = PRE_OK, post_ok: int = POST_OK) -> dict[str, Any]:
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
        poll_until(lambda: load.ok_done_after(t_done) >= post_ok, 60,
                   f"{server}: {post_ok} requests answered after {verb}", interval_s=POLL_S)
    hits = list(load.hits)
    return {
        **transition(hits, t0, t1, t_done),
        "failed_before_action": sum(1 for h in hits if not h.ok and h.done < t0),
        "old_pid": old_pid,
        "new_pid": new_pid,
        "reply": reply,
    }


# ----------------------------------------------------------------------------------------- SIGKILL


def sigkill_once(c: Coffeehouse, server: str, post_ok: int = POST_OK) -> dict[str, Any]:
    """SIGKILL the master; probe until the replacement is RUNNING and answered post_ok probes."""
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
    while running is None or sum(1 for h in hits if h.ok and h.done >= running_at) < post_ok:
        if time.monotonic() - t_kill > SIGKILL_TIMEOUT_S:
            raise BenchError(f"{server}: no new RUNNING master answering {post_ok} probes within "
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
