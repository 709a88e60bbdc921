"""procguardctl's command line: argv -> protocol request -> the daemon's reply -> render -> exit status.

Exit statuses are supervisorctl's where it has one (exits.py): 0 success; 1 error; 2 usage; 3 from
`status` when any listed process is not RUNNING; 4 from `status` for an unknown name, and whenever the
daemon is not reachable; 7 a process not running (signal, pid) or a failed start.
"""

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from procguard.protocol import VERSION
from procguard.terminal import ArgumentParser
from procguardctl import endpoint, exits, render, supervisorctl
from procguardctl.pipes import quiet_on_closed_pipe

if TYPE_CHECKING:
    from procguardctl.endpoint import ClientSettings

# Commands that reply at once get this timeout by default; start/stop/restart/reload/shutdown wait as
# long as the command takes (stopwaitsecs can be minutes), like supervisorctl.
QUICK_TIMEOUT_S = 10.0
QUICK = frozenset({"status", "pid", "version", "signal"})
STREAMED = frozenset({"tail", "maintail", "events"})

# supervisorctl's spellings (issue #8): the same wire command where the meaning is the same.
ALIASES = {"clear": "logrotate", "avail": "status"}
# Global options that take a value: the word after them is not the command (see split_command).
VALUED_OPTIONS = frozenset({"-c", "--config", "--configuration", "-s", "--server", "--serverurl", "-u",
                            "--username", "-p", "--password", "--timeout", "--server-key", "--client-key"})
# supervisorctl's tail/maintail without -N show the last 1600 bytes.
MAINTAIL_DEFAULT_BYTES = 1600


# Options before COMMAND that take a value: that value is not the command.
GLOBAL_VALUED = frozenset({"-c", "--config", "-s", "--server", "--timeout", "--server-key", "--client-key"})


def command_in(argv: list[str]) -> str | None:
    """The COMMAND word of argv as argparse will find it; None when there is none before -h/--version.

    Only a hint (abbreviated options can fool it): build_parser falls back to every command when the
    word names none of them.
    """
    takes_value = False
    for arg in argv:
        if takes_value:
            takes_value = False
        elif arg in GLOBAL_VALUED:
            takes_value = True
        elif arg in ("-h", "--help", "--version"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def split_command(argv: list[str]) -> list[str]:
    """Split a command word holding spaces, as supervisorctl (which joins its arguments) does.

    `procguardctl -c CFG 'signal HUP' web` (one argument, as Ansible sends it) is `signal HUP web`.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        word = out[i]
        if word in VALUED_OPTIONS:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        if any(c.isspace() for c in word):
            out[i:i + 1] = word.split()
        break
    return out


# ------------------------------------------------------------------------------------ the parser


class _Skipped(argparse.ArgumentParser):
    """Stands for the parser of a command this run does not need: takes the calls, builds nothing."""

    def __init__(self) -> None:  # no super().__init__: that setup is what is being saved
        pass

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def set_defaults(self, **kwargs: Any) -> None:
        pass

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        return self

    def add_mutually_exclusive_group(self, **kwargs: Any) -> Any:
        return self


class _Commands:
    """add_parser for every command, or (`only`) for one: one subparser of ~25 is a third of
    procguardctl's own start-up (23 M instructions for all, callgrind; issue #17)."""

    def __init__(self, sub: "argparse._SubParsersAction[argparse.ArgumentParser]", only: str | None) -> None:
        self._sub, self._only, self.matched = sub, only, False

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if self._only is None or self._only == name or self._only in kwargs.get("aliases", ()):
            self.matched = True
            return self._sub.add_parser(name, **kwargs)
        return _Skipped()


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", "--configuration", help=f"the daemon's config file, for its endpoint and "
                   f"keys (default: $PROCGUARD_CONFIG, else {endpoint.DEFAULT_CONFIG} if present)")
    p.add_argument("-s", "--server", "--serverurl", metavar="ENDPOINT", help="ipc:///path, unix:///path or "
                   "tcp://host:port (default: $PROCGUARD_CONTROL); wins over -c's endpoint")
    p.add_argument("-u", "--username", help="accepted for supervisorctl's sake and ignored: procguard "
                   "authenticates clients by uid (ipc://) or CURVE key (tcp://)")
    p.add_argument("-p", "--password", help="accepted and ignored, as -u")
    p.add_argument("--json", action="store_true", help="print the raw result as JSON")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the reply "
                   f"(default {QUICK_TIMEOUT_S:g} for status/pid/version/signal, none for the others)")
    p.add_argument("--server-key", metavar="FILE", help="tcp://: the server's public key file")
    p.add_argument("--client-key", metavar="FILE", help="tcp://: this client's NAME.key_secret file")
    p.add_argument("--version", action="version", version=f"procguardctl {VERSION}")


