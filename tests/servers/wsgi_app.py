"""A tiny WSGI app for real-server tests: answers with the worker's pid."""

import os


def application(environ, start_response):  # type: ignore[no-untyped-def]
    body = f"worker {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
