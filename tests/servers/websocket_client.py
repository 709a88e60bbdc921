"""A minimal websocket client (RFC 6455) on the standard library: handshake, one masked text frame, echo.

Enough to prove an ASGI server routes a websocket to the app; not a general client.
"""

import base64
import hashlib
import os
import socket
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of one unfragmented frame from the server (servers do not mask)."""
    head = _read_exact(sock, 2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", _read_exact(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", _read_exact(sock, 8))
    return opcode, _read_exact(sock, length)


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame; clients must mask (RFC 6455 section 5.3). Payload < 126 bytes."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def echo(port: int, path: str, text: str, host: str = "localhost", timeout: float = 10.0) -> str:
    """Open ws://127.0.0.1:port/path, send `text`, return the text frame that comes back, close cleanly.

    Raises ConnectionError when the handshake is refused (with the status line) or the server closes.
    """
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"handshake: connection closed; got {response!r}")
            response += chunk
        head, rest = response.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in status_line + " ":
            raise ConnectionError(f"handshake refused: {status_line}")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise ConnectionError(f"handshake: bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
        if rest:
            raise ConnectionError(f"handshake: unexpected bytes after the headers: {rest!r}")
        sock.sendall(_frame(0x1, text.encode()))
        opcode, payload = _read_frame(sock)
        if opcode != 0x1:
            raise ConnectionError(f"expected a text frame, got opcode {opcode} {payload!r}")
        sock.sendall(_frame(0x8, struct.pack("!H", 1000)))  # close, normal closure
        return payload.decode()
