"""[program:x], [fcgi-program:x] and [eventlistener:x] -> a [program.NAME] table (and its [socket.NAME])."""

import os
import pwd
import shlex
from collections.abc import Callable

from procguard.config.keys import ENV_RE, PER_PROCESS_KEYS, SERVERS, SUPERVISOR_PROGRAM_KEYS
from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import (
    sv_autorestart, sv_bool, sv_exitcodes, sv_int, sv_octal, sv_signal, sv_size,
)
from procguardctl.importer.eventlisteners import EVENTLISTENER_KEYS, convert_eventlistener
from procguardctl.importer.expansions import Expander
from procguardctl.importer.fcgi import FCGI_KEYS, fcgi_command, fcgi_socket
from procguardctl.importer.groups import GroupInfo
from procguardctl.importer.logfiles import logfile, syslog
from procguardctl.importer.report import Bad
from procguardctl.importer.tomlout import Table, TomlValue, toml_key, wrap

# supervisord 4 [program:x] keys that have no procguard equivalent, and why.
NO_EQUIVALENT = {
    "stdout_capture_maxbytes": "capture mode feeds PROCESS_COMMUNICATION events; procguard has no events",
    "stderr_capture_maxbytes": "capture mode feeds PROCESS_COMMUNICATION events; procguard has no events",
    "stdout_events_enabled": "procguard emits no PROCESS_LOG events; `procguardctl tail -f NAME` follows output",
    "stderr_events_enabled": "procguard emits no PROCESS_LOG events; `procguardctl tail -f NAME stderr` follows output",
    "serverurl": "told a supervisorctl run by the child where supervisord listens; procguardctl finds the "
                 "daemon through -c CONFIG or $PROCGUARD_CONTROL",
}
# [program:x] keys whose %(ENV_X)s is written as {ENV_X} for procguard to read at load: procguard reads
# {ENV_X} in every string-valued program key; the per-process keys and environment values are templates anyway.
DEFERRABLE_KEYS = SUPERVISOR_PROGRAM_KEYS - PER_PROCESS_KEYS - {"environment"}

# Keys converted by their supervisord datatype alone: how the expanded value is written.
_PLAIN: dict[str, Callable[[str], TomlValue]] = {
    "numprocs": lambda v: sv_int(v, 1), "numprocs_start": lambda v: sv_int(v, 0), "priority": sv_int,
    "startsecs": lambda v: sv_int(v, 0), "startretries": lambda v: sv_int(v, 0), "stopwaitsecs": lambda v: sv_int(v, 0),
    "autorestart": sv_autorestart, "exitcodes": sv_exitcodes, "stopsignal": sv_signal,
    "stdout_logfile_maxbytes": sv_size, "stderr_logfile_maxbytes": sv_size,
    "stdout_logfile_backups": lambda v: sv_int(v, 0), "stderr_logfile_backups": lambda v: sv_int(v, 0),
    "umask": lambda v: f"{sv_octal(v):03o}",
}


def convert_program(ctx: Context, section: str, kind: str, name: str, group: GroupInfo | None) -> str:
    """The rendered [socket.NAME] (fcgi-program) and [program.NAME] tables of one supervisord section."""
    return _ProgramConversion(ctx, section, kind, name, group).run()


