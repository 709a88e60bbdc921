"""Give the free pages malloc keeps back to the kernel after a burst of work (glibc's malloc_trim).

glibc keeps freed memory in its arenas: only the free space at an arena's top is returned, and only
past a threshold that grows with the sizes seen. After a burst of control requests the daemon held
5-7 MiB of free pages (most in one non-main arena, likely libzmq's I/O thread's, which allocates every
incoming frame), a different amount after each burst, so its RSS wandered by +-2 MiB and seemed to
grow; malloc_trim(0) also returns the free pages inside the arenas (madvise MADV_DONTNEED). Measured in
benchmarks/RESULTS.md, "Proof runs" (issue #20), control-socket load.
"""

import ctypes

_trim: "ctypes._FuncPointer | None"
try:
    _trim = ctypes.CDLL(None).malloc_trim  # glibc only: musl and others have no such call
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int
except AttributeError:
    _trim = None


def trim_heap() -> bool:
    """Return malloc's free pages to the kernel; False where libc cannot (not glibc)."""
    if _trim is None:
        return False
    _trim(0)
    return True
