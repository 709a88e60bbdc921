"""Parse TOML config files into frozen dataclasses, and diff two configs for reload.

Everything the daemon knows about programs comes from `load_config`, once per load; no raw dict travels
past this module. Every problem is collected in one pass and raised together as a `ConfigError`, each
naming the file, the program and the key.
"""

import enum
import glob
import grp
import ipaddress
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
from collections.abc import Mapping
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


class RestartStrategy(enum.StrEnum):
    """How a running program on held sockets is replaced (restart, reload, recycles, deploy)."""

    OVERLAP = "overlap"  # the next generation starts beside the current one and takes over once ready
    RECREATE = "recreate"  # stop, then start (supervisor's way; for a program that cannot run twice)


HEALTHCHECK_TYPES = ("http", "tcp", "uwsgi", "exec")
# A server profile's default check (issue #14): any answer below 500 is healthy (a 404 for "/", or
# Django's 400 for a Host it does not allow, still proves the app answers); 5xx, no answer or a
# timeout is not.
ANY_BELOW_500 = tuple(range(100, 500))


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
    # Filled in by the program's server profile (no [program.NAME.healthcheck] written; default_healthcheck)
    is_default: bool = field(default=False, compare=False)

    def expected_status_text(self) -> str:
        """expect_status for people: "200", "200, 204", runs as "100-499"."""
        runs: list[list[int]] = []
        for code in sorted(set(self.expect_status)):
            if runs and code == runs[-1][1] + 1:
                runs[-1][1] = code
            else:
                runs.append([code, code])
        return ", ".join(f"{a}" if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in runs)

    def target(self) -> str:
        """Where the check goes, for people: a URL, an address or a command line."""
        if self.type == "exec":
            return shlex.join(self.command)
        if self.type == "http" and self.unix_socket is not None:
            return f"http+unix:{self.unix_socket} {self.path}"
        if self.type == "http":
            return self.url or ""
        return f"{self.address} {self.path}" if self.type == "uwsgi" else self.address or ""


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
    # After the leader died with its group alive, do the orphans keep serving (servers.Profile.orphans_serve)?
    # True: the held TCP sockets are handed to the replacement and the orphans drain, then get stopsignal.
    # False (uWSGI): the replacement takes the held sockets, queue and all, and the orphans exit by
    # themselves (SIGKILL after stopwaitsecs).
    orphans_serve: bool = True
    # [group.NAME] this program belongs to (supervisord's [group:x]): its processes are named GROUP:PROCESS
    # and the group's priority orders it before its own priority does.
    group: str | None = None
    group_priority: int | None = None

    @property
    def process_group(self) -> str:
        """supervisord's process group: the [group.NAME] it is in, else the program itself."""
        return self.group or self.name

    @property
    def start_order(self) -> tuple[int, int]:
        """Start lowest first, stop highest first: the group's priority, then the program's (supervisord)."""
        return (self.priority if self.group_priority is None else self.group_priority, self.priority)
    # Held-socket programs are replaced by an overlapping next generation (docs/deploys.md); programs
    # without held sockets are always stopped, then started.
    restart_strategy: RestartStrategy = RestartStrategy.OVERLAP
    roll_batch: int = 1  # numprocs > 1: how many processes a rolling replace replaces at a time

    @property
    def overlaps(self) -> bool:
        """True when a restart, reload, recycle or deploy starts the next generation beside this one."""
        return self.restart_strategy == RestartStrategy.OVERLAP and bool(self.sockets) and self.type != "oneshot"

    @property
    def is_group(self) -> bool:
        """True when the program's processes are named `program:process`."""
        return len(self.processes) > 1 or self.processes[0].name != self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupConfig:
    """`[group.NAME]`: supervisord's `[group:NAME]`, programs controlled together under one name."""

    name: str
    source: str = field(compare=False)
    programs: tuple[str, ...]
    priority: int = 999


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


class AlertTrigger(enum.StrEnum):
    """What an [alert.NAME] sends a message about (docs/observability.md, "Alerts")."""

    FATAL = "fatal"  # a process gave up (FATAL) ... until it is RUNNING again
    UNHEALTHY = "unhealthy"  # its health check failed `retries` times ... until healthy again
    CRASH_LOOP = "crash_loop"  # crash_loop_exits exits within crash_loop_window ... until it runs a window
    DEPLOY_FAILED = "deploy_failed"  # a deploy failed ... until one succeeds
    OUTPUT_DROPPED = "output_dropped"  # output could not be written ... until it is again
    EXITED = "exited"  # every unexpected exit (superlance crashmail); no episode, no recovery


