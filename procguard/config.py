"""Parse TOML config files into frozen dataclasses, and diff two configs for reload.

Everything the daemon knows about programs comes from `load_config`, once per load; no raw dict travels
past this module. Every problem is collected in one pass and raised together as a `ConfigError`, each
naming the file, the program and the key.
"""

import enum
import glob
import grp
import math
import os
import pwd
import re
import shlex
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procguard import servers
from procguard.errors import ConfigError, ConfigIssue
from procguard.protocol import default_endpoint, resolve_endpoint


class AutoRestart(enum.StrEnum):
    ALWAYS = "true"
    NEVER = "false"
    UNEXPECTED = "unexpected"


# Log destinations that are not file paths.
LOG_AUTO = "AUTO"
LOG_NONE = "NONE"
LOG_INHERIT = "inherit"  # the daemon's own stdout/stderr ("journal" is an alias: journald reads those)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables copied from the daemon's environment into every child's base environment; nothing else leaks.
PASSED_THROUGH_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    """One process of a program, with every template resolved."""

    name: str  # "web" or "worker:worker_00"
    process_num: int
    command: tuple[str, ...]
    directory: str | None
    environment: tuple[tuple[str, str], ...]
    stdout_logfile: str  # a path, LOG_NONE or LOG_INHERIT (AUTO is resolved)
    stderr_logfile: str


class Ready(enum.StrEnum):
    """When a started process counts as RUNNING."""

    STARTSECS = "startsecs"  # up for startsecs (supervisor's rule; the default without a health check)
    NOTIFY = "notify"  # it sent READY=1 on its NOTIFY_SOCKET (sd_notify; gunicorn, uWSGI speak it)
    HEALTHCHECK = "healthcheck"  # its health check passed once (the default with a health check)


HEALTHCHECK_TYPES = ("http", "tcp", "uwsgi", "exec")


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    """`[program.NAME.healthcheck]`: how to tell a running process is healthy."""

    type: str  # one of HEALTHCHECK_TYPES
    url: str | None = None  # http: "http://127.0.0.1:8000/health/"
    unix_socket: str | None = None  # http over a unix socket (with `path`)
    address: str | None = None  # tcp and uwsgi: "host:port" (uwsgi also a unix socket path)
    path: str = "/"  # http with unix_socket, and uwsgi: the request path
    method: str = "GET"
    host: str | None = None  # the Host header (default: from the url, or "localhost")
    expect_status: tuple[int, ...] = (200,)
    expect_body: str | None = None  # a substring the body must contain
    command: tuple[str, ...] = ()  # exec: exit 0 = healthy; runs as the program's user
    interval: float = 10.0
    timeout: float = 5.0
    retries: int = 3  # consecutive failures before unhealthy
    start_period: float = 0.0  # failures in this time after spawn do not count (readiness still waits)
    on_unhealthy: str = "restart"  # "restart" | "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramConfig:
    """A `[program.NAME]` table, resolved. Field names are supervisor's keys."""

    name: str
    source: str = field(compare=False)
    processes: tuple[ProcessConfig, ...]
    user: str | None
    uid: int | None
    gid: int | None
    extra_groups: tuple[int, ...] | None
    umask: int | None
    autostart: bool
    autorestart: AutoRestart
    exitcodes: tuple[int, ...]
    startsecs: float
    startretries: int | None  # None: retry forever (procguard's default; supervisor's is 3)
    stopsignal: int
    stopwaitsecs: float
    stopasgroup: bool
    killasgroup: bool
    priority: int
    redirect_stderr: bool
    stdout_logfile_maxbytes: int  # 0: never rotate
    stdout_logfile_backups: int
    stdout_logfile_timestamps: bool
    stdout_tail_maxbytes: int  # the in-memory tail buffer behind `procguardctl tail`
    stderr_logfile_maxbytes: int
    stderr_logfile_backups: int
    stderr_logfile_timestamps: bool
    stderr_tail_maxbytes: int
    backoff_initial: float
    backoff_max: float
    backoff_reset: float
    type: str = "simple"  # "simple" (a service) or "oneshot" (a job: success is an exit code in exitcodes)
    ready: Ready = Ready.STARTSECS
    start_timeout: float = 60.0  # notify/healthcheck readiness: not ready by then = a failed start
    healthcheck: HealthCheckConfig | None = None
    depends_on: tuple[str, ...] = ()
    max_memory: int | None = None  # RSS of the whole tree, bytes
    max_age: float | None = None  # seconds
    max_age_jitter: float = 0.0
    resource_check_interval: float = 10.0
    sockets: tuple[str, ...] = ()  # held sockets passed as fds 3.. (LISTEN_FDS), {socket.NAME.fd} in command
    # LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES for the sockets, unless the command names its fds itself with
    # {socket.NAME.fd}: gunicorn given both takes each socket twice and fails (EBADF).
    listen_env: bool = True
    server: str | None = None  # uwsgi, gunicorn, daphne, uvicorn, hypercorn: fills in the defaults (servers.py)
    reload_signal: int | None = None  # reload-app: this signal (graceful in-place reload), else a restart
    # A restart first moves the held TCP sockets to fresh ones for the next process and waits up to this
    # long for the old one to finish its connections, then stops it (sockets.py, "handover"). 0: no wait.
    drain_timeout: float = 0.0

    @property
    def is_group(self) -> bool:
        """True when the program's processes are named `program:process`."""
        return len(self.processes) > 1 or self.processes[0].name != self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketConfig:
    """`[socket.NAME]`: a listening socket procguard binds and holds across its programs' restarts."""

    name: str
    source: str = field(compare=False)
    bind: str  # "tcp://127.0.0.1:8000", "tcp://[::1]:8000" or "unix:/run/app/web.sock"
    backlog: int = 1024
    mode: int | None = None  # unix sockets: file mode
    owner_uid: int | None = None  # unix sockets: chown
    owner_gid: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveConfig:
    """CURVE keys for a tcp:// control endpoint (files as written by `procguardctl keygen`)."""

    server_secret_key: str  # NAME.key_secret: the server's key pair
    authorized_clients: str  # a directory of clients' public NAME.key files


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole resolved configuration."""

    path: str
    logdir: str
    loglevel: str
    programs: tuple[ProgramConfig, ...]
    control: str = field(default_factory=default_endpoint)
    control_group: str | None = None
    control_gid: int | None = None
    curve: CurveConfig | None = None
    sockets: tuple[SocketConfig, ...] = ()
    warnings: tuple[ConfigIssue, ...] = field(default=(), compare=False)
    lints: tuple[ConfigIssue, ...] = field(default=(), compare=False)  # known traps: warned, not refused

    def socket_users(self) -> dict[str, int]:
        """How many processes each held socket is passed to (a handover needs it to be exactly one)."""
        users: dict[str, int] = {}
        for prog in self.programs:
            for name in prog.sockets:
                users[name] = users.get(name, 0) + len(prog.processes)
        return users

    def program(self, name: str) -> ProgramConfig | None:
        for prog in self.programs:
            if prog.name == name:
                return prog
        return None


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload changes: program names in each bucket."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs program by program (the `source` file does not count)."""
    old_by_name = {p.name: p for p in old.programs}
    new_by_name = {p.name: p for p in new.programs}
    added = tuple(n for n in new_by_name if n not in old_by_name)
    removed = tuple(n for n in old_by_name if n not in new_by_name)
    old_socks = {s.name: s for s in old.sockets}
    new_socks = {s.name: s for s in new.sockets}

    def sockets_changed(prog: ProgramConfig) -> bool:
        return any(old_socks.get(n) != new_socks.get(n) for n in prog.sockets)

    changed = tuple(n for n in new_by_name if n in old_by_name
                    and (new_by_name[n] != old_by_name[n] or sockets_changed(new_by_name[n])))
    return ConfigDiff(added=added, changed=changed, removed=removed)


