"""procguardctl must start fast: importing it loads no daemon module and nothing heavy."""

import json
import subprocess
import sys


def test_procguardctl_imports_nothing_heavy():
    code = (
        "import sys, json; import procguardctl.__main__, procguardctl.client; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    loaded = set(json.loads(out))
    heavy = {"psutil", "structlog", "asyncio", "procguard.config", "procguard.supervisor", "procguard.osapi",
             "procguard.process", "procguard.control", "zmq.asyncio", "tomllib",
             # procguardctl top's screen library and module are for top only; metrics are the daemon's.
             "curses", "_curses", "procguardctl.top", "prometheus_client", "procguard.metrics"}
    assert not (loaded & heavy), sorted(loaded & heavy)