class AlertType(enum.StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class SmtpSecurity(enum.StrEnum):
    NONE = "none"  # plain SMTP: a local MTA on localhost
    STARTTLS = "starttls"  # upgrade on the submission port (587)
    TLS = "tls"  # implicit TLS (465)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertConfig:
    """`[alert.NAME]`: where messages about some events of some programs go, and how."""

    name: str
    source: str = field(compare=False)
    type: AlertType
    events: tuple[AlertTrigger, ...] = (AlertTrigger.FATAL, AlertTrigger.UNHEALTHY, AlertTrigger.CRASH_LOOP,
                                        AlertTrigger.DEPLOY_FAILED, AlertTrigger.OUTPUT_DROPPED)
    programs: tuple[str, ...] = ()  # empty: every program
    crash_loop_exits: int = 5
    crash_loop_window: float = 300.0  # seconds
    batch_window: float = 10.0  # notices within this window after the first go out as one message
    retries: int = 5  # after the first attempt, waiting 1, 2, 4 ... (at most 60) seconds between
    timeout: float = 10.0  # per attempt
    recovery: bool = True  # a notice when an episode ends
    url: str | None = None  # webhook: http:// or https://
    smtp_host: str = "localhost"  # email
    smtp_port: int = 25
    security: SmtpSecurity = SmtpSecurity.NONE
    credentials_file: str | None = None  # "USER:PASSWORD" on one line; mode 0600 (or 0400)
    ca_file: str | None = None  # a private CA for the smarthost's certificate (default: the system's)
    sender: str | None = None  # the `from` key; default procguard@HOSTNAME
    to: tuple[str, ...] = ()
    subject_prefix: str = "[procguard]"


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """`[procguard] metrics`: where the Prometheus endpoint listens (no endpoint without the key)."""

    host: str | None = None  # an IP address ("127.0.0.1", "::1"); None for a unix socket
    port: int = 0  # 0: any free port (the daemon logs the one it got)
    path: str | None = None  # a unix socket path, instead of host and port
    public: bool = False  # metrics_public: listening beyond loopback was asked for explicitly

    @property
    def address(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if self.host is not None and ":" in self.host else f"{self.host}:{self.port}"


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
    groups: tuple[GroupConfig, ...] = ()
    metrics: MetricsConfig | None = None
    alerts: tuple[AlertConfig, ...] = ()
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


def process_groups(config: Config) -> dict[str, tuple[str, ...]]:
    """Each process group (a [group.NAME], or an ungrouped program) and its programs, in config order."""
    out: dict[str, tuple[str, ...]] = {}
    for prog in config.programs:
        out[prog.process_group] = (*out.get(prog.process_group, ()), prog.name)
    return out


def diff_groups(old: Config, new: Config) -> ConfigDiff:
    """diff_configs by process group, as supervisord's reread reports it (names are group names).

    A group is changed when its programs are not the same ones, or one of them changed.
    """
    progs = diff_configs(old, new)
    touched = {*progs.added, *progs.changed, *progs.removed}
    before, after = process_groups(old), process_groups(new)
    return ConfigDiff(
        added=tuple(g for g in after if g not in before),
        changed=tuple(g for g in after if g in before
                      and (set(after[g]) != set(before[g]) or touched & {*after[g], *before[g]})),
        removed=tuple(g for g in before if g not in after),
    )


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
        "resource_check_interval", "sockets", "server", "reload_signal", "drain_timeout", "restart_strategy",
        "roll_batch",
    }
)
GROUP_KEYS = frozenset({"programs", "priority"})
PROCGUARD_KEYS = frozenset({"include", "logdir", "loglevel", "control", "control_group", "curve", "metrics",
                            "metrics_public"})
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


# {ENV_X} in any other string-valued program key (user, numprocs, autostart, ...): the daemon's variable,
# read as supervisord reads its %(ENV_X)s there (issue #14). {ENV_X:split} only in a command string.
_ENV_RE = re.compile(r"\{ENV_([A-Za-z_][A-Za-z0-9_]*)(:split)?\}")
# Keys that hold templates expanded per process (with {process_num}, {program_name}, ...) where they are used.
_PER_PROCESS_KEYS = frozenset({"command", "directory", "process_name", "stdout_logfile", "stderr_logfile"})
_SV_BOOLEANS = {"yes": True, "on": True, "1": True, "no": False, "off": False, "0": False}