# --------------------------------------------------------------------------------------------- units

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
# supervisor's sizes are powers of 1024 ("50MB" is 50 * 1024 * 1024); keep its meaning.
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


class _Bad(ValueError):
    """A value was not of the expected form; the message says what was expected."""


def parse_duration(value: object) -> float:
    """Return seconds from 10, 2.5, "500ms", "10s", "2m", "1h" or "1d"."""
    if isinstance(value, bool):
        raise _Bad(f'expected a duration like 10 or "500ms", got {value!r}')
    if isinstance(value, int | float):
        if math.isnan(value) or value < 0:
            raise _Bad(f"expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise _Bad(f'expected a duration like 10, "500ms", "10s" or "2m", got {value!r}')


_MAX_SIZE = 2**63 - 1


def parse_size(value: object) -> int:
    """Return bytes from 1024, "50MB", "1GB" (powers of 1024, as supervisor)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE:
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = m.group(2).upper() if m.group(2) else None
            # Integers, not float: exact, no OverflowError (and no `decimal`, 0.3 MiB of the daemon, #17).
            # 30 decimals suffice: n / 1024**3 has at most 30; 20 digits before the point exceed 8 EiB.
            whole, _, frac = m.group(1).partition(".")
            whole, frac = whole.lstrip("0"), frac[:30]
            size = int(whole + frac or "0") * _SIZE_UNITS[unit] // int(10 ** len(frac)) if len(whole) < 20 else -1
            if 0 <= size <= _MAX_SIZE:
                return size
            raise _Bad(f"expected a size up to 8 EiB (a file offset), got {value!r}")
    raise _Bad(f'expected a size like 1048576 or "50MB", got {value!r}')


def parse_signal(value: object) -> int:
    """Return a signal number from "TERM", "SIGQUIT" or 15."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise _Bad(f"expected a signal name or number, got {value!r}") from None
    if isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise _Bad(f'expected a signal name like "TERM" or "QUIT", got {value!r}')


def parse_umask(value: object) -> int:
    """Return a umask from the octal string "022" or an integer (0o22)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o777:
        return value
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{1,3}", value.strip()):
        return int(value.strip(), 8)
    raise _Bad(f'expected an octal umask like "022", got {value!r}')


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Bad(f"expected true or false, got {value!r}")


def _parse_int(value: object, minimum: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if minimum is not None and value < minimum:
            raise _Bad(f"expected an integer >= {minimum}, got {value!r}")
        return value
    raise _Bad(f"expected an integer, got {value!r}")


def _parse_str(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _Bad(f"expected a string, got {value!r}")


def _parse_autorestart(value: object) -> AutoRestart:
    if isinstance(value, bool):
        return AutoRestart.ALWAYS if value else AutoRestart.NEVER
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "unexpected"):
        return AutoRestart(value.strip().lower())
    raise _Bad(f'expected true, false or "unexpected", got {value!r}')


def _parse_exitcodes(value: object) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise _Bad(f'expected a list of exit codes like [0, 2], got {value!r}') from None
    if isinstance(value, list) and value and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value
    ):
        return tuple(value)
    raise _Bad(f"expected a list of exit codes (0-255) like [0, 2], got {value!r}")


def _parse_command(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise _Bad(f"cannot split command: {exc}") from None
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = list(value)
    else:
        raise _Bad(f"expected a string or an array of strings, got {value!r}")
    if not argv or not argv[0]:
        raise _Bad("expected a non-empty command")
    return tuple(argv)


def _parse_environment(value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Bad(f'expected a table like {{ DJANGO_SETTINGS_MODULE = "app.settings" }}, got {value!r}')
    out = []
    for k, v in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise _Bad(f"expected variable names of letters, digits and _, got {k!r}")
        if isinstance(v, bool):
            v = "true" if v else "false"
        if not isinstance(v, str | int | float):
            raise _Bad(f"expected string values, got {k} = {v!r}")
        out.append((k, str(v)))
    return tuple(out)


# ------------------------------------------------------------------------------------------ programs

# Keys of [program.NAME] and their defaults where supervisor's default is kept. See docs/configuration.md.
PROGRAM_KEYS = frozenset(
    {
        "command", "directory", "user", "group", "umask", "environment", "autostart", "autorestart",
        "exitcodes", "startsecs", "startretries", "stopsignal", "stopwaitsecs", "stopasgroup",
        "killasgroup", "priority", "numprocs", "numprocs_start", "process_name", "redirect_stderr",
        "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
        "stderr_logfile", "stderr_logfile_maxbytes", "stderr_logfile_backups",
        "stdout_logfile_timestamps", "stderr_logfile_timestamps", "stdout_tail_maxbytes", "stderr_tail_maxbytes",
        "backoff_initial", "backoff_max", "backoff_reset",
        "type", "ready", "start_timeout", "healthcheck", "depends_on", "max_memory", "max_age", "max_age_jitter",
        "resource_check_interval", "sockets", "server", "reload_signal", "drain_timeout",
    }
)
PROCGUARD_KEYS = frozenset({"include", "logdir", "loglevel", "control", "control_group", "curve"})
HEALTHCHECK_KEYS = frozenset({
    "type", "url", "unix_socket", "address", "path", "method", "host", "expect_status", "expect_body", "command",
    "interval", "timeout", "retries", "start_period", "on_unhealthy",
})
CURVE_KEYS = frozenset({"server_secret_key", "authorized_clients", "client_secret_key"})
LOGLEVELS = ("debug", "info", "warning", "error", "critical")

_TEMPLATE_RE = re.compile(
    r"\{(here|program_name|group_name|process_num|ENV_[A-Za-z_][A-Za-z0-9_]*|socket\.[A-Za-z0-9_.-]+?\.fd)(:[0-9<>^=+ -]*d)?\}"
)
_PROGRAM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def expand(template: str, variables: dict[str, object], environ: dict[str, str]) -> str:
    """Expand {here}, {program_name}, {process_num[:02d]} and {ENV_X}; other braces stay as written.

    Raises _Bad naming an undefined ENV_ variable.
    """

    def repl(m: re.Match[str]) -> str:
        name, spec = m.group(1), m.group(2)
        if name.startswith("ENV_"):
            var = name[4:]
            if var not in environ:
                raise _Bad(f"{{{name}}}: the daemon's environment has no {var}")
            return environ[var]
        if name.startswith("socket.") and name not in variables:
            raise _Bad(f"{{{name}}}: socket {name[7:-3]!r} is not in this program's sockets")
        value = variables[name]
        if spec:
            if not isinstance(value, int):
                raise _Bad(f"{{{name}{spec}}}: a number format needs a number")
            return format(value, spec[1:])
        return str(value)

    return _TEMPLATE_RE.sub(repl, template)


class _Program:
    """Collects issues while resolving one [program.NAME] table."""

    def __init__(self, name: str, table: dict[str, Any], source: str, issues: list[ConfigIssue]) -> None:
        self.name, self.table, self.source, self.issues = name, table, source, issues

    def err(self, key: str | None, message: str) -> None:
        issue = ConfigIssue(self.source, self.name, key, message)
        if issue not in self.issues:  # a template shared by numprocs processes fails once, not N times
            self.issues.append(issue)

    def get(self, key: str, parser: Any, default: Any) -> Any:
        if key not in self.table:
            return default
        try:
            return parser(self.table[key])
        except _Bad as exc:
            self.err(key, str(exc))
            return default


def _parse_ready(value: object) -> Ready:
    if isinstance(value, str) and value.lower() in set(Ready):
        return Ready(value.lower())
    raise _Bad(f'expected "startsecs", "notify" or "healthcheck", got {value!r}')


def _parse_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise _Bad(f'expected a list of program names like ["db", "migrate"], got {value!r}')


def _parse_status_codes(value: object) -> tuple[int, ...]:
    codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(codes, list) and codes and all(
            isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in codes):
        return tuple(codes)
    raise _Bad(f"expected an HTTP status or a list of them like [200, 204], got {value!r}")


def _parse_address(value: object) -> str:
    if isinstance(value, str):
        if value.startswith("/") or value.startswith("unix:"):
            return value
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise _Bad(f'expected "host:port" or a unix socket path, got {value!r}')


def _parse_healthcheck(p: "_Program", table: object) -> HealthCheckConfig | None:
    """Resolve [program.NAME.healthcheck]; every problem goes to p as healthcheck.KEY."""
    if not isinstance(table, dict):
        p.err("healthcheck", "expected a table [program.NAME.healthcheck]")
        return None
    n_before = len(p.issues)
    for key in sorted(set(table) - HEALTHCHECK_KEYS):
        p.err(f"healthcheck.{key}", "unknown key" + _did_you_mean(key, HEALTHCHECK_KEYS))

    def get(key: str, parser: Any, default: Any) -> Any:
        if key not in table:
            return default
        try:
            return parser(table[key])
        except _Bad as exc:
            p.err(f"healthcheck.{key}", str(exc))
            return default

    kind = get("type", _parse_str, None)
    if kind not in HEALTHCHECK_TYPES:
        p.err("healthcheck.type", f"expected one of {', '.join(HEALTHCHECK_TYPES)}, got {kind!r}")
        return None
    url = get("url", _parse_str, None)
    unix_socket = get("unix_socket", _parse_str, None)
    address = get("address", _parse_address, None)
    command = get("command", _parse_command, ())
    if kind == "http":
        if (url is None) == (unix_socket is None):
            p.err("healthcheck.url", 'http needs either url = "http://127.0.0.1:PORT/path" or unix_socket + path')
        elif url is not None and not re.match(r"^http://[^/\s]+(/\S*)?$", url):
            p.err("healthcheck.url", f'expected "http://host:port/path" (plain HTTP), got {url!r}')
    if kind in ("tcp", "uwsgi") and address is None:
        p.err("healthcheck.address", f'{kind} needs address = "127.0.0.1:PORT"'
              + (" or a unix socket path" if kind == "uwsgi" else ""))
    if kind == "exec" and not command:
        p.err("healthcheck.command", "exec needs command = [...]: exit 0 means healthy")
    on_unhealthy = get("on_unhealthy", _parse_str, "restart")
    if on_unhealthy not in ("restart", "none"):
        p.err("healthcheck.on_unhealthy", f'expected "restart" or "none", got {on_unhealthy!r}')
    path = get("path", _parse_str, "/")
    if not path.startswith("/"):
        p.err("healthcheck.path", f'expected a path starting with "/", got {path!r}')
    hc = HealthCheckConfig(
        type=kind, url=url, unix_socket=unix_socket, address=address, path=path,
        method=get("method", _parse_str, "GET").upper(), host=get("host", _parse_str, None),
        expect_status=get("expect_status", _parse_status_codes, (200,)),
        expect_body=get("expect_body", _parse_str, None), command=command,
        interval=get("interval", parse_duration, 10.0), timeout=get("timeout", parse_duration, 5.0),
        retries=get("retries", lambda v: _parse_int(v, 1), 3), start_period=get("start_period", parse_duration, 0.0),
        on_unhealthy=on_unhealthy,
    )
    if hc.interval <= 0 or hc.timeout <= 0:
        p.err("healthcheck.interval", "interval and timeout must be above 0")
    return hc if len(p.issues) == n_before else None


def _resolve_log(value: str, logdir: str, process_name: str, stream: str) -> str:
    if value.upper() == LOG_AUTO:
        return os.path.join(logdir, f"{process_name.replace(':', '_')}-{stream}.log")
    if value.upper() == LOG_NONE:
        return LOG_NONE
    if value.lower() in (LOG_INHERIT, "journal"):
        return LOG_INHERIT
    return value


def _parse_program(
    name: str, table: Any, source: str, logdir: str, environ: dict[str, str], issues: list[ConfigIssue]
) -> ProgramConfig | None:
    p = _Program(name, table if isinstance(table, dict) else {}, source, issues)
    if not isinstance(table, dict):
        p.err(None, f"expected a table, got {table!r}")
        return None
    if not _PROGRAM_NAME_RE.fullmatch(name):
        p.err(None, "program names may use only letters, digits, '_', '.' and '-'")
    for key in sorted(set(table) - PROGRAM_KEYS):
        p.err(key, "unknown key" + _did_you_mean(key, PROGRAM_KEYS))
    n_issues = len(issues)

    if "command" not in table:
        p.err("command", "is required")
    command = p.get("command", _parse_command, ("",))
    directory = p.get("directory", _parse_str, None)
    user = p.get("user", _parse_str, None)
    group = p.get("group", _parse_str, None)
    uid = gid = None
    extra_groups: tuple[int, ...] | None = None
    home = shell = login = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError:
            p.err("user", f"no such user {user!r} on this machine")
        else:
            uid, gid, home, shell, login = pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell, pw.pw_name
            # The user's own supplementary groups as initgroups(3) sets them, never the daemon's (root's).
            extra_groups = tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
        except KeyError:
            p.err("group", f"no such group {group!r} on this machine")
    if (user is not None or group is not None) and os.geteuid() != 0:
        running_as = pwd.getpwuid(os.geteuid()).pw_name
        if user is not None and uid is not None and uid != os.geteuid():
            p.err("user", f"the daemon runs as {running_as!r}, not root, so it cannot switch to {user!r}")

    umask = p.get("umask", parse_umask, None)
    environment = p.get("environment", _parse_environment, ())
    numprocs = p.get("numprocs", lambda v: _parse_int(v, 1), 1)
    numprocs_start = p.get("numprocs_start", lambda v: _parse_int(v, 0), 0)
    default_name = "{program_name}" if numprocs == 1 else "{program_name}_{process_num:02d}"
    process_name = p.get("process_name", _parse_str, default_name)
    if numprocs > 1 and "{process_num" not in process_name:
        p.err("process_name", f"with numprocs = {numprocs} it must contain {{process_num}}, got {process_name!r}")
    stdout_logfile = p.get("stdout_logfile", _parse_str, LOG_AUTO)
    stderr_logfile = p.get("stderr_logfile", _parse_str, LOG_AUTO)
    redirect_stderr = p.get("redirect_stderr", _parse_bool, False)
    streams: dict[str, Any] = {}
    for stream in ("stdout", "stderr"):
        streams[f"{stream}_logfile_maxbytes"] = p.get(f"{stream}_logfile_maxbytes", parse_size, 50 * 1024 * 1024)
        streams[f"{stream}_logfile_backups"] = p.get(f"{stream}_logfile_backups", lambda v: _parse_int(v, 0), 10)
        streams[f"{stream}_logfile_timestamps"] = p.get(f"{stream}_logfile_timestamps", _parse_bool, False)
        tail = streams[f"{stream}_tail_maxbytes"] = p.get(f"{stream}_tail_maxbytes", parse_size, 64 * 1024)
        if tail > 64 * 1024 * 1024:
            p.err(f"{stream}_tail_maxbytes", f"at most 64MB (it is kept in memory per process), got {tail}")
    if redirect_stderr and "stderr_logfile" in table:
        p.err("stderr_logfile", "is ignored with redirect_stderr = true; remove one of them")

    sockets = p.get("sockets", _parse_names, ())
    here = str(Path(source).resolve().parent)
    processes = []
    names_seen: set[str] = set()
    for num in range(numprocs_start, numprocs_start + numprocs):
        variables: dict[str, object] = {"here": here, "program_name": name, "group_name": name, "process_num": num}
        # Held sockets reach the child as fds 3, 4, ... in the order of `sockets` (systemd's LISTEN_FDS).
        variables.update({f"socket.{sock}.fd": 3 + i for i, sock in enumerate(sockets)})

        def ex(key: str, value: str) -> str:
            try:
                return expand(value, variables, environ)
            except _Bad as exc:
                p.err(key, str(exc))
                return value

        pname = ex("process_name", process_name)
        full = pname if numprocs == 1 and pname == name else f"{name}:{pname}"
        if pname in names_seen:
            p.err("process_name", f"{process_name!r} gives the same name {pname!r} to two processes")
        names_seen.add(pname)
        env: dict[str, str] = {k: environ[k] for k in PASSED_THROUGH_ENV if k in environ}
        env.setdefault("PATH", DEFAULT_PATH)
        if user is not None and home is not None:
            env.update(HOME=home, USER=login or user, LOGNAME=login or user, SHELL=shell or "/bin/sh")
        else:
            me = pwd.getpwuid(os.geteuid())
            env.update(HOME=me.pw_dir, USER=me.pw_name, LOGNAME=me.pw_name, SHELL=me.pw_shell or "/bin/sh")
        # supervisor's variables, so scripts that look for them keep working.
        env.update(
            SUPERVISOR_ENABLED="1", SUPERVISOR_PROCESS_NAME=pname, SUPERVISOR_GROUP_NAME=name,
            PROCGUARD_PROCESS=full,
        )
        for k, v in environment:
            env[k] = ex("environment", v)
        processes.append(
            ProcessConfig(
                name=full,
                process_num=num,
                command=tuple(ex("command", a) for a in command),
                directory=ex("directory", directory) if directory is not None else None,
                environment=tuple(sorted(env.items())),
                stdout_logfile=_resolve_log(ex("stdout_logfile", stdout_logfile), logdir, full, "stdout"),
                stderr_logfile=(
                    LOG_NONE
                    if redirect_stderr
                    else _resolve_log(ex("stderr_logfile", stderr_logfile), logdir, full, "stderr")
                ),
            )
        )

    startretries = p.get("startretries", lambda v: _parse_int(v, 0), None)
    server = p.get("server", _parse_str, None)
    prof = None
    if server is not None:
        if server not in servers.SERVERS:
            p.err("server", f"expected one of {', '.join(servers.SERVERS)}, got {server!r}")
            server = None
        else:
            prof = servers.profile(server, processes[0].command if processes else ())
    kind = p.get("type", _parse_str, "simple")
    if kind not in ("simple", "oneshot"):
        p.err("type", f'expected "simple" (a service) or "oneshot" (a job run once), got {kind!r}')
        kind = "simple"
    healthcheck = _parse_healthcheck(p, table.get("healthcheck")) if "healthcheck" in table else None
    ready_default = Ready.HEALTHCHECK if healthcheck is not None else Ready.STARTSECS
    if prof is not None and healthcheck is None:
        ready_default = Ready(prof.ready)
    ready = p.get("ready", _parse_ready, ready_default)
    if ready == Ready.HEALTHCHECK and healthcheck is None:
        p.err("ready", 'is "healthcheck" but there is no [program.NAME.healthcheck] table')
    if kind == "oneshot" and ("ready" in table or healthcheck is not None):
        p.err("type", "a oneshot is done when it exits; ready and healthcheck do not apply")
    depends_on = p.get("depends_on", _parse_names, ())
    max_memory = p.get("max_memory", parse_size, None)
    max_age = p.get("max_age", parse_duration, None)
    if kind == "oneshot" and (max_memory is not None or max_age is not None):
        p.err("type", "max_memory and max_age restart services; a oneshot is not restarted")
    prog = ProgramConfig(
        name=name,
        source=source,
        processes=tuple(processes),
        user=user,
        uid=uid,
        gid=gid,
        extra_groups=extra_groups,
        umask=umask,
        autostart=p.get("autostart", _parse_bool, True),
        autorestart=p.get("autorestart", _parse_autorestart, AutoRestart.UNEXPECTED),
        exitcodes=p.get("exitcodes", _parse_exitcodes, (0,)),
        startsecs=p.get("startsecs", parse_duration, 1.0),
        startretries=startretries,
        stopsignal=p.get("stopsignal", parse_signal, prof.stopsignal if prof else int(signal.SIGTERM)),
        stopwaitsecs=p.get("stopwaitsecs", parse_duration, prof.stopwaitsecs if prof else 10.0),
        stopasgroup=p.get("stopasgroup", _parse_bool, True),
        killasgroup=p.get("killasgroup", _parse_bool, True),
        priority=p.get("priority", _parse_int, 999),
        redirect_stderr=redirect_stderr,
        **streams,
        backoff_initial=p.get("backoff_initial", parse_duration, 1.0),
        backoff_max=p.get("backoff_max", parse_duration, 60.0),
        backoff_reset=p.get("backoff_reset", parse_duration, 10.0),
        type=kind,
        ready=ready,
        start_timeout=p.get("start_timeout", parse_duration, 60.0),
        healthcheck=healthcheck,
        depends_on=depends_on,
        max_memory=max_memory,
        max_age=max_age,
        max_age_jitter=p.get("max_age_jitter", parse_duration, 0.0),
        resource_check_interval=p.get("resource_check_interval", parse_duration, 10.0),
        sockets=sockets,
        listen_env=not any("{socket." in part for part in command),
        server=server,
        reload_signal=p.get("reload_signal", parse_signal, prof.reload_signal if prof else None),
        drain_timeout=p.get("drain_timeout", parse_duration, prof.drain if prof else 0.0),
    )
    if "drain_timeout" in table and not sockets:
        p.err("drain_timeout", "applies to programs with held sockets (sockets = [...]): it hands their new "
                               "connections to the next process while the old one finishes its own")
    if prog.stopasgroup and not prog.killasgroup and "killasgroup" in table:
        p.err("killasgroup", "must be true when stopasgroup is true (as in supervisor)")
    return prog if len(issues) == n_issues else None


def _did_you_mean(key: str, known: frozenset[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_toml(path: Path, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        issues.append(ConfigIssue(str(path), None, None, "no such file"))
    except PermissionError:
        issues.append(ConfigIssue(str(path), None, None, "permission denied"))
    except IsADirectoryError:
        issues.append(ConfigIssue(str(path), None, None, "is a directory, expected a TOML file"))
    except tomllib.TOMLDecodeError as exc:
        issues.append(ConfigIssue(str(path), None, None, f"invalid TOML: {exc}"))
    except UnicodeDecodeError as exc:
        issues.append(ConfigIssue(str(path), None, None, f"not UTF-8: {exc}"))
    return None


def default_logdir() -> str:
    if os.geteuid() == 0:
        return "/var/log/procguard"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "procguard", "log")


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read the main file and its includes; return a resolved Config.

    Raises ConfigError listing every problem (file, program, key) when anything is wrong.
    """
    environ = dict(os.environ if environ is None else environ)
    main = Path(path)
    issues: list[ConfigIssue] = []
    data = _read_toml(main, issues)
    if data is None:
        raise ConfigError(issues)
    src = str(main)
    here = str(main.resolve().parent)

    section = data.get("procguard", {})
    if not isinstance(section, dict):
        issues.append(ConfigIssue(src, None, "procguard", "expected a table"))
        section = {}
    for key in sorted(set(section) - PROCGUARD_KEYS):
        issues.append(ConfigIssue(src, None, f"procguard.{key}", "unknown key" + _did_you_mean(key, PROCGUARD_KEYS)))
    for key in sorted(set(data) - {"procguard", "program", "socket"}):
        issues.append(ConfigIssue(src, None, key, "unknown table (expected [procguard], [program.NAME] or [socket.NAME])"))

    def expand_here(key: str, value: object) -> str | None:
        if not isinstance(value, str):
            issues.append(ConfigIssue(src, None, key, f"expected a string, got {value!r}"))
            return None
        try:
            return expand(value, {"here": here, "program_name": "", "group_name": "", "process_num": 0}, environ)
        except _Bad as exc:
            issues.append(ConfigIssue(src, None, key, str(exc)))
            return None

    logdir = default_logdir()
    if "logdir" in section:
        logdir = expand_here("procguard.logdir", section["logdir"]) or logdir
        # Normalised: output.py compares a log file's directory with it ("../../var/log" was never created).
        logdir = os.path.normpath(os.path.join(here, logdir))
    loglevel = section.get("loglevel", "info")
    if not isinstance(loglevel, str) or loglevel.lower() not in LOGLEVELS:
        issues.append(ConfigIssue(src, None, "procguard.loglevel", f"expected one of {', '.join(LOGLEVELS)}, got {loglevel!r}"))
        loglevel = "info"

    control, control_group, control_gid, curve = _parse_control(section, src, here, issues)

    files: list[tuple[str, dict[str, Any]]] = [(src, data)]
    includes = section.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(g, str) for g in includes):
        issues.append(ConfigIssue(src, None, "procguard.include", f"expected a list of globs, got {includes!r}"))
        includes = []
    seen_files = {str(main.resolve())}
    for pattern in includes:
        expanded = expand_here("procguard.include", pattern)
        if expanded is None:
            continue
        full = os.path.join(here, expanded)
        # Escape the directory: a config under "conf[1]/" must not turn into a character class.
        matches = sorted(glob.glob(os.path.join(glob.escape(here), expanded)))
        if not matches and not glob.has_magic(expanded):
            issues.append(ConfigIssue(src, None, "procguard.include", f"{pattern!r}: no such file {full}"))
        for match in matches:
            if str(Path(match).resolve()) in seen_files:
                continue
            seen_files.add(str(Path(match).resolve()))
            inc = _read_toml(Path(match), issues)
            if inc is None:
                continue
            for key in sorted(set(inc) - {"program", "socket"}):
                what = "[procguard] belongs in the main file" if key == "procguard" else "unknown table (expected [program.NAME] or [socket.NAME])"
                issues.append(ConfigIssue(match, None, key, what))
            files.append((match, inc))

    programs: list[ProgramConfig] = []
    defined_in: dict[str, str] = {}
    for source, content in files:
        tables = content.get("program", {})
        if not isinstance(tables, dict):
            issues.append(ConfigIssue(source, None, "program", "expected [program.NAME] tables"))
            continue
        for name, table in tables.items():
            if name in defined_in:
                issues.append(ConfigIssue(source, name, None, f"program defined twice: also in {defined_in[name]}"))
                continue
            defined_in[name] = source
            prog = _parse_program(name, table, source, logdir, environ, issues)
            if prog is not None:
                programs.append(prog)
    sockets: list[SocketConfig] = []
    socket_defined_in: dict[str, str] = {}
    for source, content in files:
        tables = content.get("socket", {})
        if not isinstance(tables, dict):
            issues.append(ConfigIssue(source, None, "socket", "expected [socket.NAME] tables"))
            continue
        for name, table in tables.items():
            if name in socket_defined_in:
                issues.append(ConfigIssue(source, None, f"socket.{name}", f"defined twice: also in {socket_defined_in[name]}"))
                continue
            socket_defined_in[name] = source
            sock = _parse_socket(name, table, source, issues)
            if sock is not None:
                sockets.append(sock)
    for prog in programs:
        for sock_name in prog.sockets:
            if sock_name not in socket_defined_in:
                issues.append(ConfigIssue(prog.source, prog.name, "sockets", f"no [socket.{sock_name}] table"
                                          + _did_you_mean(sock_name, frozenset(socket_defined_in))))
    _check_dependencies(programs, issues)
    if issues:
        raise ConfigError(issues)
    programs.sort(key=lambda p: (p.priority, p.name))
    lints: list[ConfigIssue] = []
    for prog in programs:
        hc = prog.healthcheck
        for message in servers.lint(prog.server, prog.processes[0].command, prog.stopsignal, prog.stopwaitsecs,
                                    prog.reload_signal, hc.url if hc is not None and hc.type == "http" else None,
                                    hc.host if hc is not None else None):
            lints.append(ConfigIssue(prog.source, prog.name, None, message))
    for message in servers.gunicorn_control_socket_lint(
            [(p.name, p.server, p.processes[0].command, p.user) for p in programs]):
        lints.append(ConfigIssue(src, None, None, message))
    return Config(path=src, logdir=logdir, loglevel=loglevel.lower(), programs=tuple(programs),
                  control=control, control_group=control_group, control_gid=control_gid, curve=curve,
                  sockets=tuple(sockets), warnings=tuple(environment_problems(programs, logdir)),
                  lints=tuple(lints))


