"""The daemon's to_thread pool: every call runs, at most max_workers threads, none left when idle (#17)."""

import asyncio
import threading
import time

import pytest

from procguard.runtime.executor import IdleExitPool
from tests.helpers import wait_until


def test_pool_runs_every_call_on_bounded_threads_and_empties_when_idle():
    pool = IdleExitPool(max_workers=3, idle_exit_s=0.05)
    seen: set[str] = set()

    def work(i: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.002)
        return i * i

    futures = [pool.submit(work, i) for i in range(40)]
    assert [f.result(timeout=30) for f in futures] == [i * i for i in range(40)]
    assert 1 <= len(seen) <= 3
    wait_until(lambda: pool.threads() == 0, what="idle workers to leave")
    # Work after the pool emptied starts a thread again.
    assert pool.submit(work, 7).result(timeout=30) == 49
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 // 0).result(timeout=30)
    pool.shutdown(wait=True)
    assert pool.threads() == 0
    with pytest.raises(RuntimeError):
        pool.submit(work, 1)


def test_shutdown_runs_what_was_queued():
    pool = IdleExitPool(max_workers=1, idle_exit_s=5.0)
    gate = threading.Event()
    first = pool.submit(gate.wait, 30)
    queued = [pool.submit(lambda i=i: i) for i in range(5)]
    threading.Timer(0.05, gate.set).start()
    pool.shutdown(wait=True)
    assert first.result(timeout=0) is True and [f.result(timeout=0) for f in queued] == list(range(5))


def test_asyncio_uses_it_as_the_default_executor():
    async def main() -> list[int]:
        asyncio.get_running_loop().set_default_executor(IdleExitPool(max_workers=2, idle_exit_s=0.05))
        return list(await asyncio.gather(*(asyncio.to_thread(pow, i, 2) for i in range(10))))

    assert asyncio.run(main()) == [i * i for i in range(10)]
