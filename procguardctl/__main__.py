"""procguardctl: argv -> protocol message -> DEALER -> print.

Exit codes: supervisorctl's where it has one (procguardctl/supervisorctl.py): 0 success; 1 error;
2 usage; 3 from `status` when any listed process is not RUNNING; 4 from `status` for an unknown name,
and whenever the daemon is not reachable; 7 a process not running (signal, pid) or a failed start.
"""

import argparse
import json
import os
import sys
from typing import Any

from procguard.protocol import (
    E_BAD_ARGS, E_UNKNOWN_COMMAND, VERSION, ClientSettings, client_settings_from_config,
    default_endpoint, ipc_path, resolve_endpoint,
)
from procguard.terminal import ArgumentParser
from procguardctl import supervisorctl
from procguardctl.pipes import quiet_on_closed_pipe

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "/etc/procguard/procguard.toml"
SYSTEM_SOCKET = "/run/procguard/procguard.sock"  # the default endpoint of a daemon running as root
# Commands that reply at once get this timeout by default; start/stop/restart/reload/shutdown wait as
# long as the command takes (stopwaitsecs can be minutes), like supervisorctl.
QUICK_TIMEOUT_S = 10.0
QUICK = frozenset({"status", "pid", "version", "signal"})

# supervisorctl's spellings (issue #8): the same wire command where the meaning is the same.
ALIASES = {"clear": "logrotate", "avail": "status"}
# Global options that take a value: the word after them is not the command (see split_command).
VALUED_OPTIONS = frozenset({"-c", "--config", "--configuration", "-s", "--server", "--serverurl", "-u",
                            "--username", "-p", "--password", "--timeout", "--server-key", "--client-key"})
# supervisorctl's tail/maintail without -N show the last 1600 bytes.
MAINTAIL_DEFAULT_BYTES = 1600

COLOURS = {"RUNNING": "32", "STARTING": "33", "BACKOFF": "33", "STOPPING": "33", "FATAL": "31", "EXITED": "31",
           "UNKNOWN": "31"}


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (`only`) one whose subcommands are just that one, if it is one."""
    p = ArgumentParser(
        prog="procguardctl",
        description="Control a running procguard daemon.",
        epilog="exit codes (supervisorctl's): 0 ok, 1 error, 2 usage, 3 status: not all RUNNING, 4 status: no such "
               "process, or daemon not reachable, 7 not running (signal, pid, failed start)",
    )
    p.add_argument("-c", "--config", "--configuration", help=f"the daemon's config file, for its endpoint and "
                   f"keys (default: $PROCGUARD_CONFIG, else {DEFAULT_CONFIG} if present)")
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
    sub = _Commands(p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=ArgumentParser), only)

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
        c = sub.add_parser(verb, help=text)
        c.add_argument("names", nargs="+", help="program, program:process, group:* or all")
    c = sub.add_parser("signal", help="send a signal to processes")
    c.add_argument("signal", help="name (HUP, SIGHUP) or number")
    c.add_argument("names", nargs="+")
    sub.add_parser("reload", help="re-read the config files and apply the difference")
    sub.add_parser("reread", help="read the config files and show what changed (NAME: available, changed, "
                   "disappeared); apply nothing until add, remove or update")
    c = sub.add_parser("add", help="put a group or program that reread found available into use")
    c.add_argument("names", nargs="+", metavar="NAME")
    c = sub.add_parser("remove", help="take a stopped group or program out of use")
    c.add_argument("names", nargs="+", metavar="NAME")
    c = sub.add_parser("update", help="re-read the config files and apply them to the named groups and "
                       "programs, or to all (stops removed and changed ones, starts changed and added ones)")
    c.add_argument("names", nargs="*", metavar="NAME")
    c = sub.add_parser("maintail", help="the daemon's own last log lines (kept in memory, whatever the log "
                       "goes to)")
    c.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until interrupted")
    c.add_argument("bytes", nargs="?", metavar="-N", help=f"the last N bytes (default {MAINTAIL_DEFAULT_BYTES})")
    c = sub.add_parser("help", help="list the commands, or describe one")
    c.add_argument("topic", nargs="?", metavar="COMMAND")
    c = sub.add_parser("pid", help="the daemon's pid, or the pids of processes")
    c.add_argument("names", nargs="*")
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
    c = sub.add_parser("alert", help="alerts: `alert test NAME` sends a test message through [alert.NAME]")
    c.add_argument("action", choices=("test",))
    c.add_argument("name", help="an [alert.NAME] of the daemon's config")
    sub.add_parser("logreopen", help="reopen every log file (after an external logrotate moved them)")
    c = sub.add_parser("logrotate", help="rotate the log files of processes now")
    c.add_argument("names", nargs="*", help="default all")
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
    c = sub.add_parser("clear", help="supervisorctl's clear: start fresh log files now (the same as logrotate; "
                       "the old output is kept as FILE.1)")
    c.add_argument("names", nargs="+", help="program, program:process or all")
    if only is not None and not sub.matched:
        return build_parser()  # not a command: the full parser says so, with the list
    return p


def settings(ns: argparse.Namespace) -> ClientSettings:
    """The endpoint and keys: -s, $PROCGUARD_CONTROL, -c / $PROCGUARD_CONFIG / the default config, the default."""
    server_key, client_key = ns.server_key, ns.client_key or os.environ.get("PROCGUARD_CLIENT_KEY")
    if ns.server:
        if ns.config:  # -c and -s: the endpoint from -s, the keys from the config file
            found = client_settings_from_config(ns.config)
            server_key = server_key or found.server_public_key_file
            client_key = client_key or found.client_secret_key_file
        return ClientSettings(resolve_endpoint(server_endpoint(ns.server), os.getcwd()), server_key, client_key)
    env = os.environ.get("PROCGUARD_CONTROL")
    if env and not ns.config:
        return ClientSettings(resolve_endpoint(env, os.getcwd()), server_key, client_key)
    config = ns.config or os.environ.get("PROCGUARD_CONFIG")
    if config is None and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    if config is None:
        # Our own default, else the system daemon's (for a member of its control_group, not root).
        endpoint = default_endpoint()
        own = ipc_path(endpoint)
        if own is not None and not os.path.exists(own) and os.path.exists(SYSTEM_SOCKET):
            endpoint = f"ipc://{SYSTEM_SOCKET}"
        return ClientSettings(endpoint, server_key, client_key)
    found = client_settings_from_config(config)
    return ClientSettings(found.endpoint, server_key or found.server_public_key_file,
                          client_key or found.client_secret_key_file)


def server_endpoint(url: str) -> str:
    """supervisorctl's `unix:///path` is our `ipc:///path`; other endpoints as given (raises ValueError)."""
    if url.startswith("unix://"):
        return "ipc://" + url[len("unix://"):]
    if url.startswith(("http://", "https://")):
        raise ValueError(f"-s {url}: procguard serves no HTTP; use unix:///path/to/socket, ipc://... or tcp://...")
    return url


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


