"""[socket.NAME]: listening sockets procguard binds and holds across its programs' restarts."""

import re
from typing import Any

from procguard.config import machine
from procguard.config.tables import TableIssues, named_tables
from procguard.config.keys import SOCKET_KEYS
from procguard.config.model import SocketConfig
from procguard.config.values import Bad, parse_umask
from procguard.errors import ConfigIssue


def parse_sockets(files: list[tuple[str, dict[str, Any]]],
                  issues: list[ConfigIssue]) -> tuple[list[SocketConfig], dict[str, str]]:
    """Every valid [socket.NAME], and the file each name is defined in (valid or not)."""
    sockets: list[SocketConfig] = []
    defined_in: dict[str, str] = {}
    for source, name, table in named_tables("socket", files, issues, defined_in):
        sock = _parse_socket(name, table, source, issues)
        if sock is not None:
            sockets.append(sock)
    return sockets, defined_in


def _parse_socket(name: str, table: object, source: str, issues: list[ConfigIssue]) -> SocketConfig | None:
    """Resolve one [socket.NAME] table; problems are reported as socket.NAME.KEY."""
    found = TableIssues("socket", name, source, issues)
    bad = found.bad
    table = found.check(table, SOCKET_KEYS)
    if table is None:
        return None
    values: dict[str, Any] = {}  # only the keys given: the dataclass holds the defaults
    bind = values["bind"] = table.get("bind")
    if not isinstance(bind, str) or not (
        re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}", bind) or re.fullmatch(r"unix:/\S+", bind)
    ):
        bad("bind", f'expected "tcp://127.0.0.1:8000" or "unix:/run/app/web.sock", got {bind!r}')
    if "backlog" in table:
        backlog = values["backlog"] = table["backlog"]
        if not isinstance(backlog, int) or isinstance(backlog, bool) or backlog < 1:
            bad("backlog", f"expected a positive integer, got {backlog!r}")
    if "mode" in table:
        try:
            values["mode"] = parse_umask(table["mode"])
        except Bad:
            bad("mode", f'expected an octal mode like "0660", got {table["mode"]!r}')
    if "owner" in table:
        owner = table["owner"]
        ids = machine.find_owner(str(owner))
        if ids is None:
            bad("owner", f'expected "user" or "user:group" that exist on this machine, got {owner!r}')
        else:
            values["owner_uid"], values["owner_gid"] = ids
    if isinstance(bind, str) and bind.startswith("tcp://") and ("mode" in table or "owner" in table):
        bad("mode", "mode and owner apply to unix sockets only")
    if not found.is_valid:
        return None
    return SocketConfig(name=name, source=source, **values)
