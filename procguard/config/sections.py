"""The main file's [procguard] table: log directory and level, the control endpoint, the metrics endpoint.

`include` is read by files.py. Problems are reported as procguard.KEY.
"""

import ipaddress
import os
import re
from collections.abc import Callable
from typing import Any

from procguard.config import machine
from procguard.config.keys import CURVE_KEYS, LOGLEVELS, PROCGUARD_KEYS
from procguard.config.model import Config, CurveConfig, MetricsConfig, default_of
from procguard.config.templates import expand_here
from procguard.config.values import Bad, did_you_mean
from procguard.errors import ConfigIssue
from procguard.protocol import resolve_endpoint


def procguard_table(data: dict[str, Any], src: str, issues: list[ConfigIssue]) -> dict[str, Any]:
    """The [procguard] table of the main file ({} when absent or not a table), its unknown keys reported."""
    section = data.get("procguard", {})
    if not isinstance(section, dict):
        issues.append(ConfigIssue(src, None, "procguard", "expected a table"))
        section = {}
    for key in sorted(set(section) - PROCGUARD_KEYS):
        issues.append(ConfigIssue(src, None, f"procguard.{key}", "unknown key" + did_you_mean(key, PROCGUARD_KEYS)))
    return section


def parse_procguard(section: dict[str, Any], src: str, here: str, environ: dict[str, str],
                    issues: list[ConfigIssue]) -> dict[str, Any]:
    """The Config fields [procguard] sets (logdir always, resolved: the programs' AUTO logs need it)."""
    fields: dict[str, Any] = {"logdir": _logdir(section, src, here, environ, issues)}
    if "loglevel" in section:
        loglevel = section["loglevel"]
        if not isinstance(loglevel, str) or loglevel.lower() not in LOGLEVELS:
            issues.append(ConfigIssue(src, None, "procguard.loglevel",
                                      f"expected one of {', '.join(LOGLEVELS)}, got {loglevel!r}"))
        else:
            fields["loglevel"] = loglevel.lower()
    fields.update(_parse_control(section, src, here, issues))
    fields["metrics"] = _parse_metrics(section, src, here, issues)
    return fields


def _logdir(section: dict[str, Any], src: str, here: str, environ: dict[str, str], issues: list[ConfigIssue]) -> str:
    logdir: str = default_of(Config, "logdir")
    if "logdir" in section:
        try:
            logdir = expand_here(section["logdir"], here, environ) or logdir
        except Bad as exc:
            issues.append(ConfigIssue(src, None, "procguard.logdir", str(exc)))
        # Normalised: output.py compares a log file's directory with it ("../../var/log" was never created).
        logdir = os.path.normpath(os.path.join(here, logdir))
    return logdir


def _parse_control(section: dict[str, Any], src: str, here: str, issues: list[ConfigIssue]) -> dict[str, Any]:
    """Resolve the control endpoint, its admin group and CURVE keys (tcp:// requires them)."""

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(src, None, f"procguard.{key}", message))

    default: str = default_of(Config, "control")
    control = section.get("control", default)
    if not isinstance(control, str) or not re.match(r"^(ipc|tcp)://.+", control):
        bad("control", f'expected "ipc:///path/to/socket" or "tcp://127.0.0.1:PORT", got {control!r}')
        control = default
    fields: dict[str, Any] = {"control": resolve_endpoint(control, here)}
    group = section.get("control_group")
    if group is not None and not isinstance(group, str):
        bad("control_group", f"expected a group name, got {group!r}")
    elif group is not None:
        fields["control_group"] = group
        gid = machine.find_group_by_name(group)
        if gid is None:
            bad("control_group", f"no such group {group!r} on this machine")
        fields["control_gid"] = gid
    table = section.get("curve")
    if table is not None:
        fields["curve"] = _parse_curve(table, here, bad)
    if fields["control"].startswith("tcp://") and table is None:
        bad("control", f"{fields['control']}: a tcp:// endpoint needs CURVE keys in [procguard.curve] "
            "(server_secret_key, authorized_clients); use ipc:// for a local socket")
    return fields


def _parse_curve(table: object, here: str, bad: Callable[[str, str], None]) -> CurveConfig | None:
    """[procguard.curve]: the server's secret key file and the directory of authorised clients' public keys."""
    if not isinstance(table, dict):
        bad("curve", "expected a table [procguard.curve]")
        return None
    for key in sorted(set(table) - CURVE_KEYS):
        bad(f"curve.{key}", "unknown key" + did_you_mean(key, CURVE_KEYS))
    secret, clients = table.get("server_secret_key"), table.get("authorized_clients")
    if not isinstance(secret, str):
        bad("curve.server_secret_key", "is required: the server's NAME.key_secret file (procguardctl keygen)")
    elif not os.path.isfile(os.path.join(here, secret)):
        bad("curve.server_secret_key", f"{os.path.join(here, secret)}: no such file")
    if not isinstance(clients, str):
        bad("curve.authorized_clients", "is required: a directory of clients' public NAME.key files")
    elif not os.path.isdir(os.path.join(here, clients)):
        bad("curve.authorized_clients", f"{os.path.join(here, clients)}: no such directory")
    if isinstance(secret, str) and isinstance(clients, str):
        return CurveConfig(server_secret_key=os.path.join(here, secret), authorized_clients=os.path.join(here, clients))
    return None


def _parse_metrics(section: dict[str, Any], src: str, here: str, issues: list[ConfigIssue]) -> MetricsConfig | None:
    """`metrics = "127.0.0.1:9101"` (or "[::1]:9101", a unix socket path); beyond loopback only with metrics_public."""

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(src, None, f"procguard.{key}", message))

    default_public: bool = default_of(MetricsConfig, "public")
    public = section.get("metrics_public", default_public)
    if not isinstance(public, bool):
        bad("metrics_public", f"expected true or false, got {public!r}")
        public = default_public
    value = section.get("metrics")
    if value is None:
        return None
    expected = 'expected "127.0.0.1:PORT", "[::1]:PORT" or a unix socket path like "/run/procguard/metrics.sock"'
    if not isinstance(value, str) or not value:
        bad("metrics", f"{expected}, got {value!r}")
        return None
    if value.startswith("unix:") or "/" in value:
        path = value.removeprefix("unix:")
        return MetricsConfig(path=os.path.normpath(os.path.join(here, path)), public=public)
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text) if sep and port_text.isdigit() else -1
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else (host or "0.0.0.0"))
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        bad("metrics", f"{expected}, got {value!r}")
        return None
    if not address.is_loopback and not public:
        bad("metrics", f"{value!r} listens beyond loopback, where anyone who reaches the port reads every program's "
            "name, pid and resources; use 127.0.0.1:PORT (scraped from this host or through a tunnel), or set "
            "metrics_public = true to allow it (and firewall the port)")
        return None
    return MetricsConfig(host=str(address), port=port, public=public)
