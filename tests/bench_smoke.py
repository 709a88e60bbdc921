"""Run a benchmark script the way the smoke tests do: a hang guard that lets it clean up (issue #15)."""

import subprocess
import sys

from tests.helpers import REPO


def run_bench(*args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in the checkout, its output captured. Past timeout_s (a hang guard on a loaded box, not a
    speed limit) it gets SIGTERM, which unwinds it through its cleanup (every daemon it started stopped,
    every child killed, its temp dir removed; SIGKILL only if that takes 180 s), and the test fails."""
    p = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            out, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        raise AssertionError(f"{' '.join(args)}: no exit within {timeout_s:g} s; SIGTERM sent, it exited "
                             f"{p.returncode}\n{out[-6000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