SOCKET_KEYS = frozenset({"bind", "backlog", "mode", "owner"})


def _parse_socket(name: str, table: object, source: str, issues: list[ConfigIssue]) -> SocketConfig | None:
    """Resolve one [socket.NAME] table; problems are reported as socket.NAME.KEY."""
    n_before = len(issues)

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(source, None, f"socket.{name}.{key}", message))

    if not isinstance(table, dict):
        issues.append(ConfigIssue(source, None, f"socket.{name}", "expected a table"))
        return None
    for key in sorted(set(table) - SOCKET_KEYS):
        bad(key, "unknown key" + _did_you_mean(key, SOCKET_KEYS))
    bind = table.get("bind")
    if not isinstance(bind, str) or not (
        re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}", bind) or re.fullmatch(r"unix:/\S+", bind)
    ):
        bad("bind", f'expected "tcp://127.0.0.1:8000" or "unix:/run/app/web.sock", got {bind!r}')
    backlog = table.get("backlog", 1024)
    if not isinstance(backlog, int) or isinstance(backlog, bool) or backlog < 1:
        bad("backlog", f"expected a positive integer, got {backlog!r}")
    mode = None
    if "mode" in table:
        try:
            mode = parse_umask(table["mode"])
        except _Bad:
            bad("mode", f'expected an octal mode like "0660", got {table["mode"]!r}')
    uid = gid = None
    if "owner" in table:
        owner = table["owner"]
        user, _, group = str(owner).partition(":")
        try:
            pw = pwd.getpwnam(user)
            uid, gid = pw.pw_uid, pw.pw_gid
            if group:
                gid = grp.getgrnam(group).gr_gid
        except KeyError:
            bad("owner", f'expected "user" or "user:group" that exist on this machine, got {owner!r}')
    if isinstance(bind, str) and bind.startswith("tcp://") and ("mode" in table or "owner" in table):
        bad("mode", "mode and owner apply to unix sockets only")
    if len(issues) != n_before:
        return None
    assert isinstance(bind, str) and isinstance(backlog, int)
    return SocketConfig(name=name, source=source, bind=bind, backlog=backlog, mode=mode, owner_uid=uid, owner_gid=gid)


