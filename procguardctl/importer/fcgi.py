"""[fcgi-program:x]: its socket= becomes a held [socket.NAME], and the command is pointed at it."""

import os
import re
import shlex

from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import sv_int, sv_octal
from procguardctl.importer.expansions import Expander
from procguardctl.importer.report import Bad
from procguardctl.importer.tomlout import Table, toml_key

FCGI_KEYS = ("socket", "socket_backlog", "socket_owner", "socket_mode")


def fcgi_socket(ctx: Context, section: str, pg: str, opts: dict[str, str], exp: Expander) -> Table | None:
    """[fcgi-program:x] socket=... -> a [socket.NAME] table procguard binds and holds."""
    table = Table(f"[socket.{toml_key(pg)}]")
    table.intro.append(f"[{section}] socket: procguard binds it once and holds it across restarts; the program's "
                       "processes get it as a file descriptor.")
    # supervisord expands only here, program_name and ENV_X in socket (not process_num).
    sock_exp = Expander(here=exp.here, where=exp.where, report=ctx.report, program_name=exp.program_name,
                        keeps_name=False, env_literals=exp.env_literals)
    try:
        raw = opts.get("socket")
        if not raw:
            raise Bad("an fcgi-program needs socket= (supervisord refuses this)")
        sock = sock_exp.literal(raw, "socket").strip()
        if sock.startswith("unix://"):
            path = sock[len("unix://"):]
            if not os.path.isabs(path):
                raise Bad(f"unix socket path {path!r} is not absolute (supervisord refuses this)")
            table.set("bind", "unix:" + os.path.normpath(path))
            unix = True
        else:
            m = re.fullmatch(r"tcp://([^\s:]+):(\d+)", sock)
            if m is None:
                raise Bad(f"bad socket {sock!r}: expected tcp://HOST:PORT or unix:///PATH")
            table.set("bind", sock)
            unix = False
        if "socket_backlog" in opts:
            backlog = sv_int(sock_exp.literal(opts["socket_backlog"], "socket_backlog"), 1)
            table.set("backlog", backlog)
        if unix:
            mode = sv_octal(opts["socket_mode"]) if "socket_mode" in opts else 0o700
            table.set("mode", f"{mode:04o}", *([] if "socket_mode" in opts else
                                               ["supervisord's default socket_mode for a unix socket"]))
            if "socket_owner" in opts:
                table.set("owner", sock_exp.literal(opts["socket_owner"], "socket_owner").strip())
            elif "user" in opts:
                user = sock_exp.literal(opts["user"], "user").strip()
                table.set("owner", user, "supervisord gives the socket to the program's user when "
                                         "socket_owner is not set")
        elif "socket_owner" in opts or "socket_mode" in opts:
            raise Bad("socket_owner and socket_mode apply to unix sockets only (supervisord refuses them "
                      "with tcp://)")
    except Bad as exc:
        ctx.report.add("error", ctx.where(section, "socket"), str(exc))
        return None
    return table


_FD_ZERO_RES = (
    (re.compile(r"(--fd[= ]+)0(?=\s|$)"), r"\g<1>{socket.%s.fd}"),  # daphne, uvicorn: --fd 0
    (re.compile(r"(fd://)0(?=\s|$)"), r"\g<1>{socket.%s.fd}"),  # gunicorn, hypercorn: --bind fd://0
)


def fcgi_command(command: str, pg: str) -> tuple[str, str]:
    """Point the command at the held socket's fd; return it with the comment explaining how."""
    for pattern, repl in _FD_ZERO_RES:
        new = pattern.sub(repl % pg, command)
        if new != command:
            found = pattern.search(command)
            assert found is not None
            return new, (f"supervisord passed the socket as fd 0 (stdin); procguard passes held sockets as fds 3, "
                         f"4, ... (named {{socket.{pg}.fd}} in the command): {found.group(0)!r} became "
                         f"{pattern.sub(repl % pg, found.group(0))!r}.")
    try:
        argv = shlex.split(command)
    except ValueError:
        return command, ("supervisord passed the socket as fd 0 (stdin); procguard passes held sockets as fds 3, "
                         f"4, ... ({{socket.{pg}.fd}} in a command, else LISTEN_FDS): change the program to use it "
                         "(this command could not be split, so it was not rewritten)")
    inner = f"exec {' '.join(_sh_quote(a) for a in argv)} 0<&{{socket.{pg}.fd}}"
    # Inside the script the shell splits a variable's value itself: {ENV_X}, not {ENV_X:split}.
    inner, n_env = re.subn(r"\{(ENV_[A-Za-z0-9_]+):split\}", r"{\1}", inner)
    return "/bin/sh -c " + shlex.quote(inner), (
        "supervisord passed the socket as fd 0 (stdin); procguard passes held sockets as fds 3, 4, ... "
        f"({{socket.{pg}.fd}}). The shell puts it back on fd 0 and execs the program (same pid, same argv); if "
        "the program takes a socket fd option, use that instead." + (
            " The shell reads each {ENV_X} value as shell words (quotes, $ and globs are the shell's), where "
            "supervisord split it with shlex." if n_env else ""))


def _sh_quote(arg: str) -> str:
    """shlex.quote, but a procguard template ({ENV_X}, {process_num}) stays readable: its braces are safe here."""
    return arg if re.fullmatch(r"[\w@%+=:,./{}-]+", arg) else shlex.quote(arg)
