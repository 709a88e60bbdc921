"""The output benchmark's child stream: the program that writes it, and the byte-for-byte check of a capture.

bench_output.py's docstring says how both are used; this module holds the one generator they share.
"""

import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

READ_BLOCK = 8 << 20
# procguard/io/output.py timestamp(): ISO 8601, milliseconds, UTC offset, then one space.
PREFIX_RE = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d(?::\d\d)? \Z")

# Shared by the child (written to a file) and this script's verifier (exec'd below): one generator.
GEN_SOURCE = r'''
import os, sys, time

LINE_BYTES = 100
BLOCK_LINES = 16384  # 16384 * 100 B = 1,638,400 B = 25 writes of 64 KiB
WRITE_BYTES = 65536
_FILL = (b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)[:86]
# "SSSSSS:" (7 B, the join separator) + "TTTTT " (6 B) + filler (86 B) + "\n" = 100 B per line.
_TAILS = [b""] + [b"%05d " % t + _FILL + b"\n" for t in range(BLOCK_LINES)]


def blocks(n):
    """The child's stream, n bytes, as blocks: every line distinct; the last byte is a newline."""
    s = 0
    left = n
    while left > 0:
        b = (b"%06d:" % s).join(_TAILS)
        if len(b) >= left:
            b = b[:left - 1] + b"\n"
        yield b
        left -= len(b)
        s += 1
'''

CHILD_MAIN = r'''

def main():
    n, side, fifo = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    data = list(blocks(n))  # built before the start signal: generation is outside the figures
    fd = os.open(fifo, os.O_RDONLY)
    os.read(fd, 1)
    os.close(fd)
    t0 = time.monotonic()
    with open(side, "a") as f:
        f.write("start %d %.9f\n" % (os.getpid(), t0))
    for b in data:
        view = memoryview(b)
        for i in range(0, len(b), WRITE_BYTES):
            chunk = view[i:i + WRITE_BYTES]
            while chunk:
                chunk = chunk[os.write(1, chunk):]
    t1 = time.monotonic()
    with open(side, "a") as f:
        f.write("done %.9f %d\n" % (t1, n))


main()
'''
CHILD_SOURCE = GEN_SOURCE + CHILD_MAIN

_gen: dict[str, Any] = {}
exec(GEN_SOURCE, _gen)
stream_blocks: Callable[[int], Iterator[bytes]] = _gen["blocks"]
LINE_BYTES: int = _gen["LINE_BYTES"]


def prefix_len() -> int:
    return len(datetime.now().astimezone().isoformat(timespec="milliseconds")) + 1


def n_lines(n: int) -> int:
    return -(-n // LINE_BYTES)  # every line is 100 bytes but the last, which ends the stream with "\n"


class Expected:
    """The child's stream, consumed front to back in pieces of any size."""

    def __init__(self, n: int) -> None:
        self._blocks = stream_blocks(n)
        self._buf = b""
        self._pos = 0

    def take(self, k: int) -> bytes:
        while len(self._buf) - self._pos < k:
            nxt = next(self._blocks, None)
            if nxt is None:
                break
            self._buf = self._buf[self._pos:] + nxt
            self._pos = 0
        out = self._buf[self._pos:self._pos + k]
        self._pos += len(out)
        return out


class Comparison:
    """Pieces of a capture compared, front to back, with the child's stream: bytes seen, the first mismatch."""

    def __init__(self, n: int) -> None:
        self._expected = Expected(n)
        self.recovered = 0
        self.mismatch_at: int | None = None

    def compare(self, piece: bytes) -> None:
        want = self._expected.take(len(piece))
        if self.mismatch_at is None and want != piece[:len(want)]:
            i = next(i for i, (a, b) in enumerate(zip(want, piece)) if a != b)
            self.mismatch_at = self.recovered + i
        if self.mismatch_at is None and len(want) < len(piece):
            self.mismatch_at = self.recovered + len(want)  # more than the child wrote
        self.recovered += len(piece)


class Unstamper:
    """A stamped capture, block by block, with each line's prefix (plen bytes) stripped; counts the lines,
    those too short for a prefix, and keeps every distinct prefix for checking."""

    def __init__(self, plen: int) -> None:
        self.plen = plen
        self.carry = b""
        self.lines = self.bad_prefix = 0
        self.prefixes: set[bytes] = set()

    def feed(self, block: bytes) -> bytes:
        """The unstamped bytes of the complete lines so far (b"" ends the file: a partial last line too)."""
        data = self.carry + block
        if block:
            cut = data.rfind(b"\n") + 1
            data, self.carry = data[:cut], data[cut:]
        else:
            self.carry = b""
        if not data:
            return b""
        plen = self.plen
        parts = data.split(b"\n")
        last = parts.pop()  # b"" after a final newline; a partial last line at EOF otherwise
        self.prefixes.update(p[:plen] for p in parts)
        self.bad_prefix += sum(1 for p in parts if len(p) < plen)
        self.lines += len(parts)
        body = b"\n".join(p[plen:] for p in parts) + b"\n" if parts else b""
        if last:
            self.lines += 1
            self.prefixes.add(last[:plen])
            body += last[plen:]
        return body

    def count_bad_prefixes(self, path: Path) -> int:
        """Lines carrying a malformed prefix (a second read, only when some prefix seen is malformed)."""
        bad = {p for p in self.prefixes if not PREFIX_RE.match(p)}
        if not bad:
            return self.bad_prefix
        with open(path, "rb") as f:
            return sum(1 for line in f if line[:self.plen] in bad)


def verify_capture(path: Path, n: int, stamped: bool, plen: int) -> dict[str, Any]:
    """Compare the file with the child's stream (stamps checked and stripped first); count what differs."""
    seen = Comparison(n)
    unstamp = Unstamper(plen) if stamped else None
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return {"bytes_recovered": 0, "bytes_lost": n, "bytes_extra": 0, "first_mismatch_at": 0 if n else None,
                "content_ok": n == 0, "lines": 0, "lines_bad_prefix": 0}
    with f:
        while True:
            block = f.read(READ_BLOCK)
            piece = unstamp.feed(block) if unstamp is not None else block
            if piece:
                seen.compare(piece)
            if not block:
                break
    recovered, mismatch_at = seen.recovered, seen.mismatch_at
    return {
        "bytes_recovered": recovered,
        "bytes_lost": max(0, n - recovered),
        "bytes_extra": max(0, recovered - n),
        "first_mismatch_at": mismatch_at,
        "content_ok": mismatch_at is None and recovered == n,
        "lines": unstamp.lines if unstamp is not None else n_lines(n),
        "lines_bad_prefix": unstamp.count_bad_prefixes(path) if unstamp is not None else 0,
    }
