"""The workloads of `python -m benchmarks`, each run on procguard, supervisord and circus, interleaved.

Every workload (a module each; model.py holds the sizes per mode and the figures) starts real daemons
(harness/peers.py) on identical programs and records samples per system and figure. Nothing asserts
speed: a workload fails only if it cannot measure. Interleaved: every system takes its turn in a round,
the order rotating between rounds, so load from elsewhere lands on all of them alike.

1. respawn: SIGKILL a child that appends time.monotonic_ns() as its first action; time until the
   replacement has exec'd (/proc polled every 0.5 ms) and until the stamp. Kills spread evenly over one
   second of phase (0.05 + (i + 0.5) / k s after the previous replacement is up), so a periodic loop
   (circus's 1 s check_delay) is sampled at every phase. k = 12 (--quick: 3).
2. status: N programs of `sleep 100000`, all daemons up. Each CLI (`procguardctl -s E status`,
   `supervisorctl -c CONF status`, `circusctl --endpoint E status`) from Popen to exit (a pidfd), each
   run exiting 0 with N lines, also divided by a `python -c pass` run just before it (a ratio that holds
   on a loaded machine); at N = 50 each `--help` too (issue #17). Then the server side: one client here
   (probes.StatusProbe), requests 5 ms apart, each reply checked for N entries. N = 50 and 1000 (--quick:
   200); 10 CLI runs and 30 requests per system (--quick: 3 and 10).
3. start-up: daemon Popen until psutil sees N exec'd `sleep 100000` children. N = 100 (5 rounds) and
   1000 (3 rounds; --quick: one round each, N = 100 and 200), one daemon starting at a time.
4. idle: the three N = 100 daemons up, settled, one window (30 s; --quick 3 s) of schedstat (ns) and
   psutil (ticks) CPU per daemon; then RSS and USS.
5. shutdown: SIGTERM to a daemon with 100 children (--full also 1000) until it has exited and every
   child is gone; a child alive 1 s after the daemon is a survivor (counted, killed). Every other daemon
   the suite stops is stopped the same way, its survivors counted too.
6. output: bench_output.py's workload on each system (--full adds procguard with timestamps and the
   direct-to-file reference). 1 GiB per run, 3 rounds (--quick: 100 MiB, 2 rounds).
7. restart under load: gunicorn (2 sync workers, tests/servers/wsgi_app.py); 4 client threads, one
   request per 10 ms each on a new connection, 5 s timeout; after `pre` seconds the CLI's restart, then
   until the new master answers plus `post` seconds (1 s and 1 s; --quick 0.3 s), 5 rounds (--quick 1).
   Failed = refused, reset, timed out or not 200. Configurations: procguard and circus each with a held
   socket and with gunicorn binding the port; supervisord (binds).

Config choices that could favour a side are listed in RESULTS.md.
"""

from collections.abc import Callable

from benchmarks.suite.fleet import phase_fleet
from benchmarks.suite.model import FULL, MODES, QUICK, SMOKE, WORKLOAD_PHASES, Ctx, Figure, Params, Results
from benchmarks.suite.output import phase_output
from benchmarks.suite.respawn import phase_respawn
from benchmarks.suite.restart import phase_restart
from benchmarks.suite.status import phase_status

PHASES: dict[str, Callable[[Ctx], None]] = {
    "respawn": phase_respawn,
    "fleet": phase_fleet,
    "status": phase_status,
    "output": phase_output,
    "restart": phase_restart,
}

__all__ = ["FULL", "MODES", "PHASES", "QUICK", "SMOKE", "WORKLOAD_PHASES", "Ctx", "Figure", "Params", "Results"]
