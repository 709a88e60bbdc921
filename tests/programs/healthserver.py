#!/usr/bin/env python3
"""An HTTP app whose /health/ answers as DIR/health says: "ok" (200), "bad" (503) or "hang" (never).

    healthserver.py --dir DIR --name NAME --port PORT [--listen-when-go]

With --listen-when-go it binds only once DIR/go exists (a slow start). Records its pid in DIR/pids,
"NAME PID started" and every health request ("NAME PID health ok") in DIR/events.log.
"""

import argparse
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--name", default="app")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--listen-when-go", action="store_true")
    args = ap.parse_args()
    d = args.dir
    with open(os.path.join(d, "pids"), "a") as f:
        f.write(f"{os.getpid()}\n")

    def event(what: str) -> None:
        with open(os.path.join(d, "events.log"), "a") as f:
            f.write(f"{args.name} {os.getpid()} {what}\n")

    event("started")
    while args.listen_when_go and not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.02)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                mode = open(os.path.join(d, "health")).read().strip()
            except FileNotFoundError:
                mode = "ok"
            event(f"health {mode}")
            if mode == "hang":
                time.sleep(3600)
            code = 200 if mode == "ok" else 503
            body = b"ok\n" if code == 200 else b"bad\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    event("listening")
    server.serve_forever()


if __name__ == "__main__":
    main()
