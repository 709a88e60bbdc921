"""Issue #20's long runs: the model-based test with many examples, and the soak.

    python -m benchmarks model [--examples 500] [--steps 15] [--seed N]
    python -m benchmarks soak --minutes N [--programs 6] [--json OUT]

`model` runs tests/integration/test_model.py with more examples (and a random seed unless given);
`soak` is benchmarks/soak.py. Both print what they found; neither asserts a speed.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_model(args: argparse.Namespace) -> int:
    env = {**os.environ, "PROCGUARD_MODEL_EXAMPLES": str(args.examples), "PROCGUARD_MODEL_STEPS": str(args.steps),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.seed is not None:
        env["PROCGUARD_MODEL_SEED"] = str(args.seed)
    else:
        env.setdefault("PROCGUARD_MODEL_SEED", "random")
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests" / "integration" / "test_model.py"), "-x", "-q",
           "-p", "no:cacheprovider", "--hypothesis-show-statistics"]
    if args.seed is not None:
        cmd.append(f"--hypothesis-seed={args.seed}")
    print(f"model: {args.examples} examples of up to {args.steps} steps; {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env, cwd=str(REPO))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("model", help="the model-based test with many examples")
    m.add_argument("--examples", type=int, default=500)
    m.add_argument("--steps", type=int, default=15)
    m.add_argument("--seed", type=int)
    s = sub.add_parser("soak", help="the demo programs under load with random faults")
    s.add_argument("--minutes", type=float, required=True)
    s.add_argument("--programs", type=int, default=6)
    s.add_argument("--seed", type=int, default=20)
    s.add_argument("--sample-s", type=float, default=60.0, help="seconds between the daemon's RSS samples")
    s.add_argument("--warmup", type=float, help="minutes before RSS growth counts (default: a third, at most 10)")
    s.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.what == "model":
        return run_model(args)
    from benchmarks.soak import run_soak
    return run_soak(args)
