"""`python -m procguard.upgrade.preflight -c CONFIG --state-format N`: can the installed procguard take over?

Run by the daemon in a child before a re-exec (handoff.py), with the daemon's interpreter, environment
and directory, so it imports what the exec would. Exit 0 when the whole daemon imports, the config
loads (as `procguard --check` loads it) and state format N is readable; else exit 1 saying why.
With --carry-fd, the Config it loaded goes into that descriptor for the next image (carried.py).
"""

import argparse
import importlib
import pickle
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procguard.upgrade.preflight")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--state-format", type=int, required=True)
    parser.add_argument("--carry-fd", type=int, help="write the loaded config here for the next image")
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
    from procguard.upgrade import carried
    from procguard.upgrade.state import READABLE, readable

    if not readable(args.state_format):
        print(f"procguard {VERSION} reads state formats {sorted(READABLE)}, not {args.state_format}")
        return 1
    try:
        config, fingerprint = carried.load_recorded(lambda: load_config(args.config))
    except ConfigError as exc:
        print(f"procguard {VERSION} refuses config {args.config}:")
        for issue in exc.issues:
            print(f"  {issue}")
        return 1
    if args.carry_fd is not None:
        with open(args.carry_fd, "wb") as out:
            try:
                carried.write(out, config, fingerprint)
            except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:  # the next image then loads the config itself
                out.truncate(0)
                print(f"the parsed config cannot be carried over ({exc}); the next image will load it")
    print(f"procguard {VERSION} can take over")
    return 0


if __name__ == "__main__":
    sys.exit(main())
