"""A tiny server on an inherited listening socket: answers each connection with its pid.

`--fd N` takes the socket from fd N (daphne's and uvicorn's option); without it, from fd 0 as supervisord's
fcgi-program passed it. Used by tests/integration/test_supervisor_import.py.
"""

import os
import socket
import sys

fd = int(sys.argv[sys.argv.index("--fd") + 1]) if "--fd" in sys.argv else 0
listener = socket.socket(fileno=fd)
print(f"serving on fd {fd}, LISTEN_FDS={os.environ.get('LISTEN_FDS')}", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(f"pid {os.getpid()}\n".encode())
