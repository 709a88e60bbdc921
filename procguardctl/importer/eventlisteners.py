"""[eventlistener:x]: a program that does not start automatically (procguard sends no events)."""

import os
import shlex

from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import sv_bool
from procguardctl.importer.expansions import Expander
from procguardctl.importer.report import Bad
from procguardctl.importer.tomlout import Table

EVENTLISTENER_KEYS = {
    "events": "procguard has no event notification protocol",
    "buffer_size": "the event queue of a listener pool; procguard has no events",
    "result_handler": "handled the listener's RESULT replies; procguard has no events",
}


def convert_eventlistener(ctx: Context, table: Table, section: str, opts: dict[str, str], exp: Expander) -> None:
    autostart = True
    try:
        autostart = sv_bool(exp.literal(opts.get("autostart", "true"), "autostart"))
    except Bad:
        pass
    table.intro += [
        "An [eventlistener:x] in supervisord. procguard has no events: this program gets no event",
        "headers on its stdin, so a listener would read end-of-file and exit. It is not started",
        "automatically; " + _listener_hint(opts.get("command", "")),
    ]
    table.set("autostart", False, f"supervisord: autostart={'true' if autostart else 'false'}; see above")
    ctx.report.add("changed", ctx.where(section), "became a program that does not start automatically: "
                   "procguard sends no events. " + _listener_hint(opts.get("command", "")))


def _listener_hint(command: str) -> str:
    base = os.path.basename(shlex.split(command)[0]) if command.strip() and _splits(command) else ""
    if base == "memmon":
        return "memmon's job is max_memory = \"200MB\" on the programs it watched (procguard restarts them itself)."
    if base == "httpok":
        return "httpok's job is a [program.NAME.healthcheck] table of type \"http\" (docs/health.md)."
    if base in ("crashmail", "crashmailbatch", "fatalmailbatch", "crashsms"):
        return (f"{base}'s alerts have no procguard equivalent: watch `procguardctl status` (exit 3) or the daemon's "
                "process_exited/FATAL log events instead.")
    return "start it by hand (procguardctl start NAME) if it does useful work without events."


def _splits(command: str) -> bool:
    try:
        return bool(shlex.split(command))
    except ValueError:
        return False