def _expand_env(value: str, environ: dict[str, str], split: bool = False) -> str:
    """Replace {ENV_X} (with split: only {ENV_X:split}) by the daemon's variable X; raises _Bad if unset."""

    def repl(m: re.Match[str]) -> str:
        if split and not m.group(2):
            return m.group(0)  # expanded in each argument after the split, as ever
        if m.group(1) not in environ:
            raise _Bad(f"{m.group(0)}: the daemon's environment has no {m.group(1)}")
        return environ[m.group(1)]

    return _ENV_RE.sub(repl, value)


def _parse_expanded(parser: Any, template: str, text: str, octal: bool) -> Any:
    """Parse a value that came from the environment: as text, else as supervisord reads it (an int, a boolean).

    octal: the text is octal digits (umask), so it is never read as a decimal integer.
    """
    try:
        return parser(text)
    except _Bad as exc:
        error = exc
    candidates: list[object] = []
    if not octal and re.fullmatch(r"\s*[+-]?\d+\s*", text):
        candidates.append(int(text))
    if text.strip().lower() in _SV_BOOLEANS:
        candidates.append(_SV_BOOLEANS[text.strip().lower()])
    for i, candidate in enumerate(candidates):
        try:
            return parser(candidate)
        except _Bad as exc:
            if i == 0 and type(candidate) is int:
                error = exc  # "expected an integer >= 1, got 0" says more than "got '0'"
    raise _Bad(f"{template}: {error}")


