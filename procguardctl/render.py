"""What procguardctl prints for a daemon's reply: the status table, one line per outcome, tail and events.

Every function here takes the decoded `result` of a reply (docs/protocol.md) and either returns the
lines with the exit status they mean (a supervisorctl.Printed) or, for the streams (tail, maintail,
events), writes them as they come. supervisorctl's own wordings live in supervisorctl.py; this module
adds procguard's. Exit statuses follow fields and protocol codes, with one exception (is_up).
datetime and base64 are imported where used: `status`, the common case, needs neither (#17).
"""

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from procguard.protocol import E_BAD_ARGS, E_UNKNOWN_COMMAND
from procguardctl import exits, supervisorctl
from procguardctl.supervisorctl import Printed

if TYPE_CHECKING:
    import argparse

# A state's colour, in `status` on a terminal and in `top`: green up, yellow on its way, red down.
STATE_COLOURS = {"RUNNING": "green", "STARTING": "yellow", "BACKOFF": "yellow", "STOPPING": "yellow",
                 "FATAL": "red", "EXITED": "red", "UNKNOWN": "red"}
ANSI = {"green": "32", "yellow": "33", "red": "31"}


def note(text: str) -> None:
    """A diagnostic on stderr, prefixed with the program's name."""
    print(f"procguardctl: {text}", file=sys.stderr)


def emit(printed: Printed) -> int:
    """Write the lines (one write: 1000 prints are a tenth of `status`'s instructions) and the notes."""
    if printed.lines:
        print("\n".join(printed.lines))
    for text in printed.notes:
        note(text)
    return printed.code


# ------------------------------------------------------------------------------------ status


def paint(text: str, state: str, colour: bool) -> str:
    code = ANSI.get(STATE_COLOURS.get(state, ""))
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def uptime(seconds: int) -> str:
    """str(datetime.timedelta(seconds=...)), as supervisorctl prints it, without importing datetime (#17)."""
    days, rest = divmod(seconds, 86400)
    hms = f"{rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'' if days == 1 else 's'}, {hms}" if days else hms


def _generations(st: dict[str, Any]) -> str:
    """The next generation while a replace is under way, else a failed last deploy."""
    nxt = st.get("next")
    if isinstance(nxt, dict):
        return (f"; next generation {nxt.get('generation')}: {nxt.get('state')}"
                + (f", pid {nxt['pid']}" if nxt.get("pid") else "") + f" ({st.get('replace_phase')})")
    last = st.get("last_deploy")
    if isinstance(last, dict) and not last.get("ok") and nxt is None:
        return f"; last {last.get('trigger')} failed while {last.get('step')}: {last.get('reason')}"
    return ""


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
    extra += _generations(st)
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


def is_up(st: dict[str, Any]) -> bool:
    """RUNNING, or a one-shot job that completed (it is done, not down)."""
    return st.get("state") == "RUNNING" or bool(st.get("completed"))


def status_exit(result: list[dict[str, Any]]) -> int:
    """4 if a name is unknown and every known process is up; else 3 if any is not up; else 0."""
    unknown = any(st.get("error") for st in result)
    code = exits.OK if all(is_up(st) for st in result if not st.get("error")) else exits.NOT_ALL_RUNNING
    return exits.UNKNOWN if unknown and code == exits.OK else code


def status(result: list[dict[str, Any]], long: bool, colour: bool) -> Printed:
    """supervisorctl's status: unknown names first, then the table (-l: with CPU%, RSS and PROCS)."""
    lines = [supervisorctl.no_such(str(st.get("name"))) for st in result if st.get("error")]
    if long:
        lines.append(f"{'NAME':<32} {'STATE':<9} {'CPU%':>6} {'RSS':>9} {'PROCS':>5} DESCRIPTION")
    for st in result:
        if st.get("error"):
            continue
        state = str(st.get("state"))
        name = str(st.get("name"))
        shown = paint(f"{state:<9}", state, colour)
        if long:
            cpu = "-" if st.get("cpu_percent") is None else f"{st['cpu_percent']:.1f}"
            lines.append(f"{name:<32} {shown} {cpu:>6} {human_bytes(st.get('rss_bytes')):>9} "
                         f"{st.get('tree_pids') or 0:>5} {describe_full(st)}")
        else:
            lines.append(f"{name:<32} {shown} {describe_full(st)}".rstrip())
    return Printed(lines, status_exit(result))


def avail(result: list[dict[str, Any]]) -> Printed:
    """supervisorctl's avail columns: name, in use, auto/manual, priority (when the daemon reports them)."""
    lines = []
    for st in result:
        auto = "-" if st.get("autostart") is None else ("auto" if st["autostart"] else "manual")
        prio = "-" if st.get("priority") is None else f"{st['priority']}:{st['priority']}"
        lines.append(f"{st.get('name')!s:<32} {'in use':<9} {auto:<9} {prio}".rstrip())
    return Printed(lines)


# ------------------------------------------------------------------------------------ one line each


def deploy_exit(result: list[dict[str, Any]]) -> int:
    return exits.OK if all(r.get("ok") for r in result) else exits.ERROR


def deploy(result: list[dict[str, Any]]) -> Printed:
    """One line per process; a failure with the last lines of its output, indented."""
    lines = []
    for r in result:
        if r.get("ok"):
            lines.append(f"{r.get('name')}: deployed: {r.get('message')}")
            continue
        lines.append(f"{r.get('name')}: ERROR ({r.get('message')})")
        output = r.get("output") or []
        if output:
            lines.append(f"  last output of {r.get('name')}:")
            lines += [f"    {line}" for line in output]
    return Printed(lines, deploy_exit(result))


