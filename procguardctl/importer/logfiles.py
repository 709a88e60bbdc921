"""stdout_logfile, stderr_logfile and *_syslog: where output went under supervisord, and where it goes now."""

import re

from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import sv_bool
from procguardctl.importer.expansions import Expander
from procguardctl.importer.tomlout import Table


def logfile(ctx: Context, table: Table, section: str, key: str, raw: str, exp: Expander, redirect: bool,
            opts: dict[str, str]) -> None:
    value = exp.template(raw, key).strip()
    if key == "stderr_logfile" and redirect:
        ctx.drop(section, key, "redirect_stderr=true: supervisord ignored stderr_logfile (and procguard "
                 "refuses both), so it is not written", raw)
        return
    low = value.lower()
    if low in ("none", "off"):
        table.set(key, "NONE")
    elif low == "auto":
        table.set(key, "AUTO")
    elif low == "syslog":
        table.set(key, "journal", "supervisord's deprecated stdout_logfile=syslog: procguard writes it to its "
                                  "own output, which journald collects under systemd")
        ctx.report.add("changed", ctx.where(section, key), "syslog -> \"journal\" (the daemon's output, "
                       "collected by journald under systemd), not the syslog socket")
    elif (fd := own_fd(value)) is not None:
        own_fd_log(ctx, table, section, key, value, fd)
    else:
        table.set(key, value)
        if not value.startswith(("/", "{")):
            ctx.report.add("changed", ctx.where(section, key), f"{value!r} is relative: supervisord opened it "
                           "relative to its own working directory, procguard relative to its own (/ under "
                           "systemd); write an absolute path")
        elif re.fullmatch(r"/proc/\d+/fd/\d+", value):
            ctx.report.add("changed", ctx.where(section, key), f"{value}: a descriptor of that pid. Under "
                           "systemd pid 1 is systemd; in a container where procguard is pid 1, \"inherit\" says "
                           "the same and works on any kind of descriptor")

def own_fd_log(ctx: Context, table: Table, section: str, key: str, value: str, fd: int) -> None:
    """/dev/stdout, /dev/fd/1, /proc/self/fd/2, ...: supervisord's own descriptor, opened by path."""
    stream = key.split("_")[0]
    if fd not in (1, 2):
        table.set(key, value, "supervisord's own descriptor: procguard refuses it unless it has one open there")
        ctx.report.add("error", ctx.where(section, key), f"{value} is supervisord's own descriptor {fd}; "
                       "procguard has nothing meaningful there: write a file or \"inherit\"")
        return
    theirs = ("stdout", "stderr")[fd - 1]
    table.set(key, "inherit", f"supervisord wrote to its own {theirs} ({value}) by path; procguard passes its "
              f"own {stream} on (a path fails on systemd's journal socket)")
    if theirs != stream:
        ctx.report.add("changed", ctx.where(section, key), f"{value} is supervisord's {theirs}; \"inherit\" is "
                       f"procguard's {stream}. Under systemd both go to the journal; in a container, `docker "
                       "logs` shows this output on the other stream")

def syslog(ctx: Context, table: Table, section: str, key: str, raw: str, exp: Expander, opts: dict[str, str]) -> None:
    if not sv_bool(exp.literal(raw, key)):
        ctx.drop(section, key, "false is supervisord's default; nothing to carry over", raw)
        return
    stream = key.split("_")[0]
    logkey = f"{stream}_logfile"
    if logkey in opts and opts[logkey].strip().lower() not in ("none", "off", "syslog"):
        ctx.drop(section, key, f"procguard writes {stream} to one place: {logkey} is kept; for journald use "
                 f"{logkey} = \"journal\" instead", raw)
    elif logkey not in table.keys:
        table.set(logkey, "journal", f"{key}=true: procguard writes it to its own output, collected by journald")
        ctx.report.add("changed", ctx.where(section, key), f"{logkey} = \"journal\" (the daemon's output, "
                       "collected by journald under systemd) instead of the syslog socket")


def own_fd(path: str) -> int | None:
    """The descriptor number when path names the opening process's own descriptor (/dev/stdout, /dev/fd/1)."""
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if path in named:
        return named[path]
    m = re.fullmatch(r"/dev/fd/(\d+)|/proc/(?:self|thread-self)/fd/(\d+)", path)
    return int(m.group(1) or m.group(2)) if m else None