class _Program:
    """Collects issues while resolving one [program.NAME] table."""

    def __init__(self, name: str, table: dict[str, Any], source: str, issues: list[ConfigIssue],
                 environ: dict[str, str] | None = None) -> None:
        self.name, self.table, self.source, self.issues = name, table, source, issues
        self.environ = environ if environ is not None else {}

    def err(self, key: str | None, message: str) -> None:
        issue = ConfigIssue(self.source, self.name, key, message)
        if issue not in self.issues:  # a template shared by numprocs processes fails once, not N times
            self.issues.append(issue)

    def get(self, key: str, parser: Any, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        try:
            if isinstance(value, str) and "{ENV_" in value:
                if key != "command" and any(m.group(2) for m in _ENV_RE.finditer(value)):
                    raise _Bad("{ENV_X:split} is for a command string only")
                if key == "command":  # {ENV_X:split}: expanded before the split, as supervisord
                    return parser(_expand_env(value, self.environ, split=True))
                if key not in _PER_PROCESS_KEYS:
                    return _parse_expanded(parser, value, _expand_env(value, self.environ), key == "umask")
            return parser(value)
        except _Bad as exc:
            self.err(key, str(exc))
            return default

    def present(self, key: str, parser: Any) -> dict[str, Any]:
        """{key: parsed value} when the table sets key (and it parses), else {}: the dataclass default."""
        if key not in self.table:
            return {}
        try:
            return {key: parser(self.table[key])}
        except _Bad as exc:
            self.err(key, str(exc))
            return {}


def _parse_ready(value: object) -> Ready:
    if isinstance(value, str) and value.lower() in set(Ready):
        return Ready(value.lower())
    raise _Bad(f'expected "startsecs", "notify" or "healthcheck", got {value!r}')


def _parse_restart_strategy(value: object) -> RestartStrategy:
    if isinstance(value, str) and value in RestartStrategy.__members__.values():
        return RestartStrategy(value)
    raise _Bad(f'expected "overlap" (the next generation takes over once ready) or "recreate" (stop, then start), '
               f"got {value!r}")


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
        p.err("healthcheck", "expected a table [program.NAME.healthcheck], or false (no health check, not "
                             f"even the one a server profile fills in), got {table!r}")
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
    return HealthCheckConfig(type="http" if is_http else "uwsgi", url=url, unix_socket=unix_socket, address=address,
                             path="/", host="localhost", expect_status=ANY_BELOW_500, is_default=True)


def _resolve_log(value: str, logdir: str, process_name: str, stream: str) -> str:
    if value.upper() == LOG_AUTO:
        return os.path.join(logdir, f"{process_name.replace(':', '_')}-{stream}.log")
    if value.upper() == LOG_NONE:
        return LOG_NONE
    if value.lower() in (LOG_INHERIT, "journal"):
        return LOG_INHERIT
    return value


# The daemon's own descriptors named as a path (supervisord's Docker idiom: stdout_logfile=/dev/fd/1).
_SELF_FD_RE = re.compile(r"/dev/(?:stdout|stderr|fd/\d+)|/proc/(?:self|thread-self)/fd/\d+")


def _self_fd_problem(path: str) -> str | None:
    """Why the daemon cannot write to its own descriptor named by path; None when it can (or it is a file).

    Refused, not warned about: every byte the program writes would be dropped for as long as it runs
    (a socket, the journal's under systemd, cannot be opened by path: ENXIO), and the daemon's own
    descriptors do not change while it runs, so nothing would fix it later.
    """
    if not _SELF_FD_RE.fullmatch(path):
        return None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        return (f"{path} is the daemon's own descriptor and cannot be opened here ({exc.strerror}; under "
                'systemd stdout and stderr are a socket to the journal): write "inherit" for the daemon\'s own '
                "stdout (stdout_logfile) or stderr (stderr_logfile), or a file")
    os.close(fd)
    return None


def _profile_only(prof: servers.Profile | None) -> dict[str, Any]:
    """The ProgramConfig fields only a server profile sets (no key of their own): the dataclass default without one."""
    return {"orphans_serve": prof.orphans_serve} if prof is not None else {}


def _parse_program(
    name: str, table: Any, source: str, logdir: str, environ: dict[str, str], issues: list[ConfigIssue],
    binds: Mapping[str, str], in_group: GroupConfig | None = None,
) -> ProgramConfig | None:
    p = _Program(name, table if isinstance(table, dict) else {}, source, issues, environ)
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
        group_name = name if in_group is None else in_group.name
        variables: dict[str, object] = {"here": here, "program_name": name, "group_name": group_name,
                                        "process_num": num}
        # Held sockets reach the child as fds 3, 4, ... in the order of `sockets` (systemd's LISTEN_FDS).
        variables.update({f"socket.{sock}.fd": 3 + i for i, sock in enumerate(sockets)})

        def ex(key: str, value: str) -> str:
            try:
                return expand(value, variables, environ)
            except _Bad as exc:
                p.err(key, str(exc))
                return value

        pname = ex("process_name", process_name)
        if in_group is not None:
            full = f"{in_group.name}:{pname}"  # supervisord's namespec: GROUP:PROCESS, whatever the program
        else:
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
            SUPERVISOR_ENABLED="1", SUPERVISOR_PROCESS_NAME=pname, SUPERVISOR_GROUP_NAME=group_name,
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

    for proc in processes:
        for key, log in (("stdout_logfile", proc.stdout_logfile), ("stderr_logfile", proc.stderr_logfile)):
            problem = _self_fd_problem(log)
            if problem is not None:
                p.err(key, problem)
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
    written = table.get("healthcheck", True)  # a table; false turns the server profile's default off
    healthcheck = None
    if written is True and server is not None and processes:
        healthcheck = default_healthcheck(server, processes[0].command, sockets, binds)
    elif written is not True and written is not False:
        healthcheck = _parse_healthcheck(p, written)
    ready_default = Ready.HEALTHCHECK if healthcheck is not None else Ready.STARTSECS
    if prof is not None and (healthcheck is None or (healthcheck.is_default and prof.ready == Ready.NOTIFY)):
        # The profile's readiness, except that a default check beats startsecs; gunicorn and uWSGI
        # still say READY=1 themselves once their workers booted.
        ready_default = Ready(prof.ready)
    ready = p.get("ready", _parse_ready, ready_default)
    if ready == Ready.HEALTHCHECK and healthcheck is None:
        p.err("ready", 'is "healthcheck" but there is no [program.NAME.healthcheck] table'
              + (" (and healthcheck = false)" if written is False else ""))
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
        **_profile_only(prof),
        group=None if in_group is None else in_group.name,
        group_priority=None if in_group is None else in_group.priority,
        **p.present("restart_strategy", _parse_restart_strategy),
        **p.present("roll_batch", lambda v: _parse_int(v, 1)),
    )
    if table.get("restart_strategy") == RestartStrategy.OVERLAP and not prog.overlaps:
        p.err("restart_strategy", '"overlap" needs held sockets (sockets = [...]) and a service (not a oneshot): '
                                  "the next generation gets fresh ones; without them it is stopped, then started")
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
    for key in sorted(set(data) - {"procguard", "program", "socket", "group", "alert"}):
        issues.append(ConfigIssue(src, None, key, "unknown table (expected [procguard], [program.NAME], "
                                                  "[group.NAME], [socket.NAME] or [alert.NAME])"))

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
    metrics = _parse_metrics(section, src, here, issues)

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
            for key in sorted(set(inc) - {"program", "socket", "group", "alert"}):
                what = ("[procguard] belongs in the main file" if key == "procguard"
                        else "unknown table (expected [program.NAME], [group.NAME], [socket.NAME] or [alert.NAME])")
                issues.append(ConfigIssue(match, None, key, what))
            files.append((match, inc))

    groups = _parse_groups(files, issues)
    group_of = {prog: g for g in groups for prog in g.programs}
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
    # Sockets first: a server profile's default health check asks its held socket's address.
    binds = {sock.name: sock.bind for sock in sockets}
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
            prog = _parse_program(name, table, source, logdir, environ, issues, binds, group_of.get(name))
            if prog is not None:
                programs.append(prog)
    for prog in programs:
        for sock_name in prog.sockets:
            if sock_name not in socket_defined_in:
                issues.append(ConfigIssue(prog.source, prog.name, "sockets", f"no [socket.{sock_name}] table"
                                          + _did_you_mean(sock_name, frozenset(socket_defined_in))))
    for g in groups:
        if g.name in defined_in:
            issues.append(ConfigIssue(g.source, None, f"group.{g.name}",
                                      f"a group cannot have the name of a program (also in {defined_in[g.name]})"))
        for member in g.programs:
            if member not in defined_in:
                issues.append(ConfigIssue(g.source, None, f"group.{g.name}.programs", f"no such program {member!r}"
                                          + _did_you_mean(member, frozenset(defined_in))))
    _check_dependencies(programs, issues)
    from procguard.config.alerts import parse_alerts  # it builds on this module's parsers

    alerts = parse_alerts(files, {p.name for p in programs}, issues)
    if issues:
        raise ConfigError(issues)
    programs.sort(key=lambda p: (*p.start_order, p.name))
    lints: list[ConfigIssue] = []
    for prog in programs:
        hc = prog.healthcheck
        for message in servers.lint(prog.server, prog.processes[0].command, prog.stopsignal, prog.stopwaitsecs,
                                    prog.reload_signal, hc.url if hc is not None and hc.type == "http" else None,
                                    hc.host if hc is not None else None):
            lints.append(ConfigIssue(prog.source, prog.name, None, message))
        if prog.overlaps:
            for message in servers.overlap_lint(prog.server, prog.processes[0].command):
                lints.append(ConfigIssue(prog.source, prog.name, "restart_strategy", message))
    for message in servers.gunicorn_control_socket_lint(
            [(p.name, p.server, p.processes[0].command, p.user) for p in programs]):
        lints.append(ConfigIssue(src, None, None, message))
    return Config(path=src, logdir=logdir, loglevel=loglevel.lower(), programs=tuple(programs),
                  control=control, control_group=control_group, control_gid=control_gid, curve=curve,
                  sockets=tuple(sockets), groups=tuple(groups), metrics=metrics, alerts=alerts,
                  warnings=tuple(environment_problems(programs, logdir)),
                  lints=tuple(lints))


