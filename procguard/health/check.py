"""Run one health check on the event loop, and say why it failed: the runner over the check types.

Each type has its module: http.py, tcp.py, uwsgi.py, exec.py (connect.py is how the first three reach
their service).

`run_check` never blocks the loop and never raises (only cancellation propagates): every outcome,
including a hung server or a broken reply, is a `CheckResult` whose `reason` an operator can act on.
Scheduling (interval, retries, start_period) and what to do about the result belong to the caller.
"""

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from procguard.config.model import HealthCheckConfig, HealthCheckType
from procguard.health.connect import ROUTE
from procguard.health.failed import CheckAnswered, CheckFailed
from procguard.runtime.seam import CheckRoute, CommandSpawner


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: `reason` is "" when ok, else short and specific."""

    ok: bool
    reason: str
    duration_s: float
    # The server answered, and its answer fails the check (an HTTP status not expected): a definite
    # "no", unlike a refused connection or a timeout (a server may still be binding or booting).
    answered: bool = False


async def run_check(
    hc: HealthCheckConfig,
    *,
    uid: int | None = None,
    gid: int | None = None,
    extra_groups: tuple[int, ...] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    spawner: "CommandSpawner | None" = None,
    route: CheckRoute | None = None,
) -> CheckResult:
    """Run `hc` once, bounded by `hc.timeout`.

    uid, gid, extra_groups, env (default: only PATH) and cwd apply to exec checks: the command runs
    as the program's user. Never raises except CancelledError; on cancel or timeout, sockets are
    closed and an exec check's whole process group is killed and reaped before returning.
    spawner: how exec checks start their command and learn its exit. The daemon passes
    RealOS.spawn_command, because its reaper (waitpid(-1)) owns every child's status; without one,
    spawn.spawn_watched waits for it in a thread (fine outside the daemon).
    route: the check is of a next generation (docs/deploys.md): its connections take the route that
    reaches that generation rather than the current one (every connect below reads it from ROUTE).
    """
    ROUTE.set(route)
    started = time.monotonic()
    deadline = asyncio.timeout(hc.timeout)
    try:
        async with deadline:
            # Each type's module is imported by its first check: a daemon loads only the kinds it runs (#17).
            if hc.type == HealthCheckType.HTTP:
                from procguard.health.http import check_http
                await check_http(hc)
            elif hc.type == HealthCheckType.TCP:
                from procguard.health.tcp import check_tcp
                await check_tcp(hc)
            elif hc.type == HealthCheckType.UWSGI:
                from procguard.health.uwsgi import check_uwsgi
                await check_uwsgi(hc)
            elif hc.type == HealthCheckType.EXEC:
                from procguard.health.exec import check_exec
                await check_exec(hc, uid=uid, gid=gid, extra_groups=extra_groups, env=env, cwd=cwd,
                                 spawner=spawner)
            else:
                raise CheckFailed(f"unknown check type {hc.type!r}")
        reason = ""
        answered = False
    except CheckFailed as exc:
        reason = str(exc)
        answered = isinstance(exc, CheckAnswered)
    except TimeoutError:
        answered = False
        if not deadline.expired():  # TimeoutError is an OSError: a socket's own ETIMEDOUT
            reason = "connection timed out"
        else:
            reason = f"timed out after {_seconds(hc.timeout)}"
    except Exception as exc:  # boundary: callers rely on a result, and a bug here must not stop supervision
        reason = f"internal error: {type(exc).__name__}: {exc}"
        answered = False
    return CheckResult(ok=not reason, reason=reason, duration_s=time.monotonic() - started, answered=answered)


def _seconds(value: float) -> str:
    return f"{value:g}s"

