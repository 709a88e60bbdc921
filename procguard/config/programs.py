"""Resolve one [program.NAME] table into a ProgramConfig: who it runs as, its processes, output and readiness.

Problems are collected on a ProgramReader in the order a reader meets them in the table's documentation;
nothing is returned unless the table is entirely valid.
"""

import os
import pwd
from collections.abc import Mapping
from typing import Any

from procguard import servers
from procguard.config import machine
from procguard.config.healthchecks import default_healthcheck, parse_healthcheck
from procguard.config.keys import PROGRAM_KEYS, PROGRAM_NAME_RE, SERVERS
from procguard.config.model import (
    DEFAULT_PATH, LOG_AUTO, LOG_INHERIT, LOG_NONE, PASSED_THROUGH_ENV, GroupConfig, HealthCheckConfig, ProcessConfig,
    ProcessTemplate, ProgramConfig, ProgramType, Ready, RestartStrategy,
)
from procguard.config.reader import ProgramReader
from procguard.config.templates import expand
from procguard.config.values import (
    Bad, did_you_mean, parse_autorestart, parse_bool, parse_command, parse_duration, parse_environment,
    parse_exitcodes, parse_int, parse_names, parse_ready, parse_restart_strategy, parse_signal, parse_size,
    parse_str, parse_umask,
)
from procguard.errors import ConfigIssue

# Keys with no check beyond their parser, in the order they are reported.
_PLAIN_KEYS: tuple[tuple[str, Any], ...] = (
    ("autostart", parse_bool), ("autorestart", parse_autorestart), ("exitcodes", parse_exitcodes),
    ("startsecs", parse_duration), ("stopsignal", parse_signal), ("stopwaitsecs", parse_duration),
    ("stopasgroup", parse_bool), ("killasgroup", parse_bool), ("priority", parse_int),
    ("backoff_initial", parse_duration), ("backoff_max", parse_duration), ("backoff_reset", parse_duration),
    ("start_timeout", parse_duration), ("max_age_jitter", parse_duration),
    ("resource_check_interval", parse_duration), ("reload_signal", parse_signal), ("drain_timeout", parse_duration),
    ("restart_strategy", parse_restart_strategy), ("roll_batch", lambda v: parse_int(v, 1)),
)
_MAX_TAIL_BYTES = 64 * 1024 * 1024  # the tail buffer is kept in memory per process


def parse_program(
    name: str, table: Any, source: str, logdir: str, environ: dict[str, str], issues: list[ConfigIssue],
    binds: Mapping[str, str], in_group: GroupConfig | None = None,
) -> ProgramConfig | None:
    """Resolve [program.NAME]; None (with every problem in issues) unless it is valid."""
    p = ProgramReader(name, table if isinstance(table, dict) else {}, source, issues, environ)
    if not isinstance(table, dict):
        p.err(None, f"expected a table, got {table!r}")
        return None
    if not PROGRAM_NAME_RE.fullmatch(name):
        p.err(None, "program names may use only letters, digits, '_', '.' and '-'")
    for key in sorted(set(table) - PROGRAM_KEYS):
        p.err(key, "unknown key" + did_you_mean(key, PROGRAM_KEYS))
    n_issues = len(issues)
    if "command" not in table:
        p.err("command", "is required")
    command_and_directory = {**p.given("command", parse_command), **p.given("directory", parse_str)}
    fields, account_env = _account(p)
    template = _process_template(p, command_and_directory)
    fields.update(_output(p))
    fields.update(p.given("sockets", parse_names))
    processes = _processes(p, template, account_env, fields, logdir, in_group)
    fields.update(p.given("startretries", lambda v: parse_int(v, 0)))
    prof = _server(p, processes, fields)
    _kind_and_readiness(p, processes, binds, prof, fields)
    for key, parser in _PLAIN_KEYS:
        fields.update(p.given(key, parser))
    prog = ProgramConfig(
        name=name, source=source, processes=tuple(processes),
        listen_env=not any("{socket." in part for part in template.command),
        group=None if in_group is None else in_group.name,
        group_priority=None if in_group is None else in_group.priority,
        **{**_profile_values(prof), **fields},
    )
    _check_combinations(p, prog, fields.get("restart_strategy"))
    return prog if len(issues) == n_issues else None


