"""procguard's benchmarks: `python -m benchmarks` runs the side-by-side suite (issue #9); the bench_*.py
scripts run on their own; all of them use one harness (benchmarks/harness/)."""