class _ProgramConversion:
    """One section's keys, read in supervisord's order, written as procguard keys, with the report's findings."""

    def __init__(self, ctx: Context, section: str, kind: str, name: str, group: GroupInfo | None) -> None:
        self.ctx, self.section, self.kind = ctx, section, kind
        self.pg = ctx.names[section]
        self.opts = ctx.options(section)
        self.exp = Expander(here=ctx.src.here, where=ctx.where(section), report=ctx.report, program_name=name,
                            keeps_name=self.pg == name, group_name=group.name if group else None,
                            env_literals=dict(ctx.globals.environment))
        self.table = Table(f"[program.{toml_key(self.pg)}]")
        sec = ctx.src.sections[section]
        self.table.intro.append(f"Imported from {sec.file} [{section}].")
        if sec.comments:
            self.table.intro.append("Comments from there:")
            self.table.intro.extend(f"  {c}" for c in sec.comments)
        self.numprocs: int | None = 1  # None: from the environment, read by procguard at load
        self.program_env: dict[str, str] = {}
        self.merged_env: dict[str, str] = {}
        self.stopasgroup: bool | None = None
        self.redirect = False
        self.socket_table: Table | None = None

    def where(self, key: str | None = None) -> str:
        return self.ctx.where(self.section, key)

    def bad(self, key: str, exc: Exception) -> None:
        self.ctx.report.add("error", self.where(key), str(exc))

    def run(self) -> str:
        self.read_numprocs()
        self.read_environment()
        try:
            self.redirect = sv_bool(self.opts.get("redirect_stderr", "false"))
        except Bad:
            pass
        if self.kind == "fcgi-program":
            self.socket_table = fcgi_socket(self.ctx, self.section, self.pg, self.opts, self.exp)
            # Written even when the socket could not be converted: procguard then refuses the program
            # (no [socket.NAME] table) instead of running it without its socket.
            self.table.set("sockets", [self.pg], f"[socket.{self.pg}] above: supervisord's fcgi-program socket"
                           if self.socket_table is not None else "its socket= could not be converted: see the report")
        for key, raw in self.opts.items():
            try:
                self.convert_key(key, raw)
            except Bad as exc:
                self.bad(key, exc)
        self.finish()
        parts = []
        if self.socket_table is not None:
            parts.append(self.socket_table.render())
        parts.append(self.table.render())
        return "\n".join(parts)

    def read_numprocs(self) -> None:
        """Read before the other keys: numprocs decides what %(process_num)s means in them."""
        if "numprocs" in self.opts:
            try:
                if self.exp.deferred(self.opts["numprocs"], "numprocs") is not None:
                    self.numprocs = None
                else:
                    self.numprocs = sv_int(self.exp.literal(self.opts["numprocs"], "numprocs"), 1)
            except Bad as exc:
                self.bad("numprocs", exc)
        self.exp.numprocs = self.numprocs
        self.exp.per_process = True

    def read_environment(self) -> None:
        if "environment" in self.opts or self.ctx.globals.environment:
            try:
                self.program_env = self.exp.environment(self.opts.get("environment", ""), "environment")
            except Bad as exc:
                self.bad("environment", exc)
            # supervisord: later keys may use %(ENV_X)s of this program's environment= too.
            self.exp.env_literals.update(self.program_env)
            self.merged_env = {**self.ctx.globals.environment, **self.program_env}

    def convert_key(self, key: str, raw: str) -> None:
        """One key; raises Bad where supervisord would refuse it."""
        if key in DEFERRABLE_KEYS and not (self.kind == "eventlistener" and key == "autostart") and self.defer(key, raw):
            return
        handler = _HANDLERS.get(key)
        if key in _PLAIN:
            self.table.set(key, _PLAIN[key](self.exp.literal(raw, key)))
        elif handler is not None:
            handler(self, key, raw)
        elif key in NO_EQUIVALENT:
            self.ctx.drop(self.section, key, NO_EQUIVALENT[key], raw)
        elif self.kind == "eventlistener" and key in EVENTLISTENER_KEYS:
            self.ctx.drop(self.section, key, EVENTLISTENER_KEYS[key], raw)
        elif not (self.kind == "fcgi-program" and key in FCGI_KEYS):  # those are the [socket.NAME] table
            self.ctx.drop(self.section, key, f"not a supervisord 4 [{self.kind}:x] key (supervisord ignored it)", raw)

    def defer(self, key: str, raw: str) -> bool:
        """Write %(ENV_X)s as {ENV_X} for procguard to read at load; False when the value has none."""
        text = self.exp.deferred(raw, key)
        if text is None:
            return False
        self.table.set(key, text, "from procguard's environment when it loads this file (refused "
                       "while unset), as supervisord read it from its own")
        self.ctx.report.add("changed", self.where(key), f"written as {text!r}: procguard "
                            "reads the variable from its own environment when it loads the config "
                            "(set it in the systemd unit's Environment=; procguard refuses the config "
                            "while it is unset) instead of supervisord's at its start")
        return True

    def command(self, key: str, raw: str) -> None:
        command = _one_line(self.exp.template(raw, key))
        if self.kind == "fcgi-program" and self.socket_table is not None:
            command, comment = fcgi_command(command, self.pg)
            self.ctx.report.add("changed", self.where(key), comment)
            self.table.set("command", command, *wrap(comment))
        else:
            self.table.set("command", command)
        self.server_hint(command)
        self.command_paths(command)

    def process_name(self, key: str, raw: str) -> None:
        if any(c in raw.strip() for c in " :/"):
            raise Bad(f"{raw!r}: space, ':' and '/' are not allowed (supervisord refuses them)")
        self.table.set(key, self.exp.template(raw.strip(), key))

    def autostart(self, key: str, raw: str) -> None:
        autostart = sv_bool(self.exp.literal(raw, key))
        if self.kind != "eventlistener":
            self.table.set(key, autostart)

    def stopasgroup_key(self, key: str, raw: str) -> None:
        self.stopasgroup = sv_bool(self.exp.literal(raw, key))
        self.table.set(key, self.stopasgroup)

    def killasgroup(self, key: str, raw: str) -> None:
        killasgroup = sv_bool(self.exp.literal(raw, key))
        if self.stopasgroup is None:
            try:
                self.stopasgroup = sv_bool(self.exp.literal(self.opts.get("stopasgroup", "false"), "stopasgroup"))
            except Bad:
                self.stopasgroup = False
        if self.stopasgroup and not killasgroup:
            raise Bad("stopasgroup=true with killasgroup=false (supervisord refuses this)")
        self.table.set(key, killasgroup)

    def user(self, key: str, raw: str) -> None:
        user = self.exp.literal(raw, key).strip()
        self.table.set(key, user)
        if not _user_exists(user):
            self.ctx.report.add("note", self.where(key), f"no user {user!r} on this machine: "
                                "procguard refuses the config until it exists")

    def redirect_stderr(self, key: str, raw: str) -> None:
        if self.kind == "eventlistener" and self.redirect:
            raise Bad("redirect_stderr=true in an eventlistener (supervisord refuses this)")
        self.table.set(key, self.redirect)

    def logfile(self, key: str, raw: str) -> None:
        logfile(self.ctx, self.table, self.section, key, raw, self.exp, self.redirect, self.opts)

    def syslog(self, key: str, raw: str) -> None:
        syslog(self.ctx, self.table, self.section, key, raw, self.exp, self.opts)

    def environment(self, key: str, raw: str) -> None:
        pass  # written by finish(), merged with [supervisord] environment

    def directory(self, key: str, raw: str) -> None:
        directory = self.exp.template(raw, key).strip()
        self.table.set(key, directory)
        if not directory.startswith(("/", "{")):
            self.ctx.report.add("changed", self.where(key), f"{directory!r} is relative: to "
                                "supervisord's working directory there, to procguard's (/ under systemd) "
                                "here; write an absolute path")

    def finish(self) -> None:
        """What depends on several keys: required keys, the environment, inherited [supervisord] values."""
        table, opts, g = self.table, self.opts, self.ctx.globals
        if "command" not in opts:
            self.ctx.report.add("error", self.where(), "no command= (supervisord refuses this)")
        if self.numprocs is not None and self.numprocs > 1 and "process_name" not in opts:
            self.ctx.report.add("error", self.where("process_name"), "numprocs > 1 needs %(process_num) in "
                                "process_name (supervisord refuses this); procguard names them NAME_00, NAME_01, ...")
        elif self.numprocs is None and "process_name" not in opts:
            # supervisord refuses numprocs > 1 without %(process_num) in process_name; so does procguard with this.
            table.set("process_name", "{program_name}", "supervisord's default: with numprocs > 1 both refuse it")
        if self.merged_env:
            comments = []
            if g.environment:
                inherited = ", ".join(k for k in g.environment if k not in self.program_env)
                if inherited:
                    comments.append(f"{inherited}: from [supervisord] environment (procguard has no global one)")
            table.set("environment", self.merged_env, *comments)
        for key, value in (("umask", g.umask), ("directory", g.directory)):
            if value is not None and key not in opts and g.applies_daemonized:
                table.set(key, value, f"[supervisord] {key}: supervisord's own, inherited by its children")
        self.report_env_templates()
        if self.kind == "eventlistener" and "priority" not in opts:
            table.set("priority", -1, "supervisord's default for an eventlistener: started first, stopped last")
        if self.kind == "eventlistener":
            convert_eventlistener(self.ctx, table, self.section, opts, self.exp)
        self.explicit_defaults()

    def report_env_templates(self) -> None:
        """Say where a written {ENV_X} is read from: procguard's environment at load, not supervisord's."""
        for key, value, _ in self.table.entries:
            if key in DEFERRABLE_KEYS:
                continue  # reported where it was written
            texts = list(value.values()) if isinstance(value, dict) else [value] if isinstance(value, str) else []
            names = sorted({m.group(1) for t in texts for m in ENV_RE.finditer(t)})
            if not names:
                continue
            split = key == "command" and any(":split}" in t for t in texts)
            self.ctx.report.add("changed", self.where(key), f"{', '.join(names)}: read from procguard's own "
                                "environment when it loads the config (set in the systemd unit's Environment=), as "
                                "supervisord read it from its own when it started; procguard refuses the config "
                                "while one is unset" + (". {ENV_X:split} is expanded before the command is split, "
                                                        "as supervisord did" if split else ""))

    def command_paths(self, command: str) -> None:
        """Report a relative program path: it was found from supervisord's working directory."""
        try:
            argv = shlex.split(command)
        except ValueError:
            return
        if argv and "/" in argv[0] and not argv[0].startswith(("/", "{")):
            where = ("the program's directory" if "directory" in self.opts
                     else "procguard's working directory (/ under systemd)")
            self.ctx.report.add("changed", self.where("command"), f"{argv[0]!r} is relative: supervisord looked "
                                f"for it from its own working directory, procguard from {where}; write an absolute path")

    def server_hint(self, command: str) -> None:
        """Point at procguard's `server` key when the command runs an app server it knows."""
        try:
            argv = shlex.split(command)
        except ValueError:
            return
        names = [os.path.basename(a) for a in argv[:3]]  # "uwsgi ...", "python -m gunicorn ...", "venv/bin/daphne"
        found = next((n for n in SERVERS if n in names), None)
        if found is not None:
            self.ctx.report.add("note", self.where("command"), f"procguard knows {found}: `server = "
                                f"\"{found}\"` would set its stop signal, stop timeout and readiness (docs/servers.md); "
                                "not written, so it behaves as under supervisord")

    def explicit_defaults(self) -> None:
        """Write supervisord's defaults where procguard's differ, so nothing changes underfoot."""
        table, opts = self.table, self.opts
        if "startretries" not in opts:
            table.set("startretries", 3, "supervisord's default: FATAL after 3 failed retries in a row. Delete this "
                      "line for procguard's default:", "retry forever with backoff (1s doubling to 60s), so a site "
                      "comes back by itself after a database blip.")
        stopasgroup = False
        try:
            stopasgroup = sv_bool(opts.get("stopasgroup", "false"))
        except Bad:
            pass
        from_env = next((v for k, v, _ in table.entries if k == "stopasgroup" and isinstance(v, str)), None)
        if from_env is not None and "killasgroup" not in opts:
            table.set("killasgroup", from_env, "supervisord's default: as stopasgroup")
            stopasgroup = True  # killasgroup is written
        if "stopasgroup" not in opts:
            table.set("stopasgroup", False, "supervisord's default: the stop signal goes to the main process only. "
                      "Delete for procguard's", "default (true): the whole process group, so workers stop with "
                      "their master.")
        if "killasgroup" not in opts and not stopasgroup:
            table.set("killasgroup", False, "supervisord's default (as stopasgroup): SIGKILL to the main "
                      "process only. Delete for procguard's", "default (true): the whole group, so no worker is "
                      "orphaned holding the port.")