def print_help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    """supervisorctl's `help` and `help COMMAND`."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if topic is None:
        print("\ndefault commands (type help <topic>):\n=====================================")
        for choice in subparsers._choices_actions:
            print(f"  {choice.dest:<18} {choice.help}")
        return EXIT_OK
    if topic not in subparsers.choices:
        print(f"*** No help on {topic}")  # cmd.Cmd's words; supervisorctl exits 0
        return EXIT_OK
    print(subparsers.choices[topic].format_help(), end="")
    return EXIT_OK


# ------------------------------------------------------------------------------------ rendering


def paint(text: str, state: str, colour: bool) -> str:
    code = COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def uptime(seconds: int) -> str:
    """str(datetime.timedelta(seconds=...)), as supervisorctl prints it, without importing datetime (#17)."""
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'' if days == 1 else 's'}, {hms}" if days else hms


def describe(st: dict[str, Any]) -> str:
    """supervisorctl's description column, with the reason for every state that is not RUNNING."""
    state, pid = st.get("state"), st.get("pid")
    health, health_reason, status_text = st.get("health"), st.get("health_reason"), st.get("status_text")
    extra = ""
    if health == "unhealthy" or (health == "starting" and health_reason):
        extra += f", {health} ({health_reason})" if health_reason else f", {health}"
    elif health:
        extra += f", {health}"
    if status_text:
        extra += f", {status_text}"
    nxt = st.get("next")
    if isinstance(nxt, dict):
        extra += (f"; next generation {nxt.get('generation')}: {nxt.get('state')}"
                  + (f", pid {nxt['pid']}" if nxt.get("pid") else "") + f" ({st.get('replace_phase')})")
    last = st.get("last_deploy")
    if isinstance(last, dict) and not last.get("ok") and nxt is None:
        extra += f"; last {last.get('trigger')} failed while {last.get('step')}: {last.get('reason')}"
    if state == "RUNNING":
        return f"pid {pid}, uptime {uptime(int(st.get('uptime_s') or 0))}{extra}"
    if state in ("STARTING", "STOPPING"):
        return (f"pid {pid}, {state.lower()}" if pid else state.lower()) + extra
    desc = str(st.get("reason") or "")
    if state == "BACKOFF" and st.get("retry_in_s") is not None:
        desc += f", retry in {st['retry_in_s']:.0f}s"
    return desc