def _with_names(sub: _Commands, command: str, text: str, nargs: str, **names: Any) -> None:
    """A command whose one argument is the names it acts on (`names` sets their help or metavar)."""
    sub.add_parser(command, help=text).add_argument("names", nargs=nargs, **names)


def _add_process_commands(sub: _Commands) -> None:
    """status, the actions on processes, and the config's programs (reload, reread, add, remove, update)."""
    s = sub.add_parser("status", help="show processes (exit 3 if any is not RUNNING)")
    s.add_argument("-l", "--long", action="store_true", help="add CPU%% and RSS of each process tree")
    s.add_argument("names", nargs="*", help="program, program:process, group:* or all (default all)")
    for verb, text in (("start", "start processes; reply when RUNNING or failed"),
                       ("stop", "stop processes; reply when stopped"),
                       ("restart", "stop, then start processes (on held sockets: replace them, as deploy "
                                   "does without the one-shot jobs)"),
                       ("deploy", "run one-shot dependencies again, then start each program's next generation "
                                  "beside the current one and switch to it once ready (exit 1 if it fails)"),
                       ("reload-app", "graceful in-place reload where the server has one (gunicorn/uWSGI HUP), "
                                      "else a restart")):
        _with_names(sub, verb, text, "+", help="program, program:process, group:* or all")
    c = sub.add_parser("signal", help="send a signal to processes")
    c.add_argument("signal", help="name (HUP, SIGHUP) or number")
    c.add_argument("names", nargs="+")
    sub.add_parser("reload", help="re-read the config files and apply the difference")
    sub.add_parser("reread", help="read the config files and show what changed (NAME: available, changed, "
                   "disappeared); apply nothing until add, remove or update")
    _with_names(sub, "add", "put a group or program that reread found available into use", "+", metavar="NAME")
    _with_names(sub, "remove", "take a stopped group or program out of use", "+", metavar="NAME")
    _with_names(sub, "update", "re-read the config files and apply them to the named groups and programs, or to all "
                "(stops removed and changed ones, starts changed and added ones)", "*", metavar="NAME")


def _add_daemon_commands(sub: _Commands) -> None:
    """The daemon's log, help, pid, version, shutdown and reexec; output, top and events."""
    c = sub.add_parser("maintail", help="the daemon's own last log lines (kept in memory, whatever the log "
                       "goes to)")
    c.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    c.add_argument("bytes", nargs="?", metavar="-N", help=f"the last N bytes (default {MAINTAIL_DEFAULT_BYTES})")
    c = sub.add_parser("help", help="list the commands, or describe one")
    c.add_argument("topic", nargs="?", metavar="COMMAND")
    _with_names(sub, "pid", "the daemon's pid, or the pids of processes", "*")
    sub.add_parser("version", help="the daemon's version")
    sub.add_parser("shutdown", help="stop every program, then the daemon")
    sub.add_parser("reexec", help="run the installed procguard in place of the daemon (same pid), keeping every "
                   "program, pipe and socket (after a package upgrade: docs/upgrade.md)")
    c = sub.add_parser("tail", help="the last output of a process (kept in memory even for NONE/journal)")
    c.add_argument("-f", "--follow", action="store_true", help="keep printing new output until interrupted")
    c.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many lines (default 10; 0: all kept)")
    c.add_argument("name", help="one process: program or program:process")
    c.add_argument("stream", nargs="?", default="stdout", choices=("stdout", "stderr"))
    c = sub.add_parser("top", help="a live full-screen view: state, health, CPU, RSS and history of every process, "
                       "the latest events; keys restart, start, stop and tail the selected one")
    c.add_argument("-d", "--delay", type=float, default=1.0, metavar="S", help="seconds between refreshes (default 1)")
    c.add_argument("--plain", action="store_true", help="a plain refreshing table (the default on a dumb terminal "
                   "or when not on a TTY)")
    c.add_argument("-n", "--iterations", type=int, metavar="N", help="plain table: stop after N refreshes")
    c.add_argument("names", nargs="*", help="program, program:process, group:* (default all)")
    c = sub.add_parser("events", help="recent events (state changes, health, restarts, reloads, deploys, alerts)")
    c.add_argument("-f", "--follow", action="store_true", help="keep printing new events until interrupted")
    c.add_argument("-n", "--lines", type=int, default=50, metavar="N",
                   help="how many recent events (default 50; 0: all the daemon keeps)")
    c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per event and line")
    c.add_argument("names", nargs="*", help="program, program:process or group:* (default all)")


