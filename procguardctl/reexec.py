"""`procguardctl reexec`: after the daemon's reply, wait until the re-executed image answers."""

import sys
import time
from typing import Any

from procguard.protocol import ClientSettings
from procguardctl.client import TimedOut, Unreachable, request

# The new image answers once it has adopted every process; the connection waits in the socket's backlog.
WAIT_S = 60.0
RETRY_S = 0.05


def wait_for_new_image(where: ClientSettings, result: dict[str, Any]) -> int:
    """Print the versions once the daemon answers again (exit 0), or why it does not (exit 1)."""
    deadline = time.monotonic() + WAIT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = request(where.endpoint, "version", {}, max(0.1, deadline - time.monotonic()),
                            where.server_public_key_file, where.client_secret_key_file)
        except (Unreachable, TimedOut) as exc:  # the old image's connection closed as it exec'd: again
            last = str(exc)
            time.sleep(RETRY_S)
            continue
        if reply.ok:
            print(f"procguard (pid {reply.result.get('pid')}) re-executed: {result.get('version')} -> "
                  f"{reply.result.get('version')}")
            return 0
        last = reply.message or ""
        break
    print(f"procguardctl: the re-executed daemon did not answer: {last}", file=sys.stderr)
    return 1
