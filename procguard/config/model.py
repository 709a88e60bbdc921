"""The resolved configuration: frozen dataclasses and enums, and the only place defaults live.

A key the config file leaves out gets the field's default here: the parsers pass only the keys a table
sets (or a server profile's value), and read a default they need to decide something with `default_of`.
"""

import dataclasses
import enum
import os
import shlex
import signal
from dataclasses import dataclass, field
from typing import Any

from procguard.errors import ConfigIssue
from procguard.protocol import default_endpoint


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


class HealthCheckType(enum.StrEnum):
    HTTP = "http"
    TCP = "tcp"
    UWSGI = "uwsgi"
    EXEC = "exec"


class OnUnhealthy(enum.StrEnum):
    """What a process's health check failing `retries` times in a row does."""

    RESTART = "restart"
    NONE = "none"  # reported (status, alerts), nothing else


class ProgramType(enum.StrEnum):
    SIMPLE = "simple"  # a service: kept running
    ONESHOT = "oneshot"  # a job: success is an exit code in exitcodes


# A server profile's default check (issue #14): any answer below 500 is healthy (a 404 for "/", or
# Django's 400 for a Host it does not allow, still proves the app answers); 5xx, no answer or a
# timeout is not.
ANY_BELOW_500 = tuple(range(100, 500))


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    """`[program.NAME.healthcheck]`: how to tell a running process is healthy."""

    type: HealthCheckType
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
    on_unhealthy: OnUnhealthy = OnUnhealthy.RESTART
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
        if self.type == HealthCheckType.EXEC:
            return shlex.join(self.command)
        if self.type == HealthCheckType.HTTP and self.unix_socket is not None:
            return f"http+unix:{self.unix_socket} {self.path}"
        if self.type == HealthCheckType.HTTP:
            return self.url or ""
        return f"{self.address} {self.path}" if self.type == HealthCheckType.UWSGI else self.address or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramConfig:
    """A `[program.NAME]` table, resolved. Field names are supervisor's keys."""

    name: str
    source: str = field(compare=False)
    processes: tuple[ProcessConfig, ...]
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    extra_groups: tuple[int, ...] | None = None  # the user's supplementary groups (initgroups(3))
    umask: int | None = None
    autostart: bool = True
    autorestart: AutoRestart = AutoRestart.UNEXPECTED
    exitcodes: tuple[int, ...] = (0,)
    startsecs: float = 1.0
    startretries: int | None = None  # None: retry forever (procguard's default; supervisor's is 3)
    stopsignal: int = int(signal.SIGTERM)
    stopwaitsecs: float = 10.0
    stopasgroup: bool = True  # supervisor's default is false: it orphans workers
    killasgroup: bool = True
    priority: int = 999
    redirect_stderr: bool = False
    stdout_logfile_maxbytes: int = 50 * 1024 * 1024  # 0: never rotate
    stdout_logfile_backups: int = 10
    stdout_logfile_timestamps: bool = False
    stdout_tail_maxbytes: int = 64 * 1024  # the in-memory tail buffer behind `procguardctl tail`
    stderr_logfile_maxbytes: int = 50 * 1024 * 1024
    stderr_logfile_backups: int = 10
    stderr_logfile_timestamps: bool = False
    stderr_tail_maxbytes: int = 64 * 1024
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_reset: float = 10.0
    type: ProgramType = ProgramType.SIMPLE
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
        return self.restart_strategy == RestartStrategy.OVERLAP and bool(self.sockets) and self.type != ProgramType.ONESHOT

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


def default_logdir() -> str:
    """/var/log/procguard as root, else under $XDG_STATE_HOME (~/.local/state)."""
    if os.geteuid() == 0:
        return "/var/log/procguard"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(state, "procguard", "log")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole resolved configuration."""

    path: str
    programs: tuple[ProgramConfig, ...]
    logdir: str = field(default_factory=default_logdir)
    loglevel: str = "info"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessTemplate:
    """The keys of a [program.NAME] that become its ProcessConfigs, as written (templates unexpanded)."""

    command: tuple[str, ...] = ("",)
    directory: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    numprocs: int = 1
    numprocs_start: int = 0
    process_name: str | None = None  # default: "{program_name}", or "{program_name}_{process_num:02d}" with numprocs > 1
    stdout_logfile: str = LOG_AUTO
    stderr_logfile: str = LOG_AUTO

    @property
    def name_template(self) -> str:
        if self.process_name is not None:
            return self.process_name
        return "{program_name}" if self.numprocs == 1 else "{program_name}_{process_num:02d}"


def default_of(cls: type[Any], name: str) -> Any:
    """The default of dataclass field `name` of `cls` (for a parser that needs it before building one)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise AttributeError(name)