def _check_dependencies(programs: list[ProgramConfig], issues: list[ConfigIssue]) -> None:
    """Unknown names and cycles in depends_on are config errors."""
    by_name = {p.name: p for p in programs}
    for prog in programs:
        for dep in prog.depends_on:
            if dep == prog.name:
                issues.append(ConfigIssue(prog.source, prog.name, "depends_on", "a program cannot depend on itself"))
            elif dep not in by_name:
                issues.append(ConfigIssue(prog.source, prog.name, "depends_on", f"no such program {dep!r}"
                                          + _did_you_mean(dep, frozenset(by_name))))
    # Depth-first search for cycles, reported once each with the path.
    state: dict[str, int] = {}  # 1 visiting, 2 done
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in by_name[name].depends_on:
            if dep not in by_name or dep == name:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    issues.append(ConfigIssue(by_name[dep].source, dep, "depends_on",
                                              "dependency cycle: " + " -> ".join(cycle)))
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in by_name:
        if name not in state:
            visit(name, [name])


def _parse_control(
    section: dict[str, Any], src: str, here: str, issues: list[ConfigIssue]
) -> tuple[str, str | None, int | None, CurveConfig | None]:
    """Resolve the control endpoint, its admin group and CURVE keys (tcp:// requires them)."""

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(src, None, f"procguard.{key}", message))

    control = section.get("control", default_endpoint())
    if not isinstance(control, str) or not re.match(r"^(ipc|tcp)://.+", control):
        bad("control", f'expected "ipc:///path/to/socket" or "tcp://127.0.0.1:PORT", got {control!r}')
        control = default_endpoint()
    control = resolve_endpoint(control, here)
    group = section.get("control_group")
    gid = None
    if group is not None:
        if not isinstance(group, str):
            bad("control_group", f"expected a group name, got {group!r}")
            group = None
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                bad("control_group", f"no such group {group!r} on this machine")
    curve = None
    table = section.get("curve")
    if table is not None:
        if not isinstance(table, dict):
            bad("curve", "expected a table [procguard.curve]")
        else:
            for key in sorted(set(table) - CURVE_KEYS):
                bad(f"curve.{key}", "unknown key" + _did_you_mean(key, CURVE_KEYS))
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
                curve = CurveConfig(server_secret_key=os.path.join(here, secret),
                                    authorized_clients=os.path.join(here, clients))
    if control.startswith("tcp://") and table is None:
        bad("control", f"{control}: a tcp:// endpoint needs CURVE keys in [procguard.curve] "
            "(server_secret_key, authorized_clients); use ipc:// for a local socket")
    return control, group, gid, curve


