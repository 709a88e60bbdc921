"""`[program.NAME.healthcheck]`, and the check a server profile fills in when none is written."""

import re
from collections.abc import Mapping
from typing import Any

from procguard import servers
from procguard.config.keys import HEALTHCHECK_KEYS
from procguard.config.model import ANY_BELOW_500, HealthCheckConfig, HealthCheckType, OnUnhealthy
from procguard.config.reader import ProgramReader
from procguard.config.values import (
    Bad, did_you_mean, parse_address, parse_command, parse_duration, parse_int, parse_status_codes, parse_str,
)

# The keys with no check beyond their parser, in the order they are reported.
_PLAIN_KEYS: tuple[tuple[str, Any], ...] = (
    ("method", lambda v: parse_str(v).upper()), ("host", parse_str), ("expect_status", parse_status_codes),
    ("expect_body", parse_str), ("interval", parse_duration), ("timeout", parse_duration),
    ("retries", lambda v: parse_int(v, 1)), ("start_period", parse_duration),
)


def parse_healthcheck(p: ProgramReader, table: object) -> HealthCheckConfig | None:
    """Resolve [program.NAME.healthcheck]; every problem goes to p as healthcheck.KEY."""
    if not isinstance(table, dict):
        p.err("healthcheck", "expected a table [program.NAME.healthcheck], or false (no health check, not "
                             f"even the one a server profile fills in), got {table!r}")
        return None
    n_before = len(p.issues)
    for key in sorted(set(table) - HEALTHCHECK_KEYS):
        p.err(f"healthcheck.{key}", "unknown key" + did_you_mean(key, HEALTHCHECK_KEYS))
    values: dict[str, Any] = {}  # only the keys given: the dataclass holds the defaults

    def get(key: str, parser: Any) -> Any:
        if key in table:
            try:
                values[key] = parser(table[key])
            except Bad as exc:
                p.err(f"healthcheck.{key}", str(exc))
        return values.get(key)

    kind = get("type", parse_str)
    if kind not in HealthCheckType.__members__.values():
        p.err("healthcheck.type", f"expected one of {', '.join(HealthCheckType)}, got {kind!r}")
        return None
    values["type"] = kind = HealthCheckType(kind)
    _check_target(p, kind, get("url", parse_str), get("unix_socket", parse_str), get("address", parse_address),
                  get("command", parse_command))
    on_unhealthy = get("on_unhealthy", parse_str)
    if on_unhealthy is not None and on_unhealthy not in OnUnhealthy.__members__.values():
        p.err("healthcheck.on_unhealthy", f'expected "restart" or "none", got {on_unhealthy!r}')
    path = get("path", parse_str)
    if path is not None and not path.startswith("/"):
        p.err("healthcheck.path", f'expected a path starting with "/", got {path!r}')
    for key, parser in _PLAIN_KEYS:
        get(key, parser)
    if any(values.get(k, 1) <= 0 for k in ("interval", "timeout")):  # a key not given: its default is above 0
        p.err("healthcheck.interval", "interval and timeout must be above 0")
    return HealthCheckConfig(**values) if len(p.issues) == n_before else None


def _check_target(p: ProgramReader, kind: HealthCheckType, url: str | None, unix_socket: str | None,
                  address: str | None, command: tuple[str, ...] | None) -> None:
    """Each type names where it goes: http a url or a unix socket, tcp and uwsgi an address, exec a command."""
    if kind == HealthCheckType.HTTP:
        if (url is None) == (unix_socket is None):
            p.err("healthcheck.url", 'http needs either url = "http://127.0.0.1:PORT/path" or unix_socket + path')
        elif url is not None and not re.match(r"^http://[^/\s]+(/\S*)?$", url):
            p.err("healthcheck.url", f'expected "http://host:port/path" (plain HTTP), got {url!r}')
    if kind in (HealthCheckType.TCP, HealthCheckType.UWSGI) and address is None:
        p.err("healthcheck.address", f'{kind} needs address = "127.0.0.1:PORT"'
              + (" or a unix socket path" if kind == HealthCheckType.UWSGI else ""))
    if kind == HealthCheckType.EXEC and not command:
        p.err("healthcheck.command", "exec needs command = [...]: exit 0 means healthy")


def default_healthcheck(server: str, argv: tuple[str, ...], held: tuple[str, ...],
                        binds: Mapping[str, str]) -> HealthCheckConfig | None:
    """The check `server = ...` fills in when no [program.NAME.healthcheck] is written (issue #14).

    GET / with Host: localhost on the first held socket the server answers HTTP or the uwsgi protocol
    on (servers.checked_socket), healthy on any status below 500; a wildcard bind is asked on loopback
    and a unix socket over the socket. Interval, timeout, retries and on_unhealthy are a written
    check's defaults. None when the program holds no such socket (a server binding its own port).
    """
    picked = servers.checked_socket(server, argv, held)
    bind = binds.get(held[picked[0]]) if picked is not None else None
    if picked is None or bind is None:
        return None
    is_http = picked[1] == servers.Protocol.HTTP
    unix_socket: str | None
    address: str | None
    url: str | None
    if bind.startswith("unix:"):
        path = bind[len("unix:"):]
        unix_socket, address, url = (path, None, None) if is_http else (None, path, None)
    else:
        host, _, port = bind[len("tcp://"):].rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)  # a wildcard bind answers on loopback
        unix_socket, address, url = (None, None, f"http://{host}:{port}/") if is_http else (None, f"{host}:{port}", None)
    return HealthCheckConfig(type=HealthCheckType.HTTP if is_http else HealthCheckType.UWSGI, url=url, unix_socket=unix_socket, address=address,
                             host="localhost", expect_status=ANY_BELOW_500, is_default=True)

