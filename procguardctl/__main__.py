"""procguardctl: argv -> protocol message -> DEALER -> print.

Exit codes: 0 success; 1 error (unknown name, failed start, refused config, timeout); 2 usage;
3 from `status` when any listed process is not RUNNING (supervisorctl's LSB convention);
4 daemon not reachable (not running, no permission, not authorised).
"""

import argparse
import json
import os
import sys
from typing import Any

from procguard.protocol import (
    VERSION, ClientSettings, client_settings_from_config, default_endpoint, ipc_path, resolve_endpoint,
)
from procguard.terminal import ArgumentParser

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
DEFAULT_CONFIG = "/etc/procguard/procguard.toml"
SYSTEM_SOCKET = "/run/procguard/procguard.sock"  # the default endpoint of a daemon running as root
# Commands that reply at once get this timeout by default; start/stop/restart/reload/shutdown wait as
# long as the command takes (stopwaitsecs can be minutes), like supervisorctl.
QUICK_TIMEOUT_S = 10.0
QUICK = frozenset({"status", "pid", "version", "signal"})

# supervisorctl's spellings (issue #8): the same wire command where the meaning is the same.
ALIASES = {"update": "reload", "clear": "logrotate", "avail": "status"}
# supervisorctl commands with no procguard counterpart: a pointer to what to use instead, and the exit code.
POINTERS = {
    "reread": ("procguard has no separate reread step: `procguardctl update` (the same as `procguardctl reload`) "
               "reads the config and applies what changed in one step, touching only added, changed and removed "
               "programs. To validate a config without applying it: procguard -c CONFIG --check", EXIT_OK),
    "maintail": ("procguard writes its own log to its stdout/stderr, not to a file: under systemd "
                 "`journalctl -u procguard -f` (maintail -f) or `journalctl -u procguard -n 100`; in a container "
                 "`docker logs -f`. A program's output: procguardctl tail [-f] NAME", EXIT_USAGE),
}

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
        epilog="exit codes: 0 ok, 1 error, 2 usage, 3 status: not all RUNNING, 4 daemon not reachable",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", help=f"the daemon's config file, for its endpoint and keys "
                                              f"(default: $PROCGUARD_CONFIG, else {DEFAULT_CONFIG} if present)")
    where.add_argument("-s", "--server", metavar="ENDPOINT", help="ipc:///path or tcp://host:port "
                                                                   "(default: $PROCGUARD_CONTROL)")
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
                       ("restart", "stop, then start processes"),
                       ("reload-app", "graceful in-place reload where the server has one (gunicorn/uWSGI HUP), "
                                      "else a restart")):
        c = sub.add_parser(verb, help=text)
        c.add_argument("names", nargs="+", help="program, program:process, group:* or all")
    c = sub.add_parser("signal", help="send a signal to processes")
    c.add_argument("signal", help="name (HUP, SIGHUP) or number")
    c.add_argument("names", nargs="+")
    sub.add_parser("reload", help="re-read the config files and apply the difference")
    c = sub.add_parser("pid", help="the daemon's pid, or the pids of processes")
    c.add_argument("names", nargs="*")
    sub.add_parser("version", help="the daemon's version")
    sub.add_parser("shutdown", help="stop every program, then the daemon")
    c = sub.add_parser("tail", help="the last output of a process (kept in memory even for NONE/journal)")
    c.add_argument("-f", "--follow", action="store_true", help="keep printing new output until interrupted")
    c.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many lines (default 10; 0: all kept)")
    c.add_argument("name", help="one process: program or program:process")
    c.add_argument("stream", nargs="?", default="stdout", choices=("stdout", "stderr"))
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
    sub.add_parser("reread", help="supervisorctl's reread: see update (procguard reads and applies in one step)")
    c = sub.add_parser("update", help="supervisorctl's update: the same as reload")
    c.add_argument("names", nargs="*", metavar="all", help="supervisorctl's group names: procguard applies every "
                   "change, so only `all` (or nothing) is accepted")
    c = sub.add_parser("maintail", help="supervisorctl's maintail: where procguard's own log is (journald)")
    c.add_argument("-f", action="store_true", help=argparse.SUPPRESS)
    c.add_argument("args", nargs="*", help=argparse.SUPPRESS)
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
        return ClientSettings(resolve_endpoint(ns.server, os.getcwd()), server_key, client_key)
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


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def print_status(result: list[dict[str, Any]], long: bool, colour: bool) -> int:
    lines = []  # one write, not a print per process (1000 prints: a tenth of `status`'s instructions)
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
    return status_code(result)


def is_up(st: dict[str, Any]) -> bool:
    """RUNNING, or a one-shot job that completed (it is done, not down)."""
    return st.get("state") == "RUNNING" or (
        st.get("state") == "EXITED" and str(st.get("reason", "")).startswith("completed"))


def status_code(result: list[dict[str, Any]]) -> int:
    return EXIT_OK if all(is_up(st) for st in result) else EXIT_NOT_RUNNING


