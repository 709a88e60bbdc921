"""The configuration language's vocabulary: table keys, name and template patterns, server names.

Standard library only: procguardctl's importer shares it (tests/unit/test_client_imports.py), so what
the importer writes and what the daemon reads are the same keys and the same templates.
"""

import re

# Keys of [program.NAME]. See docs/configuration.md.
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
# The [program.NAME] keys that are supervisord's [program:x] keys, with its meaning.
SUPERVISOR_PROGRAM_KEYS = frozenset({
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart", "startsecs",
    "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup",
    "user", "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "stderr_logfile", "stderr_logfile_maxbytes", "stderr_logfile_backups", "environment", "directory", "umask",
})
# Keys that hold templates expanded per process (with {process_num}, {program_name}, ...) where they are used.
PER_PROCESS_KEYS = frozenset({"command", "directory", "process_name", "stdout_logfile", "stderr_logfile"})
GROUP_KEYS = frozenset({"programs", "priority"})
SOCKET_KEYS = frozenset({"bind", "backlog", "mode", "owner"})
PROCGUARD_KEYS = frozenset({"include", "logdir", "loglevel", "control", "control_group", "curve", "metrics",
                            "metrics_public"})
HEALTHCHECK_KEYS = frozenset({
    "type", "url", "unix_socket", "address", "path", "method", "host", "expect_status", "expect_body", "command",
    "interval", "timeout", "retries", "start_period", "on_unhealthy",
})
CURVE_KEYS = frozenset({"server_secret_key", "authorized_clients", "client_secret_key"})
ALERT_COMMON_KEYS = frozenset({"type", "events", "programs", "crash_loop_exits", "crash_loop_window", "batch_window",
                               "retries", "timeout", "recovery", "ca_file"})
ALERT_TYPE_KEYS = {  # by [alert.NAME] type (model.AlertType)
    "webhook": frozenset({"url"}),
    "email": frozenset({"smtp", "security", "credentials_file", "from", "to", "subject_prefix"}),
}
ALERT_KEYS = ALERT_COMMON_KEYS.union(*ALERT_TYPE_KEYS.values())
LOGLEVELS = ("debug", "info", "warning", "error", "critical")

# The app servers `server = ...` knows (procguard/servers.py holds their profiles).
SERVERS = ("uwsgi", "gunicorn", "daphne", "uvicorn", "hypercorn")

# Program and group names.
PROGRAM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# The variables a template names: {here}, {program_name}, {group_name}, {process_num}, {ENV_X}, {socket.NAME.fd}.
_TEMPLATE_NAMES = r"here|program_name|group_name|process_num|ENV_[A-Za-z_][A-Za-z0-9_]*|socket\.[A-Za-z0-9_.-]+?\.fd"
# What config expands: a variable, with an integer format spec ({process_num:02d}) or none.
TEMPLATE_RE = re.compile(r"\{(" + _TEMPLATE_NAMES + r")(:[0-9<>^=+ -]*d)?\}")
# A variable with any spec: every TEMPLATE_RE and ENV_RE match, and braces config leaves as written
# ({here:x}) or refuses; the importer flags all of them in text it writes out literally.
TEMPLATE_ANY_SPEC_RE = re.compile(r"\{(" + _TEMPLATE_NAMES + r")(:[^}]*)?\}")
# {ENV_X} in any string-valued program key: the daemon's variable, read as supervisord reads its
# %(ENV_X)s there (issue #14). {ENV_X:split} only in a command string.
ENV_RE = re.compile(r"\{ENV_([A-Za-z_][A-Za-z0-9_]*)(:split)?\}")
