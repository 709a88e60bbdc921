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

from procguard.config.model import (
    AlertConfig, AlertTrigger, AlertType, SmtpSecurity, _Bad, _did_you_mean, parse_duration,
)
from procguard.errors import ConfigIssue

COMMON_KEYS = frozenset({"type", "events", "programs", "crash_loop_exits", "crash_loop_window", "batch_window",
                         "retries", "timeout", "recovery", "ca_file"})
TYPE_KEYS = {
    AlertType.WEBHOOK: frozenset({"url"}),
    AlertType.EMAIL: frozenset({"smtp", "security", "credentials_file", "from", "to", "subject_prefix"}),
}
ALL_KEYS = COMMON_KEYS | TYPE_KEYS[AlertType.WEBHOOK] | TYPE_KEYS[AlertType.EMAIL]
_ADDRESS_RE = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HOST_PORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")
_LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def parse_alerts(files: list[tuple[str, dict[str, Any]]], programs: set[str],
                 issues: list[ConfigIssue]) -> tuple[AlertConfig, ...]:
    """Every [alert.NAME] of the main file and its includes, each defined once."""
    alerts: list[AlertConfig] = []
    defined_in: dict[str, str] = {}
    for source, content in files:
        tables = content.get("alert", {})
        if not isinstance(tables, dict):
            issues.append(ConfigIssue(source, None, "alert", "expected [alert.NAME] tables"))
            continue
        for name, table in tables.items():
            if name in defined_in:
                issues.append(ConfigIssue(source, None, f"alert.{name}", f"defined twice: also in {defined_in[name]}"))
                continue
            defined_in[name] = source
            alert = _parse_alert(name, table, source, programs, issues)
            if alert is not None:
                alerts.append(alert)
    return tuple(alerts)


def _parse_alert(name: str, table: object, source: str, programs: set[str],
                 issues: list[ConfigIssue]) -> AlertConfig | None:
    n_before = len(issues)

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(source, None, f"alert.{name}.{key}", message))

    if not isinstance(table, dict):
        issues.append(ConfigIssue(source, None, f"alert.{name}", "expected a table"))
        return None
    for key in sorted(set(table) - ALL_KEYS):
        bad(key, "unknown key" + _did_you_mean(key, ALL_KEYS))
    try:
        kind = AlertType(str(table.get("type")))
    except ValueError:
        bad("type", f'expected "webhook" or "email", got {table.get("type")!r}')
        return None
    for key in sorted(set(table) & (ALL_KEYS - COMMON_KEYS - TYPE_KEYS[kind])):
        bad(key, f"does not apply to type = {kind.value!r}")

    values: dict[str, Any] = {}  # only the keys given: the dataclass holds the defaults
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
                    bad("programs", f"no such program {p!r}" + _did_you_mean(p, frozenset(programs)))
            values["programs"] = tuple(progs)
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
            except _Bad as exc:
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
    if kind == AlertType.WEBHOOK:
        url = table.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            bad("url", f'expected "https://host/path" (or http://), got {url!r}')
        else:
            values["url"] = url
    else:
        _parse_email(table, values, bad)
    if len(issues) != n_before:
        return None
    return AlertConfig(name=name, source=source, type=kind, **values)


def _parse_email(table: dict[str, Any], values: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """The email keys: smarthost, TLS, credentials (from a private file), addresses."""
    smtp = table.get("smtp", "localhost:25")
    m = _HOST_PORT_RE.match(smtp) if isinstance(smtp, str) else None
    if m is None:
        bad("smtp", f'expected "host" or "host:port", got {smtp!r}')
        host = None
    else:
        host = m.group(1)
        values["smtp_host"] = host.strip("[]")
        if m.group(2):
            values["smtp_port"] = int(m.group(2))
    security = SmtpSecurity.NONE
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
