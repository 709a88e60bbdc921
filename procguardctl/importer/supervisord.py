"""[supervisord], [unix_http_server] and [inet_http_server] -> the main file's [procguard] table."""

import grp
import pwd

from procguard.protocol import ROOT_ENDPOINT
from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import sv_bool, sv_octal
from procguardctl.importer.expansions import Expander
from procguardctl.importer.report import Bad
from procguardctl.importer.tomlout import Table, toml_str

LOGLEVELS = {"critical": "critical", "error": "error", "warn": "warning", "warning": "warning", "info": "info",
             "debug": "debug", "trace": "debug", "blather": "debug"}


def convert_supervisord(ctx: Context, table: Table) -> list[str]:
    """Fill [procguard]; return comment lines for the main file about what did not carry over."""
    table.set("include", ["conf.d/*.toml"])
    notes: list[str] = []
    if not ctx.parser.has_section("supervisord"):
        table.set("loglevel", "info")
        _control(ctx, table, notes)
        return notes
    section = "supervisord"
    opts = ctx.options(section)
    exp = Expander(here=ctx.src.here, where=ctx.where(section), report=ctx.report)
    nodaemon = False
    try:
        nodaemon = sv_bool(opts.get("nodaemon", "false"))
    except Bad:
        pass
    ctx.globals.applies_daemonized = not nodaemon
    loglevel = "info"
    for key, raw in opts.items():
        try:
            loglevel = _supervisord_key(ctx, table, notes, exp, key, raw) or loglevel
        except Bad as exc:
            ctx.report.add("error", ctx.where(section, key), str(exc))
    if "logdir" not in table.keys:
        notes.append("# logdir: supervisord's childlogdir was not set (its default is the temp directory); "
                     "procguard's default is /var/log/procguard as root")
    table.set("loglevel", loglevel)
    for key, what in (("umask", ctx.globals.umask), ("directory", ctx.globals.directory)):
        if what is None:
            continue
        if ctx.globals.applies_daemonized:
            ctx.report.add("changed", ctx.where(section, key), f"supervisord's own {key}, which its children "
                           f"inherited: written into every program without its own {key}")
        else:
            ctx.drop(section, key, "nodaemon=true: supervisord sets its umask and directory only when it "
                     "daemonizes, so its children did not get this; not written")
    _control(ctx, table, notes)
    return notes


def _supervisord_key(ctx: Context, table: Table, notes: list[str], exp: Expander, key: str, raw: str) -> str | None:
    """One [supervisord] key; returns procguard's log level for loglevel=. Raises Bad as supervisord refuses."""
    section = "supervisord"
    if key == "environment":
        ctx.globals.environment = exp.environment(raw, key)
        ctx.report.add("changed", ctx.where(section, key), "procguard has no global environment: "
                       "these variables are written into every program's environment table")
        return None
    value = exp.literal(raw, key)
    if key == "loglevel":
        level = value.strip().lower()
        if level not in LOGLEVELS:
            raise Bad(f"not a supervisord log level: {value!r}")
        if LOGLEVELS[level] != level:
            ctx.report.add("changed", ctx.where(section, key), f"{level!r} is {LOGLEVELS[level]!r} in procguard")
        return LOGLEVELS[level]
    if key == "childlogdir":
        table.set("logdir", value.strip(), "[supervisord] childlogdir: where AUTO log files go "
                  "(procguard names them PROCESS-stdout.log, not with a random suffix)")
    elif key == "umask":
        ctx.globals.umask = f"{sv_octal(value):03o}"
    elif key == "directory":
        ctx.globals.directory = value.strip()
    elif key in SUPERVISORD_DROPPED:
        ctx.drop(section, key, SUPERVISORD_DROPPED[key], value)
        notes.append(f"# [supervisord] {key}: {SUPERVISORD_DROPPED[key]}")
    else:
        ctx.drop(section, key, "not a supervisord 4 [supervisord] key (supervisord ignored it)", value)
    return None


def _control(ctx: Context, table: Table, notes: list[str]) -> None:
    """[unix_http_server] and [inet_http_server] -> control, control_group; never a password."""
    unix = "unix_http_server" if ctx.parser.has_section("unix_http_server") else None
    inet = "inet_http_server" if ctx.parser.has_section("inet_http_server") else None
    if unix is None and inet is None:
        return
    comments: list[str] = []
    group = _unix_http_server(ctx, unix, comments) if unix is not None else None
    if inet is not None:
        _inet_http_server(ctx, inet, comments)
    table.set("control", ROOT_ENDPOINT, *comments)
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            ctx.report.add("error", ctx.where(unix or "", "chown"), f"group {group!r} does not exist on this "
                           "machine: control_group is written commented out")
            notes.append(f"# control_group = {toml_str(group)}   # no such group on this machine")
        else:
            table.set("control_group", group, "[unix_http_server] chown: members of this group may use procguardctl")


