"""The loops that watch one spawn of a process: its health check and its memory guard (max_memory)."""

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from procguard.engine.process import Process
from procguard.engine.states import ProcessState, ReplaceTrigger
from procguard.health.check import run_check
from procguard.log import get_logger
from procguard.runtime.seam import OSApi

log = get_logger()

_WATCHED = (ProcessState.STARTING, ProcessState.RUNNING)


def monitors(proc: Process, osapi: OSApi) -> list[Coroutine[Any, Any, None]]:
    """The loops a new spawn of proc needs (its health check, its resource guard); each ends with the spawn."""
    loops = []
    if proc.program.healthcheck is not None:
        loops.append(health_loop(proc, proc.pid, osapi))
    if proc.program.max_memory is not None:
        loops.append(memory_loop(proc, proc.pid, osapi))
    return loops


async def health_loop(proc: Process, pid: int | None, osapi: OSApi) -> None:
    """Check one spawn of a process every interval (sooner while it is not ready yet)."""
    hc = proc.program.healthcheck
    assert hc is not None
    program = proc.program

    def alive() -> bool:
        return proc.pid == pid and proc.state in _WATCHED

    loop = asyncio.get_running_loop()
    # While starting, check soon and then more slowly (0.1, 0.2, 0.4, 0.5 s ...): a server is
    # rarely listening the instant it is spawned. Once running, every `interval` from the start of
    # the previous check (not its end), with a random offset so programs started together are
    # not checked in lock-step.
    starting_delay = 0.1
    first_running = True
    try:
        await asyncio.sleep(min(hc.interval, 0.05))
        while alive():
            began = loop.time()
            result = await run_check(hc, uid=program.uid, gid=program.gid, extra_groups=program.extra_groups,
                                     env=dict(proc.config.environment), cwd=proc.config.directory,
                                     spawner=osapi.spawn_command, route=osapi.check_route(proc))
            if not alive():  # re-check after the await: it may have been stopped or restarted
                return
            proc.health_check_s = loop.time() - began  # metrics: procguard_process_health_check_seconds
            if not result.ok:
                log.debug("health_check_failed", process=proc.name, pid=pid, reason=result.reason)
            proc.health_result(result.ok, result.reason, answered=result.answered)
            if proc.state == ProcessState.RUNNING:
                delay = hc.interval * (random.uniform(0.5, 1.0) if first_running else 1.0)
                first_running = False
            else:
                delay = min(hc.interval, starting_delay)
                starting_delay = min(0.5, starting_delay * 2)
            await asyncio.sleep(max(0.0, began + delay - loop.time()))
    except Exception:  # task boundary: a checker bug must not go unnoticed, nor kill the daemon
        log.exception("health_loop_failed", process=proc.name)


async def memory_loop(proc: Process, pid: int | None, osapi: OSApi) -> None:
    """Measure the process tree's RSS off the loop every resource_check_interval; recycle above max_memory."""
    limit = proc.program.max_memory
    assert limit is not None and pid is not None
    try:
        while proc.pid == pid and proc.state in _WATCHED:
            rss = await osapi.tree_rss(pid)
            if rss is None or proc.pid != pid:
                return
            if rss > limit and proc.state == ProcessState.RUNNING:
                log.warning("process_recycled", program=proc.program.name, process=proc.name, pid=pid,
                            reason="max_memory", rss_bytes=rss, max_memory_bytes=limit)
                proc.restart(f"max_memory: tree RSS {rss} bytes > {limit}", ReplaceTrigger.MAX_MEMORY)
                return
            await asyncio.sleep(proc.program.resource_check_interval)
    except Exception:  # task boundary
        log.exception("memory_loop_failed", process=proc.name)


__all__ = ["health_loop", "memory_loop", "monitors"]