def describe_full(st: dict[str, Any]) -> str:
    desc = describe(st)
    if st.get("output_dropped_bytes"):
        desc += f"; {st['output_dropped_bytes']} bytes of output dropped (see the daemon log)"
    return desc


def human_bytes(n: float | None, units: tuple[str, ...] = ("B", "KiB", "MiB", "GiB")) -> str:
    """n bytes in the largest unit below 1024 of it (top passes one-letter units for its narrow column)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in units:
        if value < 1024 or unit == units[-1]:
            return f"{value:.0f}{unit}" if unit == units[0] else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def print_status(result: list[dict[str, Any]], long: bool, colour: bool) -> int:
    """supervisorctl's status: unknown names first (exit 4), then the table (exit 3 if any is not up)."""
    unknown = [st for st in result if st.get("error")]
    result = [st for st in result if not st.get("error")]
    lines = [supervisorctl.no_such(str(st.get("name"))) for st in unknown]
    # One write, not a print per process (1000 prints: a tenth of `status`'s instructions).
    if long:
        lines.append(f"{'NAME':<32} {'STATE':<9} {'CPU%':>6} {'RSS':>9} {'PROCS':>5} DESCRIPTION")
    for st in result:
        state = str(st.get("state"))
        name = str(st.get("name"))
        shown = paint(f"{state:<9}", state, colour)
        if long:
            cpu = "-" if st.get("cpu_percent") is None else f"{st['cpu_percent']:.1f}"
            lines.append(f"{name:<32} {shown} {cpu:>6} {human_bytes(st.get('rss_bytes')):>9} "
                         f"{st.get('tree_pids') or 0:>5} {describe_full(st)}")
        else:
            lines.append(f"{name:<32} {shown} {describe_full(st)}".rstrip())
    if lines:
        print("\n".join(lines))
    code = status_code(result)
    return supervisorctl.STATUS_UNKNOWN if unknown and code == EXIT_OK else code


def is_up(st: dict[str, Any]) -> bool:
    """RUNNING, or a one-shot job that completed (it is done, not down)."""
    return st.get("state") == "RUNNING" or (
        st.get("state") == "EXITED" and str(st.get("reason", "")).startswith("completed"))


def status_code(result: list[dict[str, Any]]) -> int:
    return EXIT_OK if all(is_up(st) for st in result if not st.get("error")) else EXIT_NOT_RUNNING


def emit(printed: supervisorctl.Printed) -> int:
    for line in printed.lines:
        print(line)
    for note in printed.notes:
        print(f"procguardctl: {note}", file=sys.stderr)
    return printed.code


def outcome(command: str, result: Any, names: list[str]) -> supervisorctl.Printed | None:
    """supervisorctl's lines and exit code for the commands that have them (None: procguard's own)."""
    if command in ("start", "stop", "restart", "signal", "reload-app"):
        return supervisorctl.actions(result)
    if command == "pid" and isinstance(result, list):
        return supervisorctl.pids(result, names)
    if command == "reread":
        return supervisorctl.reread(result)
    if command == "update":
        return supervisorctl.update(result)
    if command in ("add", "remove"):
        return supervisorctl.add_remove(command, result)
    return None


def print_deploy(result: list[dict[str, Any]]) -> int:
    """One line per process; a failure with the last lines of its output, indented."""
    code = EXIT_OK
    for r in result:
        if r.get("ok"):
            print(f"{r.get('name')}: deployed: {r.get('message')}")
            continue
        code = EXIT_ERROR
        print(f"{r.get('name')}: ERROR ({r.get('message')})")
        lines = r.get("output") or []
        if lines:
            print(f"  last output of {r.get('name')}:")
            for line in lines:
                print(f"    {line}")
    return code


def print_avail(result: list[dict[str, Any]]) -> int:
    """supervisorctl's avail columns: name, in use, auto/manual, priority (when the daemon reports them)."""
    for st in result:
        auto = "-" if st.get("autostart") is None else ("auto" if st["autostart"] else "manual")
        prio = "-" if st.get("priority") is None else f"{st['priority']}:{st['priority']}"
        print(f"{st.get('name')!s:<32} {'in use':<9} {auto:<9} {prio}".rstrip())
    return EXIT_OK