def print_actions(result: list[dict[str, Any]]) -> int:
    code = EXIT_OK
    for r in result:
        if r.get("ok"):
            print(f"{r.get('name')}: {r.get('message')}")
        else:
            print(f"{r.get('name')}: ERROR ({r.get('message')})")
            code = EXIT_ERROR
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
    if command in ("start", "stop", "restart", "signal", "reload-app"):
        return print_actions(result)
    if command == "reload":
        changes = [(n, what) for what in ("removed", "changed", "added") for n in result.get(what, [])]
        for name, what in changes:
            print(f"{name}: {what}")
        if not changes:
            print("no changes")
        return EXIT_OK
    if command == "pid":
        if isinstance(result, dict):
            print(result.get("pid"))
        else:
            for r in result:
                print(r.get("pid") or 0)  # supervisorctl prints 0 for a process that is not running
        return EXIT_OK
    if command == "version":
        print(result.get("version"))
        return EXIT_OK
    if command == "shutdown":
        print(f"procguard (pid {result.get('pid')}) is shutting down")
        return EXIT_OK
    if command == "tail":
        TailPrinter(ns.lines)(result)
        if result.get("end"):
            print(f"[procguardctl: {result['end']}]", file=sys.stderr)
        return EXIT_OK
    if command == "logreopen":
        print(f"reopened {result.get('reopened')} log files")
        return EXIT_OK
    if command == "logrotate":
        for path in result.get("rotated", []):
            print(f"rotated {path}")
        return EXIT_OK
    raise AssertionError(command)


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

    def __init__(self, lines: int) -> None:
        self.offset: int | None = None
        self._lines = lines

    def __call__(self, result: dict[str, Any]) -> None:
        import base64

        data = base64.b64decode(result.get("data") or "")
        end = int(result.get("offset") or 0)
        if self.offset is None:
            data = last_lines(data, self._lines)
        elif end - len(data) > self.offset:
            print(f"[procguardctl: {end - len(data) - self.offset} bytes skipped]", file=sys.stderr, flush=True)
        self.offset = end
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def main(argv: list[str] | None = None) -> int:
    ns = build_parser(command_in(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if ns.command == "keygen":
        return keygen(ns.directory, ns.name)
    if ns.command == "import-supervisor":
        from procguardctl.importer import run as import_supervisor  # stdlib only, and only when asked for

        return import_supervisor(ns)
    if ns.command in POINTERS:
        text, code = POINTERS[ns.command]
        print(f"procguardctl {ns.command}: {text}", file=sys.stderr)
        return code
    if ns.command == "update" and any(n != "all" for n in ns.names):
        print("procguardctl update: procguard applies every change of the config at once (reload); "
              "run `procguardctl update` without names", file=sys.stderr)
        return EXIT_USAGE
    if ns.command == "clear":
        print("procguardctl clear: rotating the log files (procguard keeps the old output as FILE.1 when "
              "*_logfile_backups > 0, and `tail` still shows the last output)", file=sys.stderr)
    ns.avail = ns.command == "avail"
    if ns.command == "update":
        ns.names = []
    ns.command = ALIASES.get(ns.command, ns.command)
    try:
        where = settings(ns)
    except (OSError, ValueError) as exc:
        print(f"procguardctl: cannot read the config file: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from procguardctl.client import TimedOut, Unreachable, request  # pyzmq only when talking to a daemon

    quick = ns.command in QUICK or (ns.command == "tail" and not ns.follow)
    timeout = ns.timeout if ns.timeout is not None else (QUICK_TIMEOUT_S if quick else None)
    printer = TailPrinter(ns.lines) if ns.command == "tail" and not ns.json else None

    def more(result: Any) -> None:
        if printer is not None:
            printer(result)
        else:
            print(json.dumps(result), flush=True)

    try:
        reply = request(where.endpoint, ns.command.replace("-", "_"), wire_args(ns), timeout,
                        where.server_public_key_file, where.client_secret_key_file, on_more=more)
    except Unreachable as exc:
        print(f"procguardctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except TimedOut as exc:
        print(f"procguardctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if ns.command == "tail":
            return EXIT_OK  # the way to end tail -f
        print("procguardctl: interrupted; the command goes on in the daemon", file=sys.stderr)
        return 130
    if not reply.ok:
        if ns.json:
            print(json.dumps({"ok": False, "error": {"code": reply.code, "message": reply.message}}, indent=2))
        print(f"procguardctl: {reply.message} [{reply.code}]", file=sys.stderr)
        return EXIT_USAGE if reply.code in ("bad_args", "unknown_command", "bad_signal") else EXIT_ERROR
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if ns.json:
        print(json.dumps(reply.result, indent=2))
        if ns.command == "status" and not ns.avail:
            return status_code(reply.result)
        if ns.command in ("start", "stop", "restart", "signal", "reload-app"):
            return EXIT_OK if all(r.get("ok") for r in reply.result) else EXIT_ERROR
        return EXIT_OK
    return print_result(ns.command, reply.result, ns, colour)


if __name__ == "__main__":
    sys.exit(main())
