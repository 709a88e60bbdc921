"""The uwsgi check: one request in the uwsgi protocol (what nginx's uwsgi_pass speaks), read as HTTP."""

import struct
import urllib.parse

from procguard.config.model import HealthCheckConfig
from procguard.health.connect import connect
from procguard.health.failed import CheckFailed
from procguard.health.http import USER_AGENT, exchange


async def check_uwsgi(hc: HealthCheckConfig) -> None:
    address = hc.address or ""
    reader, writer = await connect(address)
    await exchange(reader, writer, lambda: _uwsgi_request(hc), hc, "uwsgi: ", address)


def _uwsgi_request(hc: HealthCheckConfig) -> bytes:
    """Encode hc's request as a uwsgi packet (modifier1 0: a WSGI request without body).

    Header: modifier1 (u8), size of the vars block (u16 little-endian), modifier2 (u8); then each
    variable as u16-LE key length, key, u16-LE value length, value (uWSGI docs, "The uwsgi Protocol").
    """
    host = hc.host or "localhost"
    path, _, query = hc.path.partition("?")
    server_name, server_port = _split_host(host)
    variables: list[tuple[str, bytes]] = [
        ("REQUEST_METHOD", hc.method.encode()),
        ("REQUEST_URI", hc.path.encode()),
        ("PATH_INFO", urllib.parse.unquote_to_bytes(path)),  # decoded, as nginx's $document_uri
        ("QUERY_STRING", query.encode()),
        ("SERVER_PROTOCOL", b"HTTP/1.1"),
        ("SERVER_NAME", server_name.encode()),
        # The port the client addressed, as nginx's $server_port; not the uwsgi socket's.
        ("SERVER_PORT", (server_port or "80").encode()),
        ("HTTP_HOST", host.encode()),
        ("HTTP_USER_AGENT", USER_AGENT.encode()),
        ("REMOTE_ADDR", b"127.0.0.1"),
    ]
    block = b"".join(
        struct.pack("<H", len(key)) + key.encode() + struct.pack("<H", len(value)) + value
        for key, value in variables
    )
    if len(block) > 0xFFFF or any(len(value) > 0xFFFF for _, value in variables):
        raise CheckFailed("uwsgi: request variables exceed 64 KiB")
    return struct.pack("<BHB", 0, len(block), 0) + block


def _split_host(host: str) -> tuple[str, str]:
    """Split a Host header into name and port ("" when absent); IPv6 literals keep their brackets."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else ""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, port
    return host, ""