def print_result(command: str, result: Any, ns: argparse.Namespace, colour: bool) -> int:
    if command == "status" and getattr(ns, "avail", False):
        return print_avail(result)
    if command == "status":
        return print_status(result, ns.long, colour)
    if command == "deploy":
        return print_deploy(result)
    printed = outcome(command, result, getattr(ns, "names", None) or [])
    if printed is not None:
        return emit(printed)
    if command == "reload":
        changes = [(n, what) for what in ("removed", "changed", "added") for n in result.get(what, [])]
        for name, what in changes:
            print(f"{name}: {what}")
        if not changes:
            print("no changes")
        return EXIT_OK
    if command == "pid":
        print(result.get("pid"))
        return EXIT_OK
    if command == "version":
        print(result.get("version"))
        return EXIT_OK
    if command == "shutdown":
        print(f"procguard (pid {result.get('pid')}) is shutting down")
        return EXIT_OK
    if command in ("tail", "maintail"):
        TailPrinter(ns.lines, ns.max_bytes)(result)
        if result.get("end"):
            print(f"[procguardctl: {result['end']}]", file=sys.stderr)
        return EXIT_OK
    if command == "events":
        EventPrinter(ns.json)(result)
        if result.get("end"):
            print(f"[procguardctl: {result['end']}]", file=sys.stderr)
        return EXIT_OK
    if command == "alert":
        if result.get("ok"):
            print(f"{result.get('alert')}: test message delivered")
            return EXIT_OK
        print(f"{result.get('alert')}: ERROR ({result.get('error')})")
        return EXIT_ERROR
    if command == "logreopen":
        print(f"reopened {result.get('reopened')} log files")
        return EXIT_OK
    if command == "logrotate":
        for path in result.get("rotated", []):
            print(f"rotated {path}")
        return EXIT_OK
    raise AssertionError(command)


