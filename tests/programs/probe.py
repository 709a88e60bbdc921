#!/usr/bin/env python3
"""A configurable child for tests: reports who it is, then behaves as told.

    probe.py --dir DIR [--name NAME] [--mode sleep|exit|ignore-term|trap|double-fork[-stubborn]|escape-on-term|flood]
             [--code N] [--after S] [--signal QUIT]

Every run appends one JSON line to DIR/reports.jsonl: pid, ppid, pgid, uid, gid, groups, umask, cwd,
environment, open descriptors and a monotonic timestamp; and its pid (with its start time) to
DIR/pids so the test can prove nothing survives.
"""

import argparse
import json
import os
import signal
import sys
import time


def record_pid(directory: str) -> None:
    with open(os.path.join(directory, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")


def report(directory: str, name: str, **extra: object) -> None:
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    umask = os.umask(0)
    os.umask(umask)
    data = {
        "name": name,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "umask": umask,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "fds": fds,
        "t": time.monotonic(),
        **extra,
    }
    line = json.dumps(data) + "\n"
    fd = os.open(os.path.join(directory, "reports.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
    os.close(fd)


def event(directory: str, name: str, what: str) -> None:
    fd = os.open(os.path.join(directory, "events.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.write(fd, f"{name} {os.getpid()} {what}\n".encode())
    os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", default="probe")
    ap.add_argument("--mode", default="sleep")
    ap.add_argument("--code", type=int, default=0)
    ap.add_argument("--after", type=float, default=0.0)
    ap.add_argument("--signal", default="TERM")
    args = ap.parse_args()
    d = args.dir
    record_pid(d)
    if args.mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.mode == "trap":
        sig = signal.Signals["SIG" + args.signal]

        def handler(signum: int, frame: object) -> None:
            event(d, args.name, f"got {signal.Signals(signum).name}")
            sys.exit(0)

        signal.signal(sig, handler)
    report(d, args.name)
    if args.mode == "exit":
        time.sleep(args.after)
        sys.exit(args.code)
    if args.mode in ("double-fork", "double-fork-stubborn"):
        # Leave the process group and the parent, as a daemonizing worker would (stubborn: one that
        # ignores SIGTERM, so only the SIGKILL escalation stops it).
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                if args.mode == "double-fork-stubborn":
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                record_pid(d)
                event(d, args.name, f"grandchild {os.getpid()} pgid {os.getpgid(0)}")
                while True:
                    time.sleep(3600)
            os._exit(0)
    if args.mode == "escape":
        # Double-fork, leave the group and drop the environment (so no marker says whose it is).
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                record_pid(d)
                event(d, args.name, f"escaped {os.getpid()}")
                os.execve("/bin/sleep", ["sleep", "3600"], {})
            os._exit(0)
    if args.mode == "escape-on-term":
        # Escape at the stop itself (issue #14): on SIGTERM a child leaves the group (setsid) and
        # double-forks, the grandchild keeps running; the leader exits once its child has forked.
        def escape(signum: int, frame: object) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the escapers die of the next TERM
            child = os.fork()
            if child == 0:
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    while True:
                        time.sleep(3600)
                # Recorded here, so the pid is known by the time the leader exits.
                with open(os.path.join(d, "pids"), "a") as f:
                    f.write(f"{grandchild}\n")
                event(d, args.name, f"escaped {grandchild}")
                os._exit(0)
            os.waitpid(child, 0)
            os._exit(0)

        signal.signal(signal.SIGTERM, escape)
    if args.mode == "group":
        # A worker in the same process group, like an app server's worker.
        if os.fork() == 0:
            record_pid(d)
            event(d, args.name, f"worker {os.getpid()}")
            while True:
                time.sleep(3600)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
