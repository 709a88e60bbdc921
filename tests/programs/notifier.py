#!/usr/bin/env python3
"""A child that speaks sd_notify: STATUS=... at once, READY=1 when DIR/go exists (or never with --never).

    notifier.py --dir DIR --name NAME [--never] [--from-worker]

--from-worker sends READY=1 from a forked worker in the same process group (as gunicorn's arbiter
may). Records its pid in DIR/pids and "NAME PID started" in DIR/events.log.
"""

import argparse
import os
import socket
import time


def notify(message: str) -> None:
    addr = os.environ["NOTIFY_SOCKET"]
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", default="notifier")
    ap.add_argument("--never", action="store_true")
    ap.add_argument("--from-worker", action="store_true")
    args = ap.parse_args()
    with open(os.path.join(args.dir, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(os.path.join(args.dir, "events.log"), "a") as f:
        f.write(f"{args.name} {os.getpid()} started {os.environ.get('NOTIFY_SOCKET', '-')}\n")
    notify("STATUS=warming up caches")
    go = os.path.join(args.dir, "go")
    while not args.never and not os.path.exists(go):
        time.sleep(0.02)
    if not args.never:
        if args.from_worker and os.fork() == 0:
            with open(os.path.join(args.dir, "pids"), "a") as f:
                f.write(f"{os.getpid()}\n")
            notify("READY=1\nSTATUS=serving")
            while True:
                time.sleep(3600)
        elif not args.from_worker:
            notify("READY=1\nSTATUS=serving")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
