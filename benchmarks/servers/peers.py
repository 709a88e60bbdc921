"""The coffeehouse gunicorn under supervisord and circus, restarted under the same load as procguard's."""

import time
import tomllib
from typing import Any

from benchmarks.harness.load import Load, transition
from benchmarks.harness.peers import HELD_FD, Program, System, make, peer_missing
from benchmarks.harness.run import Bench, poll_until
from benchmarks.harness.stats import summarize
from benchmarks.servers.actions import CLIENT_INTERVAL_S, CLIENT_THREADS, CLIENT_TIMEOUT_S, POLL_S, Plan
from benchmarks.servers.rounds import LOAD_KEYS, load_line
from procguard.testing import free_port
from procguard.testing.demo import Coffeehouse, program

# ------------------------------------------------------------------------------------------- peers


def peer_restarts(c: Coffeehouse, bench: Bench, plan: Plan) -> dict[str, Any]:
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
            for i in range(plan.rounds):
                runs.append(peer_restart_once(system, port, label, plan))
                print(load_line(label, i, runs[-1]), flush=True)
        finally:
            system.children()  # record them for the bench's cleanup
            system.terminate(60)
        out[kind] = summarize(runs, LOAD_KEYS) | {"held": held}
    return out


def peer_restart_once(system: System, port: int, label: str, plan: Plan) -> dict[str, Any]:
    """`<peer>ctl restart web` under the load: the same figures as action_under_load."""
    with Load(port, CLIENT_THREADS, CLIENT_INTERVAL_S, CLIENT_TIMEOUT_S, host="localhost") as load:
        poll_until(lambda: load.ok_done_after(load.started) >= plan.steady_ok, 120, f"{label}: steady requests",
                   interval_s=POLL_S)
        t0 = time.monotonic()
        system.run_ctl("restart", "web")
        t1 = time.monotonic()
        system.children()
        poll_until(lambda: load.ok_done_after(t1) >= plan.post_ok, 120, f"{label}: requests after", interval_s=POLL_S)
    hits = list(load.hits)
    # The transition ends with the first 200 after the command returned (supervisord's and circus's
    # restart return before the new gunicorn answers).
    t_done = min((h.done for h in hits if h.ok and h.done >= t1), default=t1)
    return transition(hits, t0, t1, t_done)
