#!/usr/bin/env python3
"""A child that writes known bytes to stdout/stderr with raw os.write calls, for output capture tests.

    writer.py --dir DIR --name NAME MODE [options]

Modes:
  copy SRC [--err SRC2]     write SRC's bytes to stdout (and SRC2's to stderr) in chunks of random
                            sizes (seeded), then sleep (or exit with --exit)
  alternate N               write "out i\\n" to stdout and "err i\\n" to stderr, alternating, N times
  text TEXT                 write TEXT (with \\n escapes expanded) as given, in pieces split at '|'
  burst BYTES               write BYTES as fast as possible in 64 KiB writes, then sleep
  on-signal                 write "line K pid P\\n" each time SIGUSR1 arrives
  drain-on-term BYTES       on SIGTERM write BYTES (more than a pipe holds), then "bye\\n", then exit 0
  tick                      write "tick K\\n" every 20 ms

Every run records its pid in DIR/pids (so the test proves nothing survives) and appends
"NAME PID started" to DIR/events.log; with --exit it exits 0 after writing instead of sleeping.
"""

import argparse
import os
import random
import signal
import sys
import time


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def event(directory: str, name: str, what: str) -> None:
    fd = os.open(os.path.join(directory, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.write(fd, f"{name} {os.getpid()} {what}\n".encode())
    os.close(fd)


def idle() -> None:
    while True:
        time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", default="writer")
    ap.add_argument("--exit", action="store_true")
    ap.add_argument("--err")
    ap.add_argument("mode")
    ap.add_argument("arg", nargs="?")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")
    event(args.dir, args.name, "started")
    rng = random.Random(42)
    if args.mode == "copy":
        for fd, src in ((1, args.arg), (2, args.err)):
            if src is None:
                continue
            data = open(src, "rb").read()
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 200_000)
                write_all(fd, data[pos:pos + n])
                pos += n
    elif args.mode == "alternate":
        for i in range(int(args.arg)):
            write_all(1, f"out {i}\n".encode())
            write_all(2, f"err {i}\n".encode())
    elif args.mode == "text":
        for piece in args.arg.encode().decode("unicode_escape").split("|"):
            write_all(1, piece.encode())
            time.sleep(0.05)  # separate reads in the daemon, so pieces arrive as separate chunks
    elif args.mode == "burst":
        total = int(args.arg)
        block = (b"0123456789abcdef" * 4096)[:65536]
        sent = 0
        while sent < total:
            chunk = block[: min(len(block), total - sent)]
            write_all(1, chunk)
            sent += len(chunk)
        event(args.dir, args.name, f"wrote {sent}")
    elif args.mode == "on-signal":
        count = [0]

        def handler(signum: int, frame: object) -> None:
            count[0] += 1
            write_all(1, f"line {count[0]} pid {os.getpid()}\n".encode())

        signal.signal(signal.SIGUSR1, handler)
        event(args.dir, args.name, "ready")
    elif args.mode == "drain-on-term":
        size = int(args.arg)

        def on_term(signum: int, frame: object) -> None:
            write_all(1, b"x" * size)
            write_all(1, b"bye\n")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)
        event(args.dir, args.name, "ready")
    elif args.mode == "tick":
        k = 0
        while True:
            k += 1
            write_all(1, f"tick {k}\n".encode())
            time.sleep(0.02)
    else:
        sys.exit(f"unknown mode {args.mode}")
    if args.exit:
        sys.exit(0)
    idle()


if __name__ == "__main__":
    main()
