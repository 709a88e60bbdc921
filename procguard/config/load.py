"""load_config: the main file and its includes, every table resolved, into one Config.

Everything the daemon knows about programs comes from here, once per load; no raw dict travels past
it. Every problem is collected in one pass and raised together as a ConfigError, each naming the file,
the program and the key.
"""

import os
from pathlib import Path
from typing import Any

from procguard import servers
from procguard.config.alerts import parse_alerts
from procguard.config.files import check_main_tables, read_includes, read_toml
from procguard.config.groups import parse_groups
from procguard.config import machine
from procguard.config.machine import environment_problems
from procguard.config.model import Config, GroupConfig, HealthCheckType, ProgramConfig
from procguard.config.programs import parse_program
from procguard.config.references import check_references
from procguard.config.sections import parse_procguard, procguard_table
from procguard.config.sockets import parse_sockets
from procguard.config.tables import named_tables
from procguard.errors import ConfigError, ConfigIssue


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read the main file and its includes; return a resolved Config.

    Raises ConfigError listing every problem (file, program, key) when anything is wrong.
    """
    environ = dict(os.environ if environ is None else environ)
    machine.forget()
    main = Path(path)
    issues: list[ConfigIssue] = []
    data = read_toml(main, issues)
    if data is None:
        raise ConfigError(issues)
    src = str(main)
    section = procguard_table(data, src, issues)
    check_main_tables(data, src, issues)
    fields = parse_procguard(section, src, str(main.resolve().parent), environ, issues)
    files = [(src, data), *read_includes(main, section, environ, issues)]

    groups = parse_groups(files, issues)
    sockets, socket_defined_in = parse_sockets(files, issues)
    # Sockets first: a server profile's default health check asks its held socket's address.
    binds = {sock.name: sock.bind for sock in sockets}
    programs, program_defined_in = _parse_programs(files, fields["logdir"], environ, binds, groups, issues)
    check_references(programs, program_defined_in, socket_defined_in, groups, issues)
    alerts = parse_alerts(files, {p.name for p in programs}, issues)
    if issues:
        raise ConfigError(issues)
    programs.sort(key=lambda p: (*p.start_order, p.name))
    return Config(path=src, programs=tuple(programs), sockets=tuple(sockets), groups=tuple(groups), alerts=alerts,
                  warnings=tuple(environment_problems(programs, fields["logdir"])),
                  lints=tuple(_lints(programs, src)), **fields)


def _parse_programs(files: list[tuple[str, dict[str, Any]]], logdir: str, environ: dict[str, str],
                    binds: dict[str, str], groups: list[GroupConfig],
                    issues: list[ConfigIssue]) -> tuple[list[ProgramConfig], dict[str, str]]:
    """Every valid [program.NAME], and the file each name is defined in (valid or not)."""
    group_of = {prog: g for g in groups for prog in g.programs}
    programs: list[ProgramConfig] = []
    defined_in: dict[str, str] = {}
    for source, name, table in named_tables("program", files, issues, defined_in):
        prog = parse_program(name, table, source, logdir, environ, issues, binds, group_of.get(name))
        if prog is not None:
            programs.append(prog)
    return programs, defined_in


def _lints(programs: list[ProgramConfig], src: str) -> list[ConfigIssue]:
    """Known traps in a valid config (servers.py): warned about, not refused."""
    lints: list[ConfigIssue] = []
    for prog in programs:
        hc = prog.healthcheck
        for message in servers.lint(prog.server, prog.processes[0].command, prog.stopsignal, prog.stopwaitsecs,
                                    prog.reload_signal, hc.url if hc is not None and hc.type == HealthCheckType.HTTP else None,
                                    hc.host if hc is not None else None):
            lints.append(ConfigIssue(prog.source, prog.name, None, message))
        if prog.overlaps:
            for message in servers.overlap_lint(prog.server, prog.processes[0].command):
                lints.append(ConfigIssue(prog.source, prog.name, "restart_strategy", message))
    for message in servers.gunicorn_control_socket_lint(
            [(p.name, p.server, p.processes[0].command, p.user) for p in programs]):
        lints.append(ConfigIssue(src, None, None, message))
    return lints
