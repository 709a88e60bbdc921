"""The workloads of `python -m benchmarks`, each run on procguard, supervisord and circus, interleaved.

Every workload (a module of this package each; model.py holds the sizes per mode and the figures)
starts real daemons (harness/peers.py) on identical programs and records, per system, a list of samples
for each figure; __main__.py prints min / median / max and the procguard / peer ratio of the medians.
Nothing here asserts speed: a workload fails only if it cannot measure (a daemon that does not start, a
child that never appears, a CLI that errs), and the suite's exit status then says so.
Interleaved means: within a round every system takes its turn, and the order rotates from round to
round, so a burst of load from elsewhere on the machine lands on all of them alike.

1. respawn: one program whose child appends time.monotonic_ns() to a file as its first action, then
   sleeps. SIGKILL it; time until the replacement has exec'd (its argv shows in /proc, polled every
   0.5 ms) and until its first instruction (the stamp). Kills are spread evenly over one second of
   phase (0.05 + (i + 0.5) / k s after the previous replacement is up) so a periodic loop (circus's
   1 s check_delay) is sampled at every phase instead of always the same one. k = 12 (--quick: 3).
2. status: N programs of `sleep 100000`, all three daemons up at once; the CLI (`procguardctl -s E
   status`, `supervisorctl -c CONF status`, `circusctl --endpoint E status`) from Popen to exit (a
   pidfd, as bench_control.py), each run must exit 0 and print N lines; then the server side: one
   client in this process (peers.StatusProbe), requests 5 ms apart, each reply checked for N entries.
   At N = 50 and N = 1000 (--quick: 200). 10 CLI runs and 30 requests per system (--quick: 3 and 10).
   Every CLI run is also divided by a `python -c pass` of the same interpreter run just before it (the
   floor of any Python CLI: a ratio that holds on a loaded machine), and at N = 50 each CLI's `--help`
   is timed the same way (issue #17).
3. start-up: daemon Popen until psutil sees N children of the daemon that have exec'd `sleep 100000`.
   N = 100 (5 rounds) and N = 1000 (3 rounds; --quick: one round each, N = 100 and 200). One daemon
   at a time is starting; the others are idle or stopped.
4. idle: the three N = 100 daemons up at once, settled, then one window (30 s; --quick 3 s) over which
   each daemon's CPU is read from /proc/PID/task/*/schedstat (ns) and psutil (ticks); then RSS and USS.
5. shutdown: SIGTERM to a daemon with 100 children until it has exited and every child is gone;
   a child still alive 1 s after the daemon exited is a survivor (counted, then killed). Also timed
   with 1000 children (--full only). Every other daemon the suite stops (no figure) is stopped the
   same way, several at once, and its survivors are counted too.
6. output: bench_output.py's workload (one child, 64 KiB writes of 100-byte lines, FIFO start, the
   capture verified byte for byte) on procguard, supervisord and circus (and, --full, procguard with
   timestamps and the direct-to-file reference). 1 GiB per run, 3 rounds (--quick: 100 MiB, 2 rounds).
7. restart under load: gunicorn (2 sync workers, tests/servers/wsgi_app.py) on a loopback port; 4
   client threads, each one request per 10 ms (at most 400/s), a new connection per request, 5 s
   timeout; after `pre` seconds the CLI's restart, then until the new master answers plus `post`
   seconds (1 s and 1 s; --quick 0.3 s), 5 rounds (--quick 1), the configurations interleaved.
   Failed = refused, reset, timed out or not 200. Configurations: procguard with a held
   socket, procguard with gunicorn binding the port, supervisord (binds), circus with a held socket
   ([socket:web] + use_sockets) and circus with gunicorn binding the port.

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
