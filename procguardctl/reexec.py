"""`procguardctl reexec`: after the daemon's reply, wait until the re-executed image answers."""

import sys
import time
from typing import Any

from procguardctl.client import TimedOut, Unreachable, request
from procguardctl.endpoint import ClientSettings

# The new image answers once it has adopted every process; the connection waits in the socket's backlog.
WAIT_S = 60.0
RETRY_S = 0.05


def wait_for_new_image(where: ClientSettings, result: dict[str, Any]) -> int:
    """Print the versions once the daemon answers again (exit 0), or why it does not (exit 1)."""
    deadline = time.monotonic() + WAIT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            reply = request(where, "version", {}, max(0.1, deadline - time.monotonic()))
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