def _unix_http_server(ctx: Context, unix: str, comments: list[str]) -> str | None:
    """Report how procguard's socket differs; return the group that could use supervisord's (control_group)."""
    group: str | None = None
    opts = ctx.options(unix)
    comments.append(f"[unix_http_server] file={opts.get('file', '?')}: procguard's control socket "
                    "(procguardctl finds it with -c this file)")
    ctx.report.add("changed", ctx.where(unix, "file"), f"the control socket is "
                   f"{ROOT_ENDPOINT}, mode 0660 in a 0750 directory; scripts use "
                   "procguardctl, not supervisorctl")
    mode = 0o700
    if "chmod" in opts:
        try:
            mode = sv_octal(opts["chmod"])
        except Bad as exc:
            ctx.report.add("error", ctx.where(unix, "chmod"), str(exc))
        ctx.report.add("changed", ctx.where(unix, "chmod") + f" = {opts['chmod']}",
                       "procguard's socket is always 0660; who gets in is decided by uid (ZAP): root, the "
                       "daemon's user and members of control_group")
    owner_user, _, owner_group = opts.get("chown", "").partition(":")
    if owner_user and not owner_group:
        try:
            owner_group = grp.getgrgid(pwd.getpwnam(owner_user).pw_gid).gr_name
        except KeyError:
            owner_group = ""
    if "chown" in opts:
        if mode & 0o060 and owner_group:
            group = owner_group
            ctx.report.add("changed", ctx.where(unix, "chown") + f" = {opts['chown']}",
                           f"members of group {owner_group!r} could use supervisord's socket (chmod "
                           f"{mode:04o}): control_group = {owner_group!r}")
        else:
            ctx.report.add("changed", ctx.where(unix, "chown") + f" = {opts['chown']}",
                           "procguard admits root, its own user and members of control_group; put the "
                           "users who ran supervisorctl into a group and set control_group to it")
    if mode & 0o006:
        ctx.report.add("changed", ctx.where(unix, "chmod"), "supervisord's socket was open to every local "
                       "user; procguard's never is (root, its user and control_group only)")
    for key in ("username", "password"):
        if key in opts:
            ctx.drop(unix, key, "not carried over, and never copied: procguard needs no password on its "
                     "ipc:// socket; it checks the connecting process's uid through ZAP (SO_PEERCRED)")
    if "username" in opts or "password" in opts:
        comments.append("[unix_http_server] username/password: not carried over. procguard checks the "
                        "peer's uid on this socket instead (ZAP): root, its own user, members of control_group.")
    for key in sorted(set(opts) - {"file", "chmod", "chown", "username", "password"}):
        ctx.drop(unix, key, "not a supervisord 4 [unix_http_server] key", opts[key])
    return group


def _inet_http_server(ctx: Context, inet: str, comments: list[str]) -> None:
    """Not carried over: a password over HTTP; procguard's tcp:// endpoint takes CURVE keys instead."""
    opts = ctx.options(inet)
    port = opts.get("port", "?")
    comments += [
        f"[inet_http_server] port={port}: not carried over. Its HTTP basic auth sent a plaintext",
        "password; procguard's tcp:// endpoint admits only CURVE clients whose public key you",
        "authorised (see docs/protocol.md). To control procguard over the network:",
        "  procguardctl keygen /etc/procguard/curve server",
        "  control = \"tcp://127.0.0.1:9001\"  and a [procguard.curve] table with",
        "  server_secret_key = \"curve/server.key_secret\", authorized_clients = \"curve/authorized\"",
    ]
    ctx.drop(inet, "port", "not carried over: a tcp:// control endpoint needs CURVE keys (`procguardctl "
             "keygen`), so the local ipc:// socket is used; see the comment in procguard.toml", port)
    for key in ("username", "password"):
        if key in opts:
            ctx.drop(inet, key, "not carried over, and never copied: on tcp:// procguard authenticates "
                     "clients by CURVE public key (procguardctl keygen), not by password")
    for key in sorted(set(opts) - {"port", "username", "password"}):
        ctx.drop(inet, key, "not a supervisord 4 [inet_http_server] key", opts[key])


SUPERVISORD_DROPPED = {
    "logfile": "procguard logs to its stdout/stderr: journald under systemd (journalctl -u procguard); "
               "`procguardctl maintail` says the same",
    "logfile_maxbytes": "procguard's own log goes to journald (or wherever its stdout goes), which rotates it",
    "logfile_backups": "procguard's own log goes to journald (or wherever its stdout goes), which rotates it",
    "pidfile": "procguard runs in the foreground under systemd (no pid file); `procguardctl pid` prints its pid",
    "nodaemon": "procguard always runs in the foreground (systemd Type=notify, or PID 1 in a container)",
    "silent": "procguard's own log goes to its stdout/stderr; redirect those to silence it",
    "minfds": "procguard lifts its soft RLIMIT_NOFILE to the hard limit; raise that with LimitNOFILE= in the "
              "systemd unit",
    "minprocs": "set LimitNPROC= in the systemd unit",
    "nocleanup": "procguard's AUTO log files have stable names and are never cleaned up at start",
    "user": "run procguard itself as that user (User= in the systemd unit); programs keep their own user=",
    "identifier": "procguard has no XML-RPC identifier",
    "strip_ansi": "procguard writes output as the program wrote it",
}
