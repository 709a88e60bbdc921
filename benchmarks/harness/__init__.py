"""The one harness every benchmark uses: a run's lifecycle (run.py), /proc and child processes (procs.py),
a procguard daemon and its JSON log (daemon.py), procguard, supervisord and circus behind one interface
(peers.py), status over the wire (probes.py), HTTP load (load.py) and figures (stats.py).

Nothing here asserts speed: a benchmark prints figures and fails only when it cannot measure (BenchError).
"""
