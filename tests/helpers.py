"""Shared test helpers: probe programs, config snippets, and a real daemon run in a temp directory.

The daemon itself (start, socket, stop, survivors) is procguard.testing.RealDaemon, and DaemonRun
(procguard.testing.run) adds the temp directory, config header and the probes' reports; benchmarks
share both.
"""

import json
import sys
from pathlib import Path

from procguard.testing import CTL, alive, free_port, wait_until
from procguard.testing.run import DaemonRun

__all__ = ["CTL", "PROBE", "REPO", "DaemonRun", "alive", "catches", "free_port", "probe", "prog", "toml_list", "wait_until"]

REPO = Path(__file__).resolve().parent.parent
PROBE = str(REPO / "tests" / "programs" / "probe.py")


def probe(d: "str | Path", name: str, mode: str = "sleep", **kw: object) -> list[str]:
    """The argv of a probe child writing into directory d."""
    argv = [sys.executable, PROBE, "--dir", str(d), "--name", name, "--mode", mode]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    return argv


def catches(pid: int, sig: int) -> bool:
    """True once process pid has a handler installed for sig (SigCgt in /proc/PID/status, proc(5))."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def toml_list(argv: list[str]) -> str:
    return json.dumps(argv)


def prog(name: str, argv: list[str], **keys: object) -> str:
    lines = [f"[program.{name}]", f"command = {toml_list(argv)}"]
    for k, v in keys.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v}")
        elif isinstance(v, dict):
            inner = ", ".join(f'{ik} = "{iv}"' for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        elif isinstance(v, list):
            lines.append(f"{k} = {v!r}".replace("'", '"'))
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n\n"
