"""The pieces of bench_servers.py, along what each measures: actions (one action and what the clients saw),
rounds (a daemon of its own, rounds of one action), memory, peers (the same gunicorn under supervisord and
circus), report (the summary tables). bench_servers.py's docstring says how every figure is measured."""