SOCKET_KEYS = frozenset({"bind", "backlog", "mode", "owner"})


def _parse_groups(files: list[tuple[str, dict[str, Any]]], issues: list[ConfigIssue]) -> list[GroupConfig]:
    """Resolve every [group.NAME] table of every file; problems are reported as group.NAME.KEY."""
    groups: list[GroupConfig] = []
    defined_in: dict[str, str] = {}
    member_of: dict[str, str] = {}
    for source, content in files:
        tables = content.get("group", {})
        if not isinstance(tables, dict):
            issues.append(ConfigIssue(source, None, "group", "expected [group.NAME] tables"))
            continue
        for name, table in tables.items():
            n_before = len(issues)

            def bad(key: str | None, message: str) -> None:
                issues.append(ConfigIssue(source, None, f"group.{name}" + (f".{key}" if key else ""), message))

            if name in defined_in:
                bad(None, f"defined twice: also in {defined_in[name]}")
                continue
            defined_in[name] = source
            if not isinstance(table, dict):
                bad(None, 'expected a table like { programs = ["web", "worker"] }')
                continue
            if not _PROGRAM_NAME_RE.fullmatch(name):
                bad(None, "group names may use only letters, digits, '_', '.' and '-'")
            for key in sorted(set(table) - GROUP_KEYS):
                bad(key, "unknown key" + _did_you_mean(key, GROUP_KEYS))
            members: tuple[str, ...] = ()
            if "programs" not in table:
                bad("programs", 'is required: a list of program names like ["web", "worker"]')
            else:
                raw = table["programs"]
                if not isinstance(raw, list) or not raw or not all(isinstance(m, str) and m for m in raw):
                    bad("programs", f'expected a non-empty list of program names like ["web", "worker"], got {raw!r}')
                else:
                    members = tuple(dict.fromkeys(raw))
            for member in members:
                if member in member_of:
                    bad("programs", f"program {member!r} is already in [group.{member_of[member]}]; "
                                    "a program belongs to one group at most")
                else:
                    member_of[member] = name
            priority = table.get("priority", 999)
            if not isinstance(priority, int) or isinstance(priority, bool):
                bad("priority", f"expected an integer, got {priority!r}")
            if len(issues) == n_before:
                assert isinstance(priority, int)
                groups.append(GroupConfig(name=name, source=source, programs=members, priority=priority))
    return groups


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


