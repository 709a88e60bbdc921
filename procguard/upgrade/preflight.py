"""`python -m procguard.upgrade.preflight -c CONFIG --state-format N`: can the installed procguard take over?

Run by the daemon in a child before a re-exec (handoff.py), with the daemon's interpreter, environment
and directory, so it imports what the exec would. Exit 0 when the whole daemon imports, the config
loads (as `procguard --check` loads it) and state format N is readable; else exit 1 saying why.
"""

import argparse
import importlib
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procguard.upgrade.preflight")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--state-format", type=int, required=True)
    args = parser.parse_args(argv)
    for module in ("procguard.daemon", "procguard.upgrade.adopt"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure to import is the answer
            print(f"cannot import {module}: {type(exc).__name__}: {exc}")
            return 1
    from procguard.config.load import load_config
    from procguard.errors import ConfigError
    from procguard.protocol import VERSION
    from procguard.upgrade.state import READABLE, readable

    if not readable(args.state_format):
        print(f"procguard {VERSION} reads state formats {sorted(READABLE)}, not {args.state_format}")
        return 1
    try:
        load_config(args.config)
    except ConfigError as exc:
        print(f"procguard {VERSION} refuses config {args.config}:")
        for issue in exc.issues:
            print(f"  {issue}")
        return 1
    print(f"procguard {VERSION} can take over")
    return 0


if __name__ == "__main__":
    sys.exit(main())
