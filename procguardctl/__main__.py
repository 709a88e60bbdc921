"""procguardctl: the control client. Imports only procguard.protocol (and, with #3, pyzmq)."""

import sys

from procguard.protocol import VERSION


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["version"]):
        print(f"procguardctl {VERSION}")
        return 0
    # TODO(#3): the control socket client. Until then there is nothing to talk to.
    print("procguardctl: the control socket is not implemented yet (issue #3); "
          "use signals: TERM stops, HUP reloads", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
