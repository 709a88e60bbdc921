"""Parse `[alert.NAME]` tables into AlertConfig (procguard.config.model holds the dataclasses and their defaults).

Problems are reported like every other key: `procguard.toml: [alert.ops] url: expected ...`. Secrets never
live in the config: SMTP credentials come from `credentials_file`, which must not be readable by others,
and are refused over an unencrypted connection.
"""

import os
import re
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from procguard.config.tables import TableIssues, named_tables
from procguard.config.keys import ALERT_COMMON_KEYS as COMMON_KEYS, ALERT_KEYS as ALL_KEYS, ALERT_TYPE_KEYS as TYPE_KEYS
from procguard.config.model import AlertConfig, AlertTrigger, AlertType, SmtpSecurity, default_of
from procguard.config.values import Bad, did_you_mean, parse_duration
from procguard.errors import ConfigIssue

_ADDRESS_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def parse_alerts(files: list[tuple[str, dict[str, Any]]], programs: set[str],
                 issues: list[ConfigIssue]) -> tuple[AlertConfig, ...]:
    """Every [alert.NAME] of the main file and its includes, each defined once."""
    alerts: list[AlertConfig] = []
    for source, name, table in named_tables("alert", files, issues, {}):
        alert = _parse_alert(name, table, source, programs, issues)
        if alert is not None:
            alerts.append(alert)
    return tuple(alerts)


def _parse_alert(name: str, table: object, source: str, programs: set[str],
                 issues: list[ConfigIssue]) -> AlertConfig | None:
    found = TableIssues("alert", name, source, issues)
    bad = found.bad
    table = found.check(table, ALL_KEYS)
    if table is None:
        return None
    try:
        kind = AlertType(str(table.get("type")))
    except ValueError:
        bad("type", f'expected "webhook" or "email", got {table.get("type")!r}')
        return None
    for key in sorted(set(table) & (ALL_KEYS - COMMON_KEYS - TYPE_KEYS[kind])):
        bad(key, f"does not apply to type = {kind.value!r}")

    values: dict[str, Any] = {}  # only the keys given: the dataclass holds the defaults
    _parse_selection(table, programs, values, bad)
    _parse_timing(table, values, bad)
    if kind == AlertType.WEBHOOK:
        url = table.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            bad("url", f'expected "https://host/path" (or http://), got {url!r}')
        else:
            values["url"] = url
    else:
        _parse_email(table, values, bad)
    if not found.is_valid:
        return None
    return AlertConfig(name=name, source=source, type=kind, **values)


def _parse_selection(table: dict[str, Any], programs: set[str], values: dict[str, Any],
                     bad: Callable[[str, str], None]) -> None:
    """events and programs: what the alert is about."""
    if "events" in table:
        events = table["events"]
        known = ", ".join(t.value for t in AlertTrigger)
        if not isinstance(events, list) or not events:
            bad("events", f"expected a non-empty list of {known}, got {events!r}")
        else:
            parsed = []
            for ev in events:
                try:
                    parsed.append(AlertTrigger(ev))
                except ValueError:
                    bad("events", f"unknown event {ev!r} (expected some of {known})")
            values["events"] = tuple(dict.fromkeys(parsed))
    if "programs" in table:
        progs = table["programs"]
        if not isinstance(progs, list) or not all(isinstance(p, str) and p for p in progs):
            bad("programs", f"expected a list of program names, got {progs!r}")
        else:
            for p in progs:
                if p not in programs:
                    bad("programs", f"no such program {p!r}" + did_you_mean(p, frozenset(programs)))
            values["programs"] = tuple(progs)


def _parse_timing(table: dict[str, Any], values: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """Crash-loop detection, batching, delivery (retries, timeout, ca_file) and recovery notices."""
    for key, minimum in (("crash_loop_exits", 1), ("retries", 0)):
        if key in table:
            v = table[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                bad(key, f"expected an integer >= {minimum}, got {v!r}")
            else:
                values[key] = v
    for key in ("crash_loop_window", "batch_window", "timeout"):
        if key in table:
            try:
                values[key] = parse_duration(table[key])
            except Bad as exc:
                bad(key, str(exc))
            else:
                if key != "batch_window" and values[key] <= 0:
                    bad(key, f"expected a duration above 0, got {table[key]!r}")
    if "recovery" in table:
        if not isinstance(table["recovery"], bool):
            bad("recovery", f"expected true or false, got {table['recovery']!r}")
        else:
            values["recovery"] = table["recovery"]
    if "ca_file" in table:
        ca_file = table["ca_file"]
        if not isinstance(ca_file, str) or not os.path.isabs(ca_file):
            bad("ca_file", f"expected an absolute path, got {ca_file!r}")
        elif not os.path.isfile(ca_file):
            bad("ca_file", f"{ca_file}: no such file")
        else:
            values["ca_file"] = ca_file


def _parse_email(table: dict[str, Any], values: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """The email keys: smarthost, TLS, credentials (from a private file), addresses."""
    host: str | None = default_of(AlertConfig, "smtp_host")
    if "smtp" in table:
        smtp = table["smtp"]
        m = _HOST_PORT_RE.match(smtp) if isinstance(smtp, str) else None
        if m is None:
            bad("smtp", f'expected "host" or "host:port", got {smtp!r}')
            host = None
        else:
            host = m.group(1)
            values["smtp_host"] = host.strip("[]")
            if m.group(2):
                values["smtp_port"] = int(m.group(2))
    security: SmtpSecurity = default_of(AlertConfig, "security")
    if "security" in table:
        try:
            values["security"] = security = SmtpSecurity(table["security"])
        except ValueError:
            bad("security", f'expected "none", "starttls" or "tls", got {table["security"]!r}')
    if "credentials_file" in table:
        path = table["credentials_file"]
        key = "credentials_file"
        try:
            if not isinstance(path, str) or not os.path.isabs(path):
                bad(key, f"expected an absolute path, got {path!r}")
            elif (mode := stat.S_IMODE(os.stat(path).st_mode)) & 0o077:
                bad(key, f"{path} is readable by others (mode {mode:04o}); chmod 600 it")
            elif security == SmtpSecurity.NONE and host not in _LOOPBACK:
                bad(key, 'credentials are never sent unencrypted: set security = "starttls" or "tls"')
            else:
                values[key] = path
        except OSError as exc:
            bad(key, f"{path}: {exc.strerror}")
    sender = table.get("from")
    if sender is not None:
        if not isinstance(sender, str) or not _ADDRESS_RE.fullmatch(sender):
            bad("from", f'expected an address like "procguard@example.com", got {sender!r}')
        else:
            values["sender"] = sender
    to = table.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and _ADDRESS_RE.fullmatch(a) for a in to):
        bad("to", f'expected a list of addresses like ["ops@example.com"], got {to!r}')
    else:
        values["to"] = tuple(to)
    if "subject_prefix" in table:
        if not isinstance(table["subject_prefix"], str):
            bad("subject_prefix", f"expected a string, got {table['subject_prefix']!r}")
        else:
            values["subject_prefix"] = table["subject_prefix"]
