"""procguard's benchmarks: `python -m benchmarks` runs the side-by-side suite (issue #9).

The bench_*.py scripts beside this file also run on their own as scripts, importing each other as
top-level modules (`from bench_engine import ...`). Putting this directory on sys.path here makes the
suite import them the same way, so each is loaded once and `BenchError` is one class everywhere.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
