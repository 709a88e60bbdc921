"""Descriptors that outlive exec: the control socket's listener (ipc:// or tcp://), and the state handed to the
next image."""

import ipaddress
import os
import socket

CONTROL_BACKLOG = 1024  # connections that wait in the kernel while the daemon re-execs (capped by somaxconn)


def unix_listener(path: str) -> int:
    """A listening Unix socket at path (a stale socket file there is replaced); return its fd.

    The caller holds the control socket's lock, so the file cannot be another daemon's. The fd is
    given to libzmq (ZMQ_USE_FD), which would otherwise bind a listener of its own that exec closes.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.bind(path)
        sock.listen(CONTROL_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def tcp_listener(endpoint: str) -> int | None:
    """A listening TCP socket for a `tcp://IP:PORT` endpoint (IPv4, [IPv6] or *); return its fd.

    Ours rather than libzmq's for the same reason as unix_listener: a re-exec keeps it, so the port is
    never unbound and connections made meanwhile wait in its backlog. None for an address only libzmq
    resolves (an interface name, an ephemeral port `*`): libzmq then binds it, and a re-exec binds again.
    Raises OSError (the port is taken).
    """
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not port.isdigit():
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        family = socket.AF_INET if host == "*" else socket.AF_INET6 if ipaddress.ip_address(host).version == 6 \
            else socket.AF_INET
    except ValueError:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq's own listener
        sock.bind(("0.0.0.0" if host == "*" else host, int(port)))
        sock.listen(CONTROL_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def keep_across_exec(fds: list[int]) -> None:
    """Clear FD_CLOEXEC on each fd: the next image of this process finds them open at the same numbers."""
    for fd in fds:
        os.set_inheritable(fd, True)


def close_on_exec(fds: list[int]) -> None:
    """Set FD_CLOEXEC again once adopted, so no later exec (ours or a child's helper) inherits them."""
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError:
            pass  # already closed: adopt reports what it could not take


def state_fd(data: bytes) -> int:
    """An anonymous in-memory file holding data, positioned at 0: nothing on disk to clean up or leak."""
    fd = os.memfd_create("procguard-state", 0)  # not MFD_CLOEXEC: the next image reads it
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_state_fd(fd: int) -> bytes:
    """Read and close the state the previous image left at fd."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
