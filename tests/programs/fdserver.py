#!/usr/bin/env python3
"""An HTTP server on an inherited listening socket: fd from --fd N, else LISTEN_FDS (fd 3).

    fdserver.py --dir DIR --name NAME [--fd N] [--unix] [--delay S] [--abrupt] [--release FILE]

Answers every request with "NAME PID\\n" (after --delay seconds). Records its pid in DIR/pids and a JSON
line with its pid and LISTEN_* variables in DIR/reports.jsonl. On SIGTERM it finishes the request in
hand, then exits 0 (single-threaded on purpose: a graceful stop drops nothing; new connections wait in
the backlog). With --abrupt it exits at once on SIGTERM instead, cutting off the request in hand, as
daphne does (it cancels every request in flight).

--release FILE: a release read at start, as a deploy's next generation reads its new code: a JSON object
with "name" (replaces --name), and "mode": "ok" (answer 200; READY=1 on $NOTIFY_SOCKET once serving),
"exit" (exit 1 at start, as an ImportError would), "status503" (answer every request 503) or "silent"
(serve 200 but never send READY=1) or "stuck" (print a traceback, as a worker failing to boot does, and
never serve nor send READY=1).

--access-log: a line per request on stderr (http.server's own log_message), as a server's access log.

--workers N: a master that forks N workers serving the socket (answers name the worker's pid); TERM to
the master is passed on to them; a worker on TERM notes "term PID" in DIR/events.log, finishes the
request in hand and exits.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import traceback
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", default="web")
    ap.add_argument("--fd", type=int)
    ap.add_argument("--unix", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--abrupt", action="store_true")
    ap.add_argument("--release")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--access-log", action="store_true")
    args = ap.parse_args()
    mode = "ok"
    if args.release:
        with open(args.release) as f:
            release = json.load(f)
        args.name, mode = release["name"], release["mode"]
    with open(os.path.join(args.dir, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")
    fd = args.fd if args.fd is not None else 3
    report = {"name": args.name, "pid": os.getpid(), "fd": fd,
              **{k: os.environ.get(k) for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")},
              "open_fds": sorted(int(x) for x in os.listdir("/proc/self/fd"))}
    with open(os.path.join(args.dir, "reports.jsonl"), "a") as f:
        f.write(json.dumps(report) + "\n")
    if mode == "exit":
        raise SystemExit(f"{args.name}: release is broken (ImportError: no module named 'app')")
    if mode == "stuck":
        try:
            raise ImportError(f"{args.name}: No module named 'app'")
        except ImportError:
            traceback.print_exc()
        sys.stderr.flush()
        while True:
            time.sleep(60)
    family = socket.AF_UNIX if args.unix else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, fileno=fd)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            if args.delay:
                time.sleep(args.delay)
            body = f"{args.name} {os.getpid()}\n".encode()
            self.send_response(503 if mode == "status503" else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "peer"

        def log_message(self, format: str, *a: object) -> None:
            if args.access_log:
                super().log_message(format, *a)
                sys.stderr.flush()

    server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    if args.abrupt:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    else:
        signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    children = [fork_worker(args.dir, server) for _ in range(args.workers)]
    if children:
        signal.signal(signal.SIGTERM, lambda *a: [os.kill(c, signal.SIGTERM) for c in children])
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify and mode != "silent":
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
    if children:
        for child in children:
            os.waitpid(child, 0)
        return
    server.serve_forever(poll_interval=0.05)


def fork_worker(directory: str, server: HTTPServer) -> int:
    pid = os.fork()
    if pid:
        return pid

    def term(*a: object) -> None:
        with open(os.path.join(directory, "events.log"), "a") as f:
            f.write(f"term {os.getpid()}\n")
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, term)
    with open(os.path.join(directory, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")
    server.serve_forever(poll_interval=0.05)
    os._exit(0)


if __name__ == "__main__":
    main()