def _add_local_commands(sub: _Commands) -> None:
    """Alerts and logs; the commands that run here (keygen, import-supervisor); supervisorctl's spellings."""
    c = sub.add_parser("alert", help="alerts: `alert test NAME` sends a test message through [alert.NAME]")
    c.add_argument("action", choices=("test",))
    c.add_argument("name", help="an [alert.NAME] of the daemon's config")
    sub.add_parser("logreopen", help="reopen every log file (after an external logrotate moved them)")
    _with_names(sub, "logrotate", "rotate the log files of processes now", "*", help="default all")
    c = sub.add_parser("keygen", help="write a CURVE key pair NAME.key and NAME.key_secret into DIR")
    c.add_argument("directory")
    c.add_argument("name", nargs="?", default="client")
    # Migrating from supervisord (issue #8).
    c = sub.add_parser("import-supervisor", help="convert a supervisord config into procguard TOML, with a report "
                       "of every key that has no equivalent")
    c.add_argument("supervisor_config", metavar="SUPERVISORD_CONF",
                   help="supervisord's main file, e.g. /etc/supervisor/supervisord.conf ([include] files are read)")
    c.add_argument("-o", "--output-dir", default="procguard-import", metavar="DIR",
                   help="where procguard.toml, conf.d/*.toml and IMPORT-REPORT.txt go (default ./procguard-import)")
    c.add_argument("--force", action="store_true", help="overwrite the files of an earlier import in DIR")
    c = sub.add_parser("avail", help="supervisorctl's avail: every configured process (all are in use: "
                       "procguard applies its config on reload)")
    c.set_defaults(names=[], long=False)
    _with_names(sub, "clear", "supervisorctl's clear: start fresh log files now (the same as logrotate; the old "
                "output is kept as FILE.1)", "+", help="program, program:process or all")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (`only`) one whose subcommands are just that one, if it is one."""
    p = ArgumentParser(
        prog="procguardctl",
        description="Control a running procguard daemon.",
        epilog="exit codes (supervisorctl's): 0 ok, 1 error, 2 usage, 3 status: not all RUNNING, 4 status: no such "
               "process, or daemon not reachable, 7 not running (signal, pid, failed start)",
    )
    _add_options(p)
    sub = _Commands(p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser), only)
    _add_process_commands(sub)
    _add_daemon_commands(sub)
    _add_local_commands(sub)
    if only is not None and not sub.matched:
        return build_parser()  # not a command: the full parser says so, with the list
    return p


# ------------------------------------------------------------------------------------ the commands


def wire_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The request's arguments for the parsed command line (protocol.COMMANDS names them)."""
    args: dict[str, Any] = {}
    if getattr(ns, "names", None):
        args["names"] = list(ns.names)
    if ns.command == "status" and ns.long:
        args["long"] = True
    if ns.command == "signal":
        args["signal"] = int(ns.signal) if ns.signal.isdigit() else ns.signal.upper()
    if ns.command == "tail":
        args = {"name": ns.name, "stream": ns.stream, "follow": ns.follow}
    if ns.command == "maintail":
        args = {"follow": ns.follow}
    if ns.command == "events":
        args["follow"] = ns.follow
        if ns.lines > 0:
            args["limit"] = ns.lines
    if ns.command == "alert":
        args = {"name": ns.name}
    return args


