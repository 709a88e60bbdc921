"""The daemon's own stdout or stderr as a destination of child output (`inherit`, `journal`)."""

import os
import threading
import time
from collections import deque

from procguard.runtime.executor import IDLE_EXIT_S

INHERIT_QUEUE_BYTES = 8 << 20  # what may wait for a slow daemon stdout/stderr before bytes are dropped


class InheritWriter:
    """The daemon's own stdout or stderr for `inherit`/`journal` output, written by a thread.

    A blocking write to a stalled journal or a full terminal pipe must not stop the event loop; what
    does not fit in the queue (INHERIT_QUEUE_BYTES) is dropped and counted by the caller.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._broken = False

    def write(self, data: bytes) -> bool:
        with self._cond:
            if self._broken or self._queued + len(data) > INHERIT_QUEUE_BYTES:
                return False
            self._queue.append(data)
            self._queued += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"inherit-fd{self.fd}", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    # Idle: leave (write starts another); an idle daemon keeps no thread (#17).
                    if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                        self._thread = None
                        return
                data = self._queue.popleft()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                with self._cond:
                    self._broken = True  # EPIPE or a closed fd: nothing more can go there
            with self._cond:
                self._queued -= len(data)
                self._cond.notify_all()

    def flush(self, timeout_s: float) -> None:
        """Wait (blocking) until the queue is written, at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queued and not self._broken:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
