"""A ZeroMQ DEALER over an already connected stream socket: ZMTP 3.0 with the NULL mechanism, stdlib only.

procguardctl speaks to an ipc:// daemon through this instead of pyzmq: importing pyzmq costs more than
the interpreter's own start (102 M instructions against 90 M for `python -c pass`, callgrind; issue #17),
and a one-request client needs none of it: no background threads, reconnects or queues. The daemon's
side is libzmq's ROUTER as before, with its ZAP check of the peer's uid (a refusal arrives as an ERROR
command). tcp:// needs CURVE and stays on pyzmq (client.py).

Wire format (rfc.zeromq.org/spec/23, ZMTP 3.0):
  greeting  %xFF 8*%x00 %x7F, version 3.0, mechanism "NULL" padded to 20 bytes, as-server 0, 31 zeros
  frame     flags (bit 0 MORE, bit 1 LONG: 8-byte size, else 1 byte; bit 2 COMMAND), size, body
  command   name-length, name, data; READY's data is properties: name-length, name, 4-byte length, value
"""

import _socket
import time

GREETING = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


class Refused(Exception):
    """The server sent an ERROR command during the handshake (a ZAP refusal); the reason is its text."""


class Closed(Exception):
    """The peer closed the connection."""


class NotZmtp(Exception):
    """The peer does not speak ZMTP 3 with the NULL mechanism."""


class TooLarge(Exception):
    """A frame above the size this client accepts."""


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


class Dealer:
    """One DEALER connection on `sock` (connected, blocking). Every wait takes an absolute deadline
    (time.monotonic(), or None: no limit) and raises TimeoutError when it passes."""

    def __init__(self, sock: _socket.socket, max_frame_bytes: int) -> None:
        self._sock = sock
        self._max = max_frame_bytes
        self._buf = bytearray()

    def handshake(self, deadline: float | None) -> None:
        """Exchange greetings and READY commands; raises Refused, Closed, NotZmtp, TimeoutError."""
        self._sock.sendall(GREETING + _frame(b"\x05READY" + _property(b"Socket-Type", b"DEALER"), COMMAND))
        greeting = self._read(64, deadline)
        if greeting[0] != 0xFF or greeting[9] != 0x7F or greeting[10] < 3 or greeting[12:32].rstrip(b"\x00") != b"NULL":
            raise NotZmtp("not a ZMTP 3 NULL greeting")
        flags, body = self._read_frame(deadline)
        if not flags & COMMAND:
            raise NotZmtp("expected a command after the greeting")
        name = body[1:1 + body[0]] if body else b""
        if name == b"ERROR":
            data = body[1 + len(name):]
            raise Refused(data[1:1 + data[0]].decode(errors="replace") if data else "")
        if name != b"READY":
            raise NotZmtp(f"expected READY, got {name!r}")

    def send(self, payload: bytes) -> None:
        self._sock.sendall(_frame(payload))

    def recv(self, deadline: float | None) -> bytes:
        """The next message's first frame (procguard's replies are one frame); commands are skipped."""
        first: bytes | None = None
        while True:
            flags, body = self._read_frame(deadline)
            if flags & COMMAND:
                continue  # e.g. a PING from a peer with heartbeats on: nothing to do for one request
            if first is None:
                first = body
            if not flags & MORE:
                return first

    def _read_frame(self, deadline: float | None) -> tuple[int, bytes]:
        flags = self._read(1, deadline)[0]
        if flags & LONG:
            size = int.from_bytes(self._read(8, deadline), "big")  # not struct: 1.5 M instructions to import
        else:
            size = self._read(1, deadline)[0]
        if size > self._max:
            raise TooLarge(f"a frame of {size} bytes")
        return flags, self._read(size, deadline)

    def _read(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) < n:
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self._sock.settimeout(left)
            chunk = self._sock.recv(max(65536, n - len(self._buf)))  # a timeout raises TimeoutError
            if not chunk:
                raise Closed
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out