def _parse_metrics(section: dict[str, Any], src: str, here: str, issues: list[ConfigIssue]) -> MetricsConfig | None:
    """`metrics = "127.0.0.1:9101"` (or "[::1]:9101", a unix socket path); beyond loopback only with metrics_public."""

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue(src, None, f"procguard.{key}", message))

    public = section.get("metrics_public", False)
    if not isinstance(public, bool):
        bad("metrics_public", f"expected true or false, got {public!r}")
        public = False
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


def describe_healthcheck(prog: ProgramConfig, binds: Mapping[str, str]) -> str | None:
    """One line on the program's health check for `--check`, saying where a default one comes from."""
    hc = prog.healthcheck
    if hc is None and prog.server is not None:
        if default_healthcheck(prog.server, prog.processes[0].command, prog.sockets, binds) is not None:
            return f"none (healthcheck = false turns off the default of server = {prog.server})"
        return (f"none (server = {prog.server} has no default: it answers HTTP or the uwsgi protocol on no held "
                f"socket; write [program.{prog.name}.healthcheck])")
    if hc is None:
        return None
    line = f"{hc.type} {hc.target()}"
    if hc.type != "exec":
        line += f", Host {hc.host or 'from the url'}, expect {hc.expected_status_text()}"
    line += f", every {hc.interval:g}s, unhealthy after {hc.retries}: {hc.on_unhealthy}"
    if hc.is_default:
        line += (f"  (the default of server = {prog.server}; write [program.{prog.name}.healthcheck] to change it, "
                 "healthcheck = false to turn it off)")
    return line


def describe(config: Config) -> str:
    """Render the resolved programs for `procguard --check`."""
    lines = [f"config: {config.path}", f"logdir: {config.logdir}", f"loglevel: {config.loglevel}",
             f"control: {config.control}" + (f" (group {config.control_group})" if config.control_group else "")]
    for group in config.groups:
        lines.append(f"[group.{group.name}]  ({group.source})")
        lines.append(f"  programs = {', '.join(group.programs)}")
        lines.append(f"  priority = {group.priority}")
    if config.metrics is not None:
        lines.append(f"metrics: {config.metrics.address}" + (" (public)" if config.metrics.public else ""))
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
            "restart_strategy": (f"{RestartStrategy.OVERLAP} (the next generation starts beside this one and takes "
                                 "over once ready)" if prog.overlaps else f"{RestartStrategy.RECREATE} (stop, then start)"),
            "depends_on": list(prog.depends_on) or None,
            "healthcheck": describe_healthcheck(prog, {sock.name: sock.bind for sock in config.sockets}),
        }
        lines.extend(f"  {k} = {v}" for k, v in attrs.items() if v is not None)
        if prog.group is not None:
            lines.append(f"  group = {prog.group}")
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
