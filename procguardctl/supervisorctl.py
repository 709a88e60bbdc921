"""supervisorctl's texts and exit codes for per-process outcomes, so scripts (and Ansible) that read them work.

Mirrors supervisor 4.3's supervisorctl.py: `NAME: started`, `NAME: ERROR (not running)`, ..., with its
LSB exit codes. The daemon reports each outcome as a protocol code (a result's "error"); nothing here
reads procguard's human wording, which stays in --json and in status's description column.
"""

from collections.abc import Iterable
from typing import Any

from procguard.protocol import (
    E_ALREADY_ADDED, E_ALREADY_STARTED, E_BAD_SIGNAL, E_NO_SUCH_PROCESS, E_NOT_RUNNING, E_START_FAILED,
    E_STILL_RUNNING,
)
from procguardctl import exits

SUCCESS = {"start": "started", "stop": "stopped", "signal": "signalled"}
ERRORS = {
    E_NO_SUCH_PROCESS: "no such process",
    E_ALREADY_STARTED: "already started",
    E_NOT_RUNNING: "not running",
    # supervisord says "spawn error" when exec failed and "abnormal termination" when the process exited
    # before it was up; procguard reports both as start_failed (the reason is in --json and status).
    E_START_FAILED: "abnormal termination",
    E_BAD_SIGNAL: "bad signal name",
}
# The outcome each command does not count as a failure (set_exitstatus_from_xmlrpc_fault's ignored fault).
IGNORED = {"start": E_ALREADY_STARTED, "stop": E_NOT_RUNNING}
DEAD_PROGRAM = frozenset({E_START_FAILED, E_NOT_RUNNING})  # supervisorctl's DEAD_PROGRAM_FAULTS: exit 7
# Commands whose refused request still gets a line per name (the others get procguard's message).
PER_PROCESS = frozenset({"start", "stop", "restart", "signal", "reload-app", "status", "pid"})


class Printed:
    """Lines for stdout (and notes for stderr) with the exit code supervisorctl would give.

    A plain class, not a dataclass: importing `dataclasses` (inspect, ast) costs procguardctl more than
    the rest of `status` (tests/unit/test_client_imports.py, #17).
    """

    __slots__ = ("lines", "code", "notes")

    def __init__(self, lines: list[str], code: int = 0, notes: tuple[str, ...] = ()) -> None:
        self.lines = lines
        self.code = code
        self.notes = notes

    def fail(self, code: int) -> None:
        self.code = code  # as supervisorctl: the last failure sets the exit status


def group_of(name: str) -> str | None:
    """The group of a `GROUP:*` or `GROUP:` name (supervisorctl then says "no such group")."""
    prefix, colon, rest = name.partition(":")
    return prefix if colon and rest in ("", "*") else None


def no_such(name: str) -> str:
    group = group_of(name)
    return f"{group}: ERROR (no such group)" if group is not None else f"{name}: ERROR (no such process)"


def actions(result: list[dict[str, Any]]) -> Printed:
    """start, stop, restart, signal, reload-app results, one line each."""
    out = Printed([])
    notes = []
    for r in result:
        name, action, error = str(r.get("name")), str(r.get("action")), r.get("error")
        if error is None:
            text = SUCCESS.get(action) if r.get("ok") else None
            out.lines.append(f"{name}: {text or r.get('message')}")
            if not r.get("ok"):
                out.fail(exits.ERROR)
            continue
        out.lines.append(no_such(name) if error == E_NO_SUCH_PROCESS
                         else f"{name}: ERROR ({ERRORS.get(error, error)})")
        if error == E_START_FAILED:
            notes.append(f"{name}: {r.get('message')}")
        if IGNORED.get(action) == error:
            continue
        if error in DEAD_PROGRAM:
            out.fail(exits.NOT_RUNNING)
        elif error == E_NO_SUCH_PROCESS and action == "start" and group_of(name) is not None:
            out.fail(exits.USAGE)
        else:
            out.fail(exits.ERROR)
    out.notes = tuple(notes)
    return out


def request_failed(command: str, code: str, names: Iterable[str]) -> Printed | None:
    """A whole request refused with a per-name meaning (every name unknown, a bad signal), or None."""
    names = list(names)
    if command not in PER_PROCESS:
        return None
    if code == E_BAD_SIGNAL and command == "signal":
        return Printed([f"{n}: ERROR (bad signal name)" for n in names], exits.ERROR)
    if code != E_NO_SUCH_PROCESS:
        return None
    if command == "status":
        return Printed([no_such(n) for n in names], exits.UNKNOWN)
    if command == "pid":
        return Printed([f"No such process {n}" for n in names], exits.ERROR)
    action = {"restart": "start", "reload-app": "reload_app"}.get(command, command)
    return actions([{"name": n, "action": action, "ok": False, "error": E_NO_SUCH_PROCESS} for n in names])


def pids(result: list[dict[str, Any]], names: list[str]) -> Printed:
    """`pid NAME...`: 0 for a process that is not running (exit 7), `No such process NAME` (exit 1)."""
    out = Printed([])
    for r in result:
        if r.get("error") == E_NO_SUCH_PROCESS:
            out.lines.append(f"No such process {r.get('name')}")
            out.fail(exits.ERROR)
            continue
        out.lines.append(str(r.get("pid") or 0))
        if not r.get("pid") and "all" not in names:
            out.fail(exits.NOT_RUNNING)
    return out


def reread(result: dict[str, list[str]]) -> Printed:
    changes = {**{n: "available" for n in result.get("added", [])},
               **{n: "changed" for n in result.get("changed", [])},
               **{n: "disappeared" for n in result.get("removed", [])}}
    return Printed([f"{n}: {changes[n]}" for n in sorted(changes)] or ["No config updates to processes"])


def update(result: dict[str, list[str]]) -> Printed:
    out = Printed([])
    for name in result.get("unknown", []):
        out.lines.append(f"ERROR: no such group: {name}")
        out.fail(exits.ERROR)
    for name in result.get("removed", []):
        out.lines += [f"{name}: stopped", f"{name}: removed process group"]
    for name in result.get("changed", []):
        out.lines += [f"{name}: stopped", f"{name}: updated process group"]
    out.lines += [f"{name}: added process group" for name in result.get("added", [])]
    return out


def add_remove(command: str, result: list[dict[str, Any]]) -> Printed:
    out = Printed([])
    for r in result:
        name, error = r.get("name"), r.get("error")
        if error is None:
            out.lines.append(f"{name}: {'added' if command == 'add' else 'removed'} process group")
        elif error == E_ALREADY_ADDED:
            out.lines.append("ERROR: process group already active")  # not a failure for supervisorctl
        elif error == E_STILL_RUNNING:
            out.lines.append(f"ERROR: process/group still running: {name}")
            out.fail(exits.ERROR)
        else:
            out.lines.append(f"ERROR: no such process/group: {name}")
            out.fail(exits.ERROR)
    return out


def bad_argument(arg: str) -> Printed:
    """supervisorctl's words and exit status for an argument it cannot read (maintail 100)."""
    return Printed([f"Error: bad argument {arg}"], exits.ERROR)
