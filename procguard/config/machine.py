"""What this machine has: users, groups, the daemon's own account and descriptors, commands and directories.

The parsers ask here, never pwd/grp directly: a name that does not resolve is a config error (fail
closed: never guess who a process runs as).
"""

import grp
import os
import pwd
import re
from functools import cache
from pathlib import Path

from procguard.config.model import DEFAULT_PATH, LOG_INHERIT, LOG_NONE, ProgramConfig
from procguard.errors import ConfigIssue


def forget() -> None:
    """Ask the machine afresh: answers are kept for one load only (load_config calls this first).

    A config of 1000 programs asks the same few questions 1000 times (issue #19); a user, group or
    directory changed between two loads is still seen by the next.
    """
    for lookup in (find_user, find_group, supplementary_groups, daemon_account, directory_of):
        lookup.cache_clear()


@cache
def directory_of(path: str) -> str:
    """The directory holding path, symlinks resolved ({here} of the file a program is written in)."""
    return str(Path(path).resolve().parent)


@cache
def find_user(user: str) -> pwd.struct_passwd | None:
    """The account of a user name, or of a uid written as digits; None when there is none."""
    try:
        return pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        return None


@cache
def find_group(group: str) -> int | None:
    """The gid of a group name, or of a gid written as digits; None when there is none."""
    try:
        return grp.getgrnam(group).gr_gid if not group.isdigit() else grp.getgrgid(int(group)).gr_gid
    except KeyError:
        return None


def find_owner(owner: str) -> tuple[int, int] | None:
    """(uid, gid) of "user" (its primary group) or "user:group", by name; None when either does not exist."""
    user, _, group = owner.partition(":")
    try:
        pw = pwd.getpwnam(user)
        return pw.pw_uid, grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        return None


def find_group_by_name(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


@cache
def supplementary_groups(pw: pwd.struct_passwd) -> tuple[int, ...]:
    """The user's own supplementary groups as initgroups(3) sets them, never the daemon's (root's)."""
    return tuple(sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid))))


@cache
def daemon_account() -> pwd.struct_passwd:
    """The account the daemon runs as."""
    return pwd.getpwuid(os.geteuid())


def is_root() -> bool:
    return os.geteuid() == 0


# The daemon's own descriptors named as a path (supervisord's Docker idiom: stdout_logfile=/dev/fd/1).
_SELF_FD_RE = re.compile(r"/dev/(?:stdout|stderr|fd/\d+)|/proc/(?:self|thread-self)/fd/\d+")


def self_fd_problem(path: str) -> str | None:
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


def environment_problems(programs: list[ProgramConfig] | tuple[ProgramConfig, ...], logdir: str) -> list[ConfigIssue]:
    """Return what is missing on this machine (command, directory, log directory).

    These do not stop the daemon (a mount may appear later; the spawn then fails with its reason and
    backs off), but `--check` reports them and exits 1. Each distinct command, directory and log
    directory is looked up once (1000 programs of one command ask once; issue #19).
    """
    out: list[ConfigIssue] = []
    seen: set[ConfigIssue] = set()
    command_problem = cache(_command_problem)
    is_dir = cache(os.path.isdir)
    logdir = os.path.abspath(logdir)
    for prog in programs:
        for proc in prog.processes:

            def bad(key: str, msg: str) -> None:
                issue = ConfigIssue(prog.source, prog.name, key, msg)
                if issue not in seen:
                    seen.add(issue)
                    out.append(issue)

            problem = command_problem(proc.command[0], proc.directory, dict(proc.environment).get("PATH", DEFAULT_PATH))
            if problem is not None:
                bad("command", problem)
            if proc.directory is not None and not is_dir(proc.directory):
                bad("directory", f"{proc.directory}: no such directory")
            for key, log in (("stdout_logfile", proc.stdout_logfile), ("stderr_logfile", proc.stderr_logfile)):
                if log not in (LOG_NONE, LOG_INHERIT):
                    parent = os.path.dirname(os.path.abspath(log))
                    # AUTO logs go to logdir, which the daemon creates.
                    if parent != logdir and not is_dir(parent):
                        bad(key, f"{parent}: no such directory for {log}")
    return out


def _command_problem(exe: str, directory: str | None, path: str) -> str | None:
    """Why exe cannot be run in directory with PATH=path; None when it can."""
    if "/" in exe:
        # Popen resolves a relative executable against cwd, i.e. the program's directory.
        exe = os.path.join(directory or os.getcwd(), exe)
        if not os.path.exists(exe):
            return f"{exe}: no such file"
        if not os.access(exe, os.X_OK):
            return f"{exe}: not executable"
        return None
    if not any(os.access(os.path.join(d, exe), os.X_OK) for d in path.split(":") if d):
        return f"{exe}: not found on PATH={path}"
    return None