def reload(result: dict[str, list[str]]) -> Printed:
    changes = [f"{name}: {what}" for what in ("removed", "changed", "added") for name in result.get(what, [])]
    return Printed(changes or ["no changes"])


def alert_exit(result: dict[str, Any]) -> int:
    return exits.OK if result.get("ok") else exits.ERROR


def alert(result: dict[str, Any]) -> Printed:
    if result.get("ok"):
        return Printed([f"{result.get('alert')}: test message delivered"])
    return Printed([f"{result.get('alert')}: ERROR ({result.get('error')})"], alert_exit(result))


def outcome(command: str, result: Any, names: list[str]) -> Printed | None:
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


# Commands whose lines depend on the result only.
LINES: dict[str, Callable[[Any], Printed]] = {
    "deploy": deploy,
    "reload": reload,
    "alert": alert,
    "pid": lambda result: Printed([str(result.get("pid"))]),  # the daemon's own (no names given)
    "version": lambda result: Printed([str(result.get("version"))]),
    "shutdown": lambda result: Printed([f"procguard (pid {result.get('pid')}) is shutting down"]),
    "logreopen": lambda result: Printed([f"reopened {result.get('reopened')} log files"]),
    "logrotate": lambda result: Printed([f"rotated {path}" for path in result.get("rotated", [])]),
}
# The exit status of a reply printed as JSON, where it is not supervisorctl's (outcome) or 0.
JSON_EXIT: dict[str, Callable[[Any], int]] = {"status": status_exit, "deploy": deploy_exit, "alert": alert_exit}


def lines(command: str, result: Any, ns: "argparse.Namespace", colour: bool) -> Printed:
    """The lines of every command but the streams, with their exit status."""
    if command == "status":
        return avail(result) if ns.avail else status(result, ns.long, colour)
    printed = outcome(command, result, getattr(ns, "names", None) or [])
    return printed if printed is not None else LINES[command](result)


def as_json(command: str, result: Any, names: list[str], avail: bool) -> int:
    """--json: the raw result, and the exit status its lines would have had."""
    print(json.dumps(result, indent=2))
    if command in JSON_EXIT and not (command == "status" and avail):
        return JSON_EXIT[command](result)
    printed = outcome(command, result, names)
    return printed.code if printed is not None else exits.OK


def refused(command: str, code: str, message: str | None, names: list[str], as_json: bool) -> int:
    """A request the daemon refused: supervisorctl's lines where it has them, else procguard's message."""
    if as_json:
        print(json.dumps({"ok": False, "error": {"code": code, "message": message}}, indent=2))
    failed = supervisorctl.request_failed(command, code, names)
    if failed is not None and not as_json:
        return emit(failed)
    note(f"{message} [{code}]")
    if failed is not None:
        return failed.code
    return exits.USAGE if code in (E_BAD_ARGS, E_UNKNOWN_COMMAND) else exits.ERROR


def command_help(commands: dict[str, str | None], topic: str | None, topic_help: str | None) -> Printed:
    """supervisorctl's `help` (every command, one line each) and `help COMMAND` (its usage: topic_help)."""
    if topic is None:
        return Printed(["", "default commands (type help <topic>):", "=====================================",
                        *(f"  {name:<18} {text}" for name, text in commands.items())])
    if topic_help is None:
        return Printed([f"*** No help on {topic}"])  # cmd.Cmd's words; supervisorctl exits 0
    return Printed([topic_help.removesuffix("\n")])


def key_pair(public: str, secret: str) -> Printed:
    return Printed([f"public key: {public}", f"secret key: {secret} (mode 0600; keep it private)"])


# ------------------------------------------------------------------------------------ streams


def logfmt(value: object) -> str:
    """A field value on one line: JSON for lists and objects, quoted when it has spaces or quotes."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n\t') else text


def event_line(ev: dict[str, Any], short_time: bool = False) -> str:
    """`TIME WHO [pid N] EVENT key=value ...`: the local time in ISO 8601 with ms, or (short_time) H:M:S."""
    from datetime import datetime

    at = datetime.fromtimestamp(float(ev.get("time") or 0))
    when = at.strftime("%H:%M:%S") if short_time else at.astimezone().isoformat(timespec="milliseconds")
    who = ev.get("process") or ev.get("program") or "procguard"
    pid = f" pid {ev['pid']}" if ev.get("pid") else ""
    fields = "".join(f" {k}={logfmt(v)}" for k, v in (ev.get("fields") or {}).items())
    return f"{when} {who}{pid} {ev.get('event')}{fields}"


class EventPrinter:
    """Prints events one a line (event_line), or JSON lines with --json."""

    def __init__(self, as_json: bool) -> None:
        self._json = as_json

    def __call__(self, result: dict[str, Any]) -> None:
        for ev in result.get("events") or []:
            print(json.dumps(ev) if self._json else event_line(ev), flush=True)


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


def printer(ns: "argparse.Namespace") -> "TailPrinter | EventPrinter | None":
    """What writes the parts of a stream as they come (None: JSON lines)."""
    if ns.command in ("tail", "maintail") and not ns.json:
        return TailPrinter(ns.lines, ns.max_bytes)
    if ns.command == "events":
        return EventPrinter(ns.json)
    return None


def stream(result: dict[str, Any], ns: "argparse.Namespace") -> int:
    """The last (or only) part of tail, maintail or events, and why it ended if the daemon ended it."""
    if ns.command == "events":
        EventPrinter(ns.json)(result)
    else:
        TailPrinter(ns.lines, ns.max_bytes)(result)
    if result.get("end"):
        print(f"[procguardctl: {result['end']}]", file=sys.stderr)
    return exits.OK