def logfmt(value: object) -> str:
    """A field value on one line: JSON for lists and objects, quoted when it has spaces or quotes."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n\t') else text


class EventPrinter:
    """Prints events one a line: `TIME WHO [pid N] EVENT key=value ...`, or JSON lines with --json."""

    def __init__(self, as_json: bool) -> None:
        self._json = as_json

    def __call__(self, result: dict[str, Any]) -> None:
        from datetime import datetime

        for ev in result.get("events") or []:
            if self._json:
                print(json.dumps(ev), flush=True)
                continue
            when = datetime.fromtimestamp(float(ev.get("time") or 0)).astimezone().isoformat(timespec="milliseconds")
            who = ev.get("process") or ev.get("program") or "procguard"
            pid = f" pid {ev['pid']}" if ev.get("pid") else ""
            fields = "".join(f" {k}={logfmt(v)}" for k, v in (ev.get("fields") or {}).items())
            print(f"{when} {who}{pid} {ev.get('event')}{fields}", flush=True)


def keygen(directory: str, name: str) -> int:
    import zmq.auth

    os.makedirs(directory, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600; keep it private)")
    return EXIT_OK


def wire_args(ns: argparse.Namespace) -> dict[str, Any]:
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


def last_lines(data: bytes, n: int) -> bytes:
    """The last n lines of data (a final line without newline counts); n = 0: all of it."""
    if n <= 0:
        return data
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    pos = end
    for _ in range(n):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1:]


class TailPrinter:
    """Writes tail output as raw bytes, noting any gap (chunks a slow terminal missed) on stderr."""

    def __init__(self, lines: int, max_bytes: int = 0) -> None:
        self.offset: int | None = None
        self._lines = lines
        self._max_bytes = max_bytes  # maintail -N: the first reply's last N bytes

    def __call__(self, result: dict[str, Any]) -> None:
        import base64

        data = base64.b64decode(result.get("data") or "")
        end = int(result.get("offset") or 0)
        if self.offset is None:
            data = last_lines(data, self._lines)
            if self._max_bytes:
                data = data[-self._max_bytes:]
        elif end - len(data) > self.offset:
            print(f"[procguardctl: {end - len(data) - self.offset} bytes skipped]", file=sys.stderr, flush=True)
        self.offset = end
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@quiet_on_closed_pipe  # every command's output, in one place (issue #14)
def main(argv: list[str] | None = None) -> int:
    args = split_command(sys.argv[1:] if argv is None else argv)
    ns = build_parser(command_in(args)).parse_args(args)
    if ns.username is not None or ns.password is not None:
        print("procguardctl: -u/-p ignored: procguard authenticates clients by their uid (ipc://) or CURVE key "
              "(tcp://), not by password", file=sys.stderr)
    if ns.command == "help":
        return print_help(build_parser(), ns.topic)  # every command's help: the full parser
    if ns.command == "keygen":
        return keygen(ns.directory, ns.name)
    if ns.command == "import-supervisor":
        from procguardctl.importer import run as import_supervisor  # stdlib only, and only when asked for

        return import_supervisor(ns)
    if ns.command == "clear":
        print("procguardctl clear: rotating the log files (procguard keeps the old output as FILE.1 when "
              "*_logfile_backups > 0, and `tail` still shows the last output)", file=sys.stderr)
    ns.max_bytes = 0
    if ns.command == "maintail":
        if ns.bytes is not None and not (ns.bytes.startswith("-") and ns.bytes[1:].isdigit()):
            print(f"Error: bad argument {ns.bytes}")  # supervisorctl's words and exit code
            return supervisorctl.GENERIC
        ns.max_bytes = int(ns.bytes[1:]) if ns.bytes else MAINTAIL_DEFAULT_BYTES
        ns.lines = 0
    ns.avail = ns.command == "avail"
    ns.command = ALIASES.get(ns.command, ns.command)
    try:
        where = settings(ns)
    except (OSError, ValueError) as exc:
        print(f"procguardctl: cannot read the config file: {exc}" if isinstance(exc, OSError)
              else f"procguardctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from procguardctl.client import TimedOut, Unreachable, request  # pyzmq only when talking to a daemon
    if ns.command == "top":
        from procguardctl.top import run as top  # curses only for top

        return top(where, ns)

    streaming = ns.command in ("tail", "maintail", "events")
    quick = ns.command in QUICK or (streaming and not ns.follow)
    timeout = ns.timeout if ns.timeout is not None else (QUICK_TIMEOUT_S if quick else None)
    printer: "TailPrinter | EventPrinter | None" = None
    if ns.command in ("tail", "maintail") and not ns.json:
        printer = TailPrinter(ns.lines, ns.max_bytes)
    elif ns.command == "events":
        printer = EventPrinter(ns.json)

    def more(result: Any) -> None:
        if printer is not None:
            printer(result)
        else:
            print(json.dumps(result), flush=True)

    try:
        cmd = "alert_test" if ns.command == "alert" else ns.command.replace("-", "_")
        reply = request(where.endpoint, cmd, wire_args(ns), timeout,
                        where.server_public_key_file, where.client_secret_key_file, on_more=more)
    except Unreachable as exc:
        print(f"procguardctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimedOut as exc:
        print(f"procguardctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if streaming:
            return EXIT_OK  # the way to end tail -f, maintail -f and events -f
        print("procguardctl: interrupted; the command goes on in the daemon", file=sys.stderr)
        return 130
    names = list(getattr(ns, "names", None) or [])
    if not reply.ok:
        assert reply.code is not None
        if ns.json:
            print(json.dumps({"ok": False, "error": {"code": reply.code, "message": reply.message}}, indent=2))
        failed = supervisorctl.request_failed(ns.command, reply.code, names)
        if failed is not None and not ns.json:
            return emit(failed)
        print(f"procguardctl: {reply.message} [{reply.code}]", file=sys.stderr)
        if failed is not None:
            return failed.code
        return EXIT_USAGE if reply.code in (E_BAD_ARGS, E_UNKNOWN_COMMAND) else EXIT_ERROR
    if ns.command == "reexec" and not ns.json:
        from procguardctl.reexec import wait_for_new_image

        return wait_for_new_image(where, reply.result)
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if ns.json and ns.command == "events":
        return print_result(ns.command, reply.result, ns, colour)  # JSON lines, as when following
    if ns.json:
        print(json.dumps(reply.result, indent=2))
        if ns.command == "status" and not ns.avail:
            unknown = any(st.get("error") for st in reply.result)
            code = status_code(reply.result)
            return supervisorctl.STATUS_UNKNOWN if unknown and code == EXIT_OK else code
        if ns.command == "deploy":
            return EXIT_OK if all(r.get("ok") for r in reply.result) else EXIT_ERROR
        if ns.command == "alert":
            return EXIT_OK if reply.result.get("ok") else EXIT_ERROR
        printed = outcome(ns.command, reply.result, names)
        return printed.code if printed is not None else EXIT_OK
    return print_result(ns.command, reply.result, ns, colour)


if __name__ == "__main__":
    sys.exit(main())
