"""The daemon's thread pool for `asyncio.to_thread`: threads only while there is blocking work.

asyncio's default ThreadPoolExecutor keeps every worker it ever started until the loop closes: after
start-up (Popen runs in a thread, as trio does) an idle daemon held 6 threads doing nothing, each a
stack and a malloc arena (benchmarks/RESULTS.md, "Idle memory and threads"). Here a worker leaves
once it has waited IDLE_EXIT_S without work, so an idle daemon holds none; the next spawn starts one
again (tens of microseconds, beside a fork/exec of a millisecond or more).
"""

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

IDLE_EXIT_S = 1.0
# The standard pool's default (concurrent.futures.thread): enough for the burst of spawns at start-up.
MAX_WORKERS = 6


class IdleExitPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor (asyncio accepts only those as its default) whose idle workers exit.

    Contract as ThreadPoolExecutor's: every submitted call runs once, in submission order of pick-up,
    on at most `max_workers` threads; shutdown(wait=True) returns after queued calls ran (or were
    cancelled with cancel_futures) and every worker ended.
    """

    def __init__(self, max_workers: int = MAX_WORKERS, idle_exit_s: float = IDLE_EXIT_S,
                 thread_name_prefix: str = "procguard-pool") -> None:
        # The base class only records its arguments; none of its own machinery (queue, threads) is used.
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._limit = max_workers
        self._idle_exit_s = idle_exit_s
        self._prefix = thread_name_prefix
        self._cond = threading.Condition()
        self._work: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._workers: set[threading.Thread] = set()
        self._waiting = 0  # workers inside cond.wait (notified or not): each will look at the queue
        self._closed = False
        self._started = 0

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.append((future, lambda: fn(*args, **kwargs)))
            # Every waiting worker takes one item when it wakes; start a thread only for the surplus.
            if self._waiting >= len(self._work):
                self._cond.notify()
            elif len(self._workers) < self._limit:
                self._started += 1
                t = threading.Thread(target=self._run, name=f"{self._prefix}_{self._started}", daemon=True)
                self._workers.add(t)
                t.start()
            # else: every worker is busy and the pool is full; the first one free takes it.
        return future

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while not self._work:
                    if self._closed:
                        self._workers.discard(me)
                        self._cond.notify_all()  # shutdown waits for the set to empty
                        return
                    self._waiting += 1
                    try:
                        woken = self._cond.wait(self._idle_exit_s)
                    finally:
                        self._waiting -= 1
                    if not woken and not self._work:
                        self._workers.discard(me)  # under the lock: submit starts another if needed
                        if self._closed:
                            self._cond.notify_all()  # shutdown waits for the set to empty
                        return
                future, call = self._work.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting caller, as ThreadPoolExecutor does
                future.set_exception(exc)
                del exc
            else:
                future.set_result(result)
            del future, call

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._closed = True
            if cancel_futures:
                while self._work:
                    self._work.popleft()[0].cancel()
            self._cond.notify_all()
            if wait:
                while self._workers:
                    self._cond.wait()

    def threads(self) -> int:
        """Workers alive now (statistics for tests and benchmarks)."""
        with self._cond:
            return len(self._workers)
