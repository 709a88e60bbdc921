"""Entry point of the daemon (`procguard` and `python -m procguard`)."""

import sys


def main() -> int:
    # The daemon never speaks TLS, but asyncio imports ssl (and OpenSSL) eagerly: 5.5 MiB of RSS on a
    # 1 GiB server (measured: 26.6 -> 21.1 MiB for `import procguard.daemon`). asyncio treats a failed
    # `import ssl` as "no TLS support". setdefault: an interpreter that already loaded ssl keeps it.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    # structlog (loaded for the console log format only) imports its Twisted integration, and Twisted,
    # whenever Twisted is installed (daphne brings it into the same venv): 4.6 MiB the daemon never uses.
    sys.modules.setdefault("twisted", None)  # type: ignore[arg-type]
    from procguard.daemon import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
