#!/usr/bin/env python3
"""A controllable child for the model and fault tests: it writes checksummed, numbered records and obeys files.

    recorder.py --dir DIR --name PROCESS [--tick S] [--worker] [--ignore-signals]

Every TICK it writes one record to stdout, one os.write of one line (atomic on a pipe):

    R PID SEQ CRC PAD\n        CRC = crc32 of "PID SEQ PAD" (hex), PAD a run of 'x' (SEQ % 41 long)

and then stores SEQ in DIR/seq/PROCESS.PID (so a test knows what was written before any kill: every record up to
that number must be in the output file, in order). On SIGTERM it writes one more record and exits 0.

Commands: a file DIR/cmd/PID holding "exit CODE" makes it exit with CODE after its next record.
With --worker it forks one worker that stays in its process group (as an app server's worker does).
With --ignore-signals it ignores every signal that can be ignored (only SIGKILL stops it).

Every pid it starts goes to DIR/pids (for cleanup) and "PROCESS PID START" to DIR/owners, START being
its start time in clock ticks since boot (proc(5), /proc/PID/stat field 22): pids are reused quickly
(pid_max may be 32768), and only the pid with that start time is the recorder.
"""

import argparse
import os
import signal
import sys
import time
import zlib


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def start_ticks(pid: int) -> int | None:
    """pid's start time in clock ticks since boot (/proc/PID/stat field 22); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2:].split()[19])


def record(pid: int, seq: int) -> bytes:
    pad = "x" * (seq % 41)
    body = f"{pid} {seq} {pad}"
    return f"R {pid} {seq} {zlib.crc32(body.encode()):08x} {pad}\n".encode()


def parse(line: bytes) -> tuple[int, int] | None:
    """(pid, seq) of a well-formed record line (without its newline); None when it is not one."""
    parts = line.split(b" ")
    if len(parts) != 5 or parts[0] != b"R":
        return None
    try:
        pid, seq = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if record(pid, seq) != line + b"\n":
        return None
    return pid, seq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tick", type=float, default=0.02)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--ignore-signals", action="store_true")
    args = ap.parse_args()
    d = args.dir
    pid = os.getpid()
    stopping = []

    def on_term(signum: int, frame: object) -> None:
        stopping.append(signum)

    if not args.ignore_signals:
        signal.signal(signal.SIGTERM, on_term)  # first: a stop may come as soon as it is spawned
    append(os.path.join(d, "pids"), f"{pid}\n")
    append(os.path.join(d, "owners"), f"{args.name} {pid} {start_ticks(pid)}\n")
    if args.ignore_signals:
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                try:
                    signal.signal(sig, signal.SIG_IGN)
                except (OSError, ValueError):
                    pass
    if args.worker and os.fork() == 0:
        if not args.ignore_signals:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a worker dies of the stop signal
        wpid = os.getpid()
        append(os.path.join(d, "pids"), f"{wpid}\n")
        append(os.path.join(d, "owners"), f"{args.name} {wpid} {start_ticks(wpid)}\n")
        while True:
            time.sleep(3600)
    # Keyed by process name and pid: a later recorder of another program may get the same pid.
    seq_fd = os.open(os.path.join(d, "seq", f"{args.name}.{pid}"), os.O_WRONLY | os.O_CREAT, 0o666)
    cmd_path = os.path.join(d, "cmd", str(pid))
    seq = 0
    while True:
        os.write(1, record(pid, seq))
        os.pwrite(seq_fd, f"{seq:012d}".encode(), 0)
        if stopping:
            sys.exit(0)
        if os.path.exists(cmd_path):
            verb, _, arg = open(cmd_path).read().partition(" ")
            if verb == "exit":
                os._exit(int(arg))
        seq += 1
        time.sleep(args.tick)


if __name__ == "__main__":
    main()