def environment_problems(programs: list[ProgramConfig] | tuple[ProgramConfig, ...], logdir: str) -> list[ConfigIssue]:
    """Return what is missing on this machine (command, directory, log directory).

    These do not stop the daemon (a mount may appear later; the spawn then fails with its reason and
    backs off), but `--check` reports them and exits 1.
    """
    out = []
    for prog in programs:
        for proc in prog.processes:

            def bad(key: str, msg: str) -> None:
                issue = ConfigIssue(prog.source, prog.name, key, msg)
                if issue not in out:
                    out.append(issue)

            exe = proc.command[0]
            if "/" in exe:
                # Popen resolves a relative executable against cwd, i.e. the program's directory.
                exe = os.path.join(proc.directory or os.getcwd(), exe)
                if not os.path.exists(exe):
                    bad("command", f"{exe}: no such file")
                elif not os.access(exe, os.X_OK):
                    bad("command", f"{exe}: not executable")
            else:
                path = dict(proc.environment).get("PATH", DEFAULT_PATH)
                if not any(os.access(os.path.join(d, exe), os.X_OK) for d in path.split(":") if d):
                    bad("command", f"{exe}: not found on PATH={path}")
            if proc.directory is not None and not os.path.isdir(proc.directory):
                bad("directory", f"{proc.directory}: no such directory")
            for key, log in (("stdout_logfile", proc.stdout_logfile), ("stderr_logfile", proc.stderr_logfile)):
                if log not in (LOG_NONE, LOG_INHERIT):
                    parent = os.path.dirname(os.path.abspath(log))
                    # AUTO logs go to logdir, which the daemon creates.
                    if parent != os.path.abspath(logdir) and not os.path.isdir(parent):
                        bad(key, f"{parent}: no such directory for {log}")
    return out