def help_command(topic: str | None) -> int:
    """supervisorctl's `help` and `help COMMAND`, from every command's parser."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {choice.dest: choice.help for choice in subparsers._choices_actions}
    usage = subparsers.choices[topic].format_help() if topic is not None and topic in subparsers.choices else None
    return render.emit(render.command_help(commands, topic, usage))


def keygen(directory: str, name: str) -> int:
    import zmq.auth

    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return render.emit(render.key_pair(public, secret))


def run_here(ns: argparse.Namespace) -> int | None:
    """The commands that need no daemon (help, keygen, import-supervisor, a bad maintail -N); else None."""
    if ns.command == "help":
        return help_command(ns.topic)  # every command's help: the full parser
    if ns.command == "keygen":
        return keygen(ns.directory, ns.name)
    if ns.command == "import-supervisor":
        from procguardctl.importer import run as import_supervisor  # stdlib only, and only when asked for

        return import_supervisor(ns)
    if ns.command == "maintail" and ns.bytes is not None and not (ns.bytes.startswith("-") and ns.bytes[1:].isdigit()):
        return render.emit(supervisorctl.bad_argument(ns.bytes))
    return None


def normalise(ns: argparse.Namespace) -> None:
    """supervisorctl's spellings to procguard's commands; maintail -N to a byte count."""
    if ns.command == "clear":
        print("procguardctl clear: rotating the log files (procguard keeps the old output as FILE.1 when "
              "*_logfile_backups > 0, and `tail` still shows the last output)", file=sys.stderr)
    ns.max_bytes = 0
    if ns.command == "maintail":
        ns.max_bytes = int(ns.bytes[1:]) if ns.bytes else MAINTAIL_DEFAULT_BYTES
        ns.lines = 0
    ns.avail = ns.command == "avail"
    ns.command = ALIASES.get(ns.command, ns.command)


def ask(ns: argparse.Namespace, where: "ClientSettings") -> int:
    """Send the command, print its reply; the streamed parts of tail, maintail and events as they come."""
    from procguardctl.client import request

    streaming = ns.command in STREAMED
    quick = ns.command in QUICK or (streaming and not ns.follow)
    timeout = ns.timeout if ns.timeout is not None else (QUICK_TIMEOUT_S if quick else None)
    printer = render.printer(ns)

    def more(result: Any) -> None:
        if printer is not None:
            printer(result)
        else:
            print(json.dumps(result), flush=True)

    try:
        cmd = "alert_test" if ns.command == "alert" else ns.command.replace("-", "_")
        reply = request(where, cmd, wire_args(ns), timeout, on_more=more)
    except KeyboardInterrupt:
        if streaming:
            return exits.OK  # the way to end tail -f, maintail -f and events -f
        render.note("interrupted; the command goes on in the daemon")
        return exits.INTERRUPTED
    names = list(getattr(ns, "names", None) or [])
    if not reply.ok:
        assert reply.code is not None
        return render.refused(ns.command, reply.code, reply.message, names, ns.json)
    if ns.command == "reexec" and not ns.json:
        from procguardctl.reexec import wait_for_new_image

        return wait_for_new_image(where, reply.result)
    if ns.json and ns.command != "events":  # events --json: JSON lines, as when following
        return render.as_json(ns.command, reply.result, names, ns.avail)
    if ns.command in STREAMED:
        return render.stream(reply.result, ns)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return render.emit(render.lines(ns.command, reply.result, ns, colour))


def talk(ns: argparse.Namespace, where: "ClientSettings") -> int:
    """top, or one request: the daemon not reachable is exit 4, no reply in time exit 1."""
    from procguardctl.client import TimedOut, Unreachable  # pyzmq only when talking to a daemon

    try:
        if ns.command == "top":
            from procguardctl.top import run as top  # curses only for top

            return top(where, ns)
        return ask(ns, where)
    except Unreachable as exc:
        render.note(str(exc))
        return exits.UNKNOWN
    except TimedOut as exc:
        render.note(str(exc))
        return exits.ERROR


@quiet_on_closed_pipe  # every command's output, in one place (issue #14)
def main(argv: list[str] | None = None) -> int:
    args = split_command(sys.argv[1:] if argv is None else argv)
    ns = build_parser(command_in(args)).parse_args(args)
    if ns.username is not None or ns.password is not None:
        render.note("-u/-p ignored: procguard authenticates clients by their uid (ipc://) or CURVE key "
                    "(tcp://), not by password")
    done = run_here(ns)
    if done is not None:
        return done
    normalise(ns)
    try:
        where = endpoint.find(ns.server, ns.config, ns.server_key, ns.client_key)
    except (OSError, ValueError) as exc:
        render.note(f"cannot read the config file: {exc}" if isinstance(exc, OSError) else str(exc))
        return exits.USAGE
    return talk(ns, where)
