"""The pieces of bench_output.py: stream.py (the child's stream and the byte-for-byte check), sides.py (the
ways of capturing it), run.py (one timed run). bench_output.py's docstring says how every figure is measured."""