def describe(config: Config) -> str:
    """Render the resolved programs for `procguard --check`."""
    lines = [f"config: {config.path}", f"logdir: {config.logdir}", f"loglevel: {config.loglevel}",
             f"control: {config.control}" + (f" (group {config.control_group})" if config.control_group else "")]
    for prog in config.programs:
        lines.append(f"[program.{prog.name}]  ({prog.source})")
        attrs = {
            "user": prog.user, "uid": prog.uid, "gid": prog.gid, "umask": None if prog.umask is None else f"{prog.umask:03o}",
            "autostart": prog.autostart, "autorestart": prog.autorestart.value, "exitcodes": list(prog.exitcodes),
            "startsecs": prog.startsecs, "startretries": "forever" if prog.startretries is None else prog.startretries,
            "stopsignal": signal.Signals(prog.stopsignal).name, "stopwaitsecs": prog.stopwaitsecs,
            "stopasgroup": prog.stopasgroup, "killasgroup": prog.killasgroup, "priority": prog.priority,
            "backoff": f"{prog.backoff_initial}s .. {prog.backoff_max}s, reset after {prog.backoff_reset}s up",
            "server": prog.server, "ready": prog.ready.value,
            "reload_signal": None if prog.reload_signal is None else signal.Signals(prog.reload_signal).name,
            "sockets": list(prog.sockets) or None, "drain_timeout": prog.drain_timeout if prog.sockets else None,
            "depends_on": list(prog.depends_on) or None,
            "healthcheck": None if prog.healthcheck is None else prog.healthcheck.type,
        }
        lines.extend(f"  {k} = {v}" for k, v in attrs.items() if v is not None)
        for proc in prog.processes:
            lines.append(f"  process {proc.name}")
            lines.append(f"    command = {shlex.join(proc.command)}")
            if proc.directory:
                lines.append(f"    directory = {proc.directory}")
            lines.append(f"    stdout_logfile = {proc.stdout_logfile}")
            lines.append(f"    stderr_logfile = {proc.stderr_logfile if not prog.redirect_stderr else '(redirected to stdout)'}")
    return "\n".join(lines)


if sys.version_info < (3, 11):  # pragma: no cover - pyproject requires 3.11
    raise ImportError("procguard needs Python 3.11 or newer")