def _account(p: ProgramReader) -> tuple[dict[str, Any], dict[str, str]]:
    """user, group and umask: the fields saying who the processes run as, and the variables naming the user."""
    user = p.given("user", parse_str).get("user")
    group = p.given("group", parse_str).get("group")
    fields: dict[str, Any] = {}
    env: dict[str, str] | None = None
    if user is not None:
        fields["user"] = user
        pw = machine.find_user(user)
        if pw is None:
            p.err("user", f"no such user {user!r} on this machine")
        else:
            fields.update(uid=pw.pw_uid, gid=pw.pw_gid, extra_groups=machine.supplementary_groups(pw))
            env = _account_variables(pw, pw.pw_name or user)
    if group is not None:
        gid = machine.find_group(group)
        if gid is None:
            p.err("group", f"no such group {group!r} on this machine")
        else:
            fields["gid"] = gid
    if (user is not None or group is not None) and not machine.is_root():
        me = machine.daemon_account()
        uid = fields.get("uid")
        if user is not None and uid is not None and uid != me.pw_uid:
            p.err("user", f"the daemon runs as {me.pw_name!r}, not root, so it cannot switch to {user!r}")
    fields.update(p.given("umask", parse_umask))
    if env is None:  # no user, or none found: the daemon's own
        me = machine.daemon_account()
        env = _account_variables(me, me.pw_name)
    return fields, env


def _account_variables(pw: pwd.struct_passwd, name: str) -> dict[str, str]:
    return {"HOME": pw.pw_dir, "USER": name, "LOGNAME": name, "SHELL": pw.pw_shell or "/bin/sh"}


def _process_template(p: ProgramReader, command_and_directory: dict[str, Any]) -> ProcessTemplate:
    """The keys each process is expanded from: environment, numprocs, process_name and the log files."""
    values = dict(command_and_directory)
    values.update(p.given("environment", parse_environment))
    values.update(p.given("numprocs", lambda v: parse_int(v, 1)))
    values.update(p.given("numprocs_start", lambda v: parse_int(v, 0)))
    values.update(p.given("process_name", parse_str))
    template = ProcessTemplate(**values)
    if template.numprocs > 1 and "{process_num" not in template.name_template:
        p.err("process_name", f"with numprocs = {template.numprocs} it must contain {{process_num}}, "
              f"got {template.name_template!r}")
    values.update(p.given("stdout_logfile", parse_str))
    values.update(p.given("stderr_logfile", parse_str))
    return ProcessTemplate(**values)  # the same as dataclasses.replace(template, **values), without its checks


def _output(p: ProgramReader) -> dict[str, Any]:
    """redirect_stderr and each stream's rotation, timestamps and in-memory tail."""
    fields = p.given("redirect_stderr", parse_bool)
    for stream in ("stdout", "stderr"):
        fields.update(p.given(f"{stream}_logfile_maxbytes", parse_size))
        fields.update(p.given(f"{stream}_logfile_backups", lambda v: parse_int(v, 0)))
        fields.update(p.given(f"{stream}_logfile_timestamps", parse_bool))
        tail = p.given(f"{stream}_tail_maxbytes", parse_size)
        fields.update(tail)
        if tail and tail[f"{stream}_tail_maxbytes"] > _MAX_TAIL_BYTES:
            p.err(f"{stream}_tail_maxbytes", f"at most 64MB (it is kept in memory per process), got "
                  f"{tail[f'{stream}_tail_maxbytes']}")
    if fields.get("redirect_stderr") and "stderr_logfile" in p.table:
        p.err("stderr_logfile", "is ignored with redirect_stderr = true; remove one of them")
    return fields