# The keys that need more than their datatype, by key.
_HANDLERS: dict[str, Callable[[_ProgramConversion, str, str], None]] = {
    "command": _ProgramConversion.command, "process_name": _ProgramConversion.process_name,
    "autostart": _ProgramConversion.autostart, "stopasgroup": _ProgramConversion.stopasgroup_key,
    "killasgroup": _ProgramConversion.killasgroup, "user": _ProgramConversion.user,
    "redirect_stderr": _ProgramConversion.redirect_stderr, "stdout_logfile": _ProgramConversion.logfile,
    "stderr_logfile": _ProgramConversion.logfile, "stdout_syslog": _ProgramConversion.syslog,
    "stderr_syslog": _ProgramConversion.syslog, "environment": _ProgramConversion.environment,
    "directory": _ProgramConversion.directory,
}


def _one_line(command: str) -> str:
    """A command continued over several INI lines, on one line when that splits the same (it reads better)."""
    if "\n" not in command:
        return command
    joined = " ".join(part.strip() for part in command.splitlines() if part.strip())
    try:
        return joined if shlex.split(joined) == shlex.split(command) else command
    except ValueError:
        return command


def _user_exists(user: str) -> bool:
    try:
        if user.isdigit():
            pwd.getpwuid(int(user))
        else:
            pwd.getpwnam(user)
    except KeyError:
        return False
    return True