def _base_environment(environ: dict[str, str], account_env: dict[str, str]) -> dict[str, str]:
    """What every process of the program starts from: a few of the daemon's variables, PATH, the user's."""
    env = {k: environ[k] for k in PASSED_THROUGH_ENV if k in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(account_env)
    return env


def _processes(p: ProgramReader, template: ProcessTemplate, account_env: dict[str, str], fields: dict[str, Any],
               logdir: str, in_group: GroupConfig | None) -> list[ProcessConfig]:
    """One ProcessConfig per process_num, its templates expanded; a daemon's own descriptor is refused."""
    here = machine.directory_of(p.source)
    group_name = p.name if in_group is None else in_group.name
    sockets: tuple[str, ...] = fields.get("sockets", ())
    redirect = fields.get("redirect_stderr", False)
    base_env = _base_environment(p.environ, account_env)
    processes = []
    names_seen: set[str] = set()
    for num in range(template.numprocs_start, template.numprocs_start + template.numprocs):
        variables: dict[str, object] = {"here": here, "program_name": p.name, "group_name": group_name,
                                        "process_num": num}
        # Held sockets reach the child as fds 3, 4, ... in the order of `sockets` (systemd's LISTEN_FDS).
        variables.update({f"socket.{sock}.fd": 3 + i for i, sock in enumerate(sockets)})

        def ex(key: str, value: str) -> str:
            try:
                return expand(value, variables, p.environ)
            except Bad as exc:
                p.err(key, str(exc))
                return value

        pname = ex("process_name", template.name_template)
        if in_group is not None:
            full = f"{in_group.name}:{pname}"  # supervisord's namespec: GROUP:PROCESS, whatever the program
        else:
            full = pname if template.numprocs == 1 and pname == p.name else f"{p.name}:{pname}"
        if pname in names_seen:
            p.err("process_name", f"{template.name_template!r} gives the same name {pname!r} to two processes")
        names_seen.add(pname)
        # supervisor's variables, so scripts that look for them keep working.
        env = {**base_env, "SUPERVISOR_ENABLED": "1", "SUPERVISOR_PROCESS_NAME": pname,
               "SUPERVISOR_GROUP_NAME": group_name, "PROCGUARD_PROCESS": full}
        for k, v in template.environment:
            env[k] = ex("environment", v)
        processes.append(ProcessConfig(
            name=full, process_num=num, command=tuple(ex("command", a) for a in template.command),
            directory=ex("directory", template.directory) if template.directory is not None else None,
            environment=tuple(sorted(env.items())),
            stdout_logfile=_resolve_log(ex("stdout_logfile", template.stdout_logfile), logdir, full, "stdout"),
            stderr_logfile=(LOG_NONE if redirect
                            else _resolve_log(ex("stderr_logfile", template.stderr_logfile), logdir, full, "stderr")),
        ))
    for proc in processes:
        for key, log in (("stdout_logfile", proc.stdout_logfile), ("stderr_logfile", proc.stderr_logfile)):
            problem = machine.self_fd_problem(log)
            if problem is not None:
                p.err(key, problem)
    return processes


def _resolve_log(value: str, logdir: str, process_name: str, stream: str) -> str:
    """AUTO: a file in logdir named after the process; NONE; inherit (or journal); else the path as written."""
    if value.upper() == LOG_AUTO:
        return os.path.join(logdir, f"{process_name.replace(':', '_')}-{stream}.log")
    if value.upper() == LOG_NONE:
        return LOG_NONE
    if value.lower() in (LOG_INHERIT, "journal"):
        return LOG_INHERIT
    return value


def _server(p: ProgramReader, processes: list[ProcessConfig], fields: dict[str, Any]) -> servers.Profile | None:
    """`server = ...`: the app server's profile, which supplies some defaults (servers.py)."""
    server = p.given("server", parse_str).get("server")
    if server is None:
        return None
    if server not in SERVERS:
        p.err("server", f"expected one of {', '.join(SERVERS)}, got {server!r}")
        return None
    fields["server"] = server
    return servers.profile(server, processes[0].command if processes else ())


def _profile_values(prof: servers.Profile | None) -> dict[str, Any]:
    """The fields a server profile fills in where the table does not set them (else the dataclass defaults)."""
    if prof is None:
        return {}
    return {"stopsignal": prof.stopsignal, "stopwaitsecs": prof.stopwaitsecs, "reload_signal": prof.reload_signal,
            "drain_timeout": prof.drain, "orphans_serve": prof.orphans_serve}


def _kind_and_readiness(p: ProgramReader, processes: list[ProcessConfig], binds: Mapping[str, str],
                        prof: servers.Profile | None, fields: dict[str, Any]) -> None:
    """type, healthcheck and ready, and the guards that apply to services only."""
    kind = p.given("type", parse_str).get("type")
    if kind is not None and kind not in ProgramType.__members__.values():
        p.err("type", f'expected "simple" (a service) or "oneshot" (a job run once), got {kind!r}')
    elif kind is not None:
        fields["type"] = ProgramType(kind)
    is_oneshot = fields.get("type") == ProgramType.ONESHOT
    healthcheck = _healthcheck(p, processes, fields, binds)
    ready_default = Ready.HEALTHCHECK if healthcheck is not None else Ready.STARTSECS
    if prof is not None and (healthcheck is None or (healthcheck.is_default and prof.ready == Ready.NOTIFY)):
        # The profile's readiness, except that a default check beats startsecs; gunicorn and uWSGI
        # still say READY=1 themselves once their workers booted.
        ready_default = Ready(prof.ready)
    ready = fields["ready"] = p.given("ready", parse_ready).get("ready", ready_default)
    if ready == Ready.HEALTHCHECK and healthcheck is None:
        p.err("ready", 'is "healthcheck" but there is no [program.NAME.healthcheck] table'
              + (" (and healthcheck = false)" if p.table.get("healthcheck", True) is False else ""))
    if is_oneshot and ("ready" in p.table or healthcheck is not None):
        p.err("type", "a oneshot is done when it exits; ready and healthcheck do not apply")
    fields.update(p.given("depends_on", parse_names))
    fields.update(p.given("max_memory", parse_size))
    fields.update(p.given("max_age", parse_duration))
    if is_oneshot and (fields.get("max_memory") is not None or fields.get("max_age") is not None):
        p.err("type", "max_memory and max_age restart services; a oneshot is not restarted")


def _healthcheck(p: ProgramReader, processes: list[ProcessConfig], fields: dict[str, Any],
                 binds: Mapping[str, str]) -> HealthCheckConfig | None:
    """The written [program.NAME.healthcheck], else the server profile's default unless healthcheck = false."""
    written = p.table.get("healthcheck", True)
    healthcheck = None
    if written is True and "server" in fields and processes:
        healthcheck = default_healthcheck(fields["server"], processes[0].command, fields.get("sockets", ()), binds)
    elif written is not True and written is not False:
        healthcheck = parse_healthcheck(p, written)
    if healthcheck is not None:
        fields["healthcheck"] = healthcheck
    return healthcheck


def _check_combinations(p: ProgramReader, prog: ProgramConfig, written_strategy: RestartStrategy | None) -> None:
    """Keys that are each valid but not together (written_strategy: restart_strategy as written and valid)."""
    if written_strategy == RestartStrategy.OVERLAP and not prog.overlaps:
        p.err("restart_strategy", '"overlap" needs held sockets (sockets = [...]) and a service (not a oneshot): '
                                  "the next generation gets fresh ones; without them it is stopped, then started")
    if "drain_timeout" in p.table and not prog.sockets:
        p.err("drain_timeout", "applies to programs with held sockets (sockets = [...]): it hands their new "
                               "connections to the next process while the old one finishes its own")
    if prog.stopasgroup and not prog.killasgroup and "killasgroup" in p.table:
        p.err("killasgroup", "must be true when stopasgroup is true (as in supervisor)")
