"""Convert a supervisord configuration into procguard TOML: `procguardctl import-supervisor`.

supervisord's INI is read the way supervisord 4 reads it: configparser with `;` and `#` comment lines and
inline comments (after whitespace), multi-line values, `[include] files=` globs relative to the main file,
`%(here)s` as the directory of the file a value came from, its other `%(name)s` expansions, and its
`environment=` lexer (commas inside quotes). What is converted is what supervisord ran.

Each `[program:x]`, `[fcgi-program:x]` and `[eventlistener:x]` becomes a `[program.NAME]` table in
`conf.d/NAME.toml` (the members of a `[group:x]` share `conf.d/GROUP.toml`); `[supervisord]`,
`[unix_http_server]` and `[inet_http_server]` become the main file's `[procguard]` table. Every key
without an equivalent is listed in the report, never dropped silently. Where procguard's default differs
from supervisord's, supervisord's behaviour is written out, with a comment on how to opt into procguard's.
No password is ever copied, into the TOML, the comments or the report.

Standard library only: procguardctl must start fast and must not pull in the daemon (see
tests/unit/test_client_imports.py); this module is imported only when the subcommand runs.
"""

import argparse
import configparser
import glob
import grp
import os
import platform
import pwd
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field

# The procguard keys a [program.NAME] table may carry that this converter writes (procguard/config/model.py
# PROGRAM_KEYS holds them all); supervisord's keys keep their names.
SAME_NAME_KEYS = (
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart", "startsecs",
    "startretries", "autorestart", "exitcodes", "stopsignal", "stopwaitsecs", "stopasgroup", "killasgroup",
    "user", "redirect_stderr", "stdout_logfile", "stdout_logfile_maxbytes", "stdout_logfile_backups",
    "stderr_logfile", "stderr_logfile_maxbytes", "stderr_logfile_backups", "environment", "directory", "umask",
)

# supervisord 4 [program:x] keys that have no procguard equivalent, and why.
NO_EQUIVALENT = {
    "stdout_capture_maxbytes": "capture mode feeds PROCESS_COMMUNICATION events; procguard has no events",
    "stderr_capture_maxbytes": "capture mode feeds PROCESS_COMMUNICATION events; procguard has no events",
    "stdout_events_enabled": "procguard emits no PROCESS_LOG events; `procguardctl tail -f NAME` follows output",
    "stderr_events_enabled": "procguard emits no PROCESS_LOG events; `procguardctl tail -f NAME stderr` follows output",
    "serverurl": "told a supervisorctl run by the child where supervisord listens; procguardctl finds the "
                 "daemon through -c CONFIG or $PROCGUARD_CONTROL",
}
EVENTLISTENER_KEYS = {
    "events": "procguard has no event notification protocol",
    "buffer_size": "the event queue of a listener pool; procguard has no events",
    "result_handler": "handled the listener's RESULT replies; procguard has no events",
}
FCGI_KEYS = ("socket", "socket_backlog", "socket_owner", "socket_mode")
# [program:x] keys whose %(ENV_X)s is written as {ENV_X} for procguard to read at load (procguard/config/model.py
# reads {ENV_X} in every string-valued program key); command, directory, process_name, log paths and
# environment values are templates anyway.
DEFERRABLE_KEYS = (
    "numprocs", "numprocs_start", "priority", "autostart", "startsecs", "startretries", "stopwaitsecs",
    "autorestart", "exitcodes", "stopsignal", "stopasgroup", "killasgroup", "user", "redirect_stderr",
    "stdout_logfile_maxbytes", "stderr_logfile_maxbytes", "stdout_logfile_backups", "stderr_logfile_backups",
    "umask",
)

APP_SERVERS = ("uwsgi", "gunicorn", "daphne", "uvicorn", "hypercorn")  # procguard's `server` key knows these
TRUTHY = ("yes", "true", "on", "1")
FALSY = ("no", "false", "off", "0")
LOGLEVELS = {"critical": "critical", "error": "error", "warn": "warning", "warning": "warning", "info": "info",
             "debug": "debug", "trace": "debug", "blather": "debug"}

# procguard's program names (procguard/config/model.py _PROGRAM_NAME_RE) and its template variables.
PROGRAM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
PROCGUARD_TEMPLATE_RE = re.compile(
    r"\{(here|program_name|group_name|process_num|ENV_[A-Za-z_][A-Za-z0-9_]*|socket\.[A-Za-z0-9_.-]+?\.fd)(:[^}]*)?\}")
ENV_TEMPLATE_RE = re.compile(r"\{ENV_[A-Za-z_][A-Za-z0-9_]*\}")
ENV_ANY_TEMPLATE_RE = re.compile(r"\{ENV_([A-Za-z_][A-Za-z0-9_]*)(?::split)?\}")
# A %-expansion as Python's % operator reads it (supervisord expands with `value % expansions`).
EXPANSION_RE = re.compile(r"%(?:(?P<pct>%)|\((?P<name>[^)]*)\)(?P<flags>[#0\- +]*)(?P<width>\d*)"
                          r"(?P<precision>\.\d+)?(?P<type>[diouxXeEfFgGcrsa]))")


class ImportFailed(Exception):
    """The supervisord configuration could not be read at all (missing file, INI syntax error)."""


class _Bad(ValueError):
    """A value supervisord itself would refuse; the message says what was expected."""


# ------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class Finding:
    level: str  # "error" | "dropped" | "changed" | "note"
    where: str  # "FILE [section] key"
    message: str


LEVEL_TITLES = {
    "error": "Errors (supervisord would refuse these too, or they could not be converted; fix them):",
    "dropped": "Not carried over (no procguard equivalent):",
    "changed": "Carried over with a difference (review):",
    "note": "Notes:",
}


@dataclass(slots=True)
class Report:
    findings: list[Finding] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)

    def add(self, level: str, where: str, message: str) -> None:
        finding = Finding(level, where, message)
        if finding not in self.findings:
            self.findings.append(finding)

    @property
    def has_errors(self) -> bool:
        return any(f.level == "error" for f in self.findings)

    def render(self, source: str, out_dir: str) -> str:
        lines = [f"procguardctl import-supervisor {source} --output-dir {out_dir}", ""]
        lines.append("Read:")
        lines.extend(f"  {path}" for path in self.read)
        if self.wrote:
            lines.append("Wrote:")
            lines.extend(f"  {path}" for path in self.wrote)
        for level in ("error", "dropped", "changed", "note"):
            found = [f for f in self.findings if f.level == level]
            if found:
                lines += ["", LEVEL_TITLES[level]]
                lines.extend(f"  {f.where}: {f.message}" for f in found)
        main = os.path.join(out_dir, "procguard.toml")
        lines += ["", "Next:", f"  procguard -c {main} --check     # validate, and see what is missing on this machine",
                  "  then copy the directory to /etc/procguard/ and stop supervisord before starting procguard "
                  "(both would run the same programs)"]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ reading supervisord's INI


@dataclass(slots=True)
class Section:
    name: str  # "program:web", as written (supervisord's section names are case-sensitive)
    file: str
    comments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Source:
    main: str
    here: str  # the main file's directory: supervisord's %(here)s outside included files
    parser: configparser.RawConfigParser
    sections: dict[str, Section]


_SECTION_LINE_RE = re.compile(r"^\s*\[(?P<name>[^\]]+)\]")
# A commented-out setting (";stdout_logfile_maxbytes=1MB"): not prose worth carrying into the TOML.
_COMMENTED_SETTING_RE = re.compile(r"^[;#]+\s*\[?[A-Za-z_][A-Za-z0-9_:.-]*\]?\s*([=:]|$)")


def _section_comments(path: str) -> dict[str, list[str]]:
    """Full-line comments of each section of one file (prose only), to carry into the TOML.

    A comment block after a section's last key and right before the next header belongs to that next
    section ("; celery beat" above "[program:beat]"); one at the end of the file, to the last section.
    """
    out: dict[str, list[str]] = {}
    current: str | None = None
    pending: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _SECTION_LINE_RE.match(line)
            stripped = line.strip()
            if m:
                current = m.group("name").strip()
                out.setdefault(current, []).extend(pending)
                pending = []
            elif stripped and stripped[0] in "#;":
                text = stripped.lstrip("#;").strip()
                if text and not _COMMENTED_SETTING_RE.match(stripped):
                    pending.append(text)
            elif stripped and current is not None:
                out.setdefault(current, []).extend(pending)  # a key line: the comments above were its section's
                pending = []
    if current is not None:
        out.setdefault(current, []).extend(pending)
    return {k: v for k, v in out.items() if v}


def read_supervisor_config(path: str, report: Report) -> Source:
    """Read the main file and its includes as supervisord 4 does (options.py ServerOptions.read_config).

    Raises ImportFailed when a file cannot be read or is not valid INI.
    """
    main = os.path.abspath(path)
    here = os.path.dirname(main)
    # supervisord's UnhosedConfigParser on Python 3: RawConfigParser, `;`/`#` inline comments, not strict
    # (a section or key given twice: the later one wins).
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    sections: dict[str, Section] = {}

    def read_one(filename: str) -> None:
        before = set(parser.sections())
        try:
            with open(filename, encoding="utf-8") as f:
                parser.read_file(f, source=filename)
        except OSError as exc:
            raise ImportFailed(f"cannot read {filename}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ImportFailed(f"{filename}: not UTF-8: {exc}") from None
        except configparser.Error as exc:
            raise ImportFailed(f"{filename}: supervisord could not parse this either: {exc}") from None
        report.read.append(filename)
        comments = _section_comments(filename)
        for name in parser.sections():
            if name not in before:
                sections[name] = Section(name, filename)
            if name in comments and name in sections:
                sections[name].comments.extend(comments[name])
        # supervisord's expand_here: %(here)s is the directory of the file the value came from.
        file_dir = os.path.dirname(os.path.abspath(filename))
        for name in parser.sections():
            for key, value in parser.items(name):
                if "%(here)s" in value:
                    parser.set(name, key, value.replace("%(here)s", file_dir))

    if not os.path.isfile(main):
        raise ImportFailed(f"{main}: no such file")
    read_one(main)
    if parser.has_section("include"):
        where = f"{main} [include]"
        if not parser.has_option("include", "files"):
            report.add("error", where, "has no files= setting (supervisord refuses this)")
        else:
            files = parser.get("include", "files")
            try:
                files = Expander(here=here, where=where, report=report).literal(files, "files")
            except _Bad as exc:
                report.add("error", f"{where} files", str(exc))
                files = ""
            for pattern in files.split():
                full = os.path.join(here, pattern)
                matches = sorted(glob.glob(full))
                if not matches:
                    report.add("note", f"{where} files", f"{pattern!r} matches no file (supervisord warns and goes on)")
                for filename in matches:
                    in_main_include = parser.get("include", "files")
                    read_one(filename)
                    if parser.get("include", "files") != in_main_include:
                        # supervisord reads only the main file's [include]; an included one merges into it
                        # and is ignored.
                        report.add("note", f"{filename} [include]", "an [include] inside an included file is "
                                   "ignored by supervisord 4, so it is ignored here too")
                        parser.set("include", "files", in_main_include)
    if parser.defaults():
        report.add("note", f"{main} [DEFAULT]", "its keys apply to every section, as in supervisord; each "
                   "converted table carries them explicitly")
    return Source(main=main, here=here, parser=parser, sections=sections)


# ----------------------------------------------------------------------------------------- expansions


@dataclass(slots=True)
class Expander:
    """supervisord's %(name)s expansions, turned into procguard templates where procguard has them.

    A templatable key (command, directory, process_name, environment values, log paths) gets
    `{program_name}`, `{process_num:02d}` and `{ENV_X}`; any other key gets the value supervisord would
    have computed, resolved now (and reported when it came from this machine's environment).
    """

    here: str
    where: str
    report: Report
    program_name: str | None = None
    keeps_name: bool = True  # the procguard name is supervisord's, so {program_name} means the same
    group_name: str | None = None  # a [group:x] the program belongs to
    numprocs: int | None = None
    per_process: bool = False  # process_num exists (supervisord's per-process keys)
    env_literals: dict[str, str] = field(default_factory=dict)  # ENV_X from the config's own environment=

    def template(self, value: str, key: str) -> str:
        return "".join(text for text, _ in self.segments(value, key, templatable=True))

    def literal(self, value: str, key: str) -> str:
        return "".join(text for text, _ in self.segments(value, key, templatable=False))

    def deferred(self, value: str, key: str) -> str | None:
        """value with each %(ENV_X)s not known here as {ENV_X}, for procguard to read at load; None if none.

        Used for keys procguard reads {ENV_X} in (every string-valued program key): the variable is read
        from procguard's environment when it loads the config, as supervisord read it from its own when
        it started, and an unset one refuses the config instead of leaving a default.
        """
        pieces = self.segments(value, key, templatable=False, defer_env=True)
        if not any(is_template and ENV_TEMPLATE_RE.search(text) for text, is_template in pieces):
            return None
        return "".join(text for text, _ in pieces).strip()

    def segments(self, value: str, key: str, templatable: bool, defer_env: bool = False) -> list[tuple[str, bool]]:
        """Split value into (text, is_template) pieces; raises _Bad where supervisord would refuse."""
        out: list[tuple[str, bool]] = []
        pos = 0
        while True:
            i = value.find("%", pos)
            if i < 0:
                out.append((value[pos:], False))
                break
            out.append((value[pos:i], False))
            m = EXPANSION_RE.match(value, i)
            if m is None:
                raise _Bad(f"{value!r}: a lone '%' (supervisord refuses it; write %% for a literal %)")
            pos = m.end()
            if m.group("pct"):
                out.append(("%", False))
                continue
            out.append(self._one(m, key, templatable, defer_env))
        self._check_literal_braces(out, key)
        return [(t, tpl) for t, tpl in out if t]

    def _one(self, m: "re.Match[str]", key: str, templatable: bool, defer_env: bool) -> tuple[str, bool]:
        name = m.group("name")
        spec = "%" + m.group(0)[m.end("name") + 1 - m.start():]  # "%02d", "%s"
        plain_s = spec == "%s"

        def fmt(v: object) -> str:
            try:
                return spec % (v,)
            except (TypeError, ValueError) as exc:
                raise _Bad(f"%({name}){spec[1:]}: {exc}") from None

        if name == "here":
            return fmt(self.here), False
        if name == "host_node_name":
            node = platform.node()
            self.report.add("changed", f"{self.where} {key}", f"%(host_node_name)s has no procguard equivalent: "
                            f"written as this machine's name {node!r}")
            return fmt(node), False
        if name in ("program_name", "group_name") and self.program_name is not None:
            if name == "group_name" and self.group_name is not None:
                return fmt(self.group_name), False  # procguard's {group_name} is the program name
            if templatable and plain_s and self.keeps_name:
                return "{" + name + "}", True
            return fmt(self.program_name), False
        if name == "process_num" and self.per_process:
            if not templatable:
                raise _Bad(f"%(process_num) in {key}: procguard has no per-process value for this key")
            return _process_num_template(m), True
        if name == "numprocs" and self.per_process:
            if self.numprocs is None:
                raise _Bad("%(numprocs)d: numprocs comes from the environment, so it is not known at import")
            return fmt(self.numprocs), False
        if name.startswith("ENV_"):
            var = name[4:]
            if var in self.env_literals:
                text = fmt(self.env_literals[var])
                return text, bool(PROCGUARD_TEMPLATE_RE.search(text))
            if templatable and plain_s:
                # In a command supervisord expanded before splitting: {ENV_X:split} does that at load.
                return "{" + name + (":split" if key == "command" else "") + "}", True
            if defer_env and plain_s:
                return "{" + name + "}", True
            if var not in os.environ:
                raise _Bad(f"%({name})s: this machine's environment has no {var} (supervisord would refuse too)")
            self.report.add("changed", f"{self.where} {key}", f"%({name})s is not a template in procguard's "
                            f"{key}: written as its value here now, {os.environ[var]!r}")
            return fmt(os.environ[var]), False
        raise _Bad(f"%({name}){spec[1:]}: supervisord has no such expansion here")

    def _check_literal_braces(self, pieces: list[tuple[str, bool]], key: str) -> None:
        for text, is_template in pieces:
            if not is_template and PROCGUARD_TEMPLATE_RE.search(text):
                self.report.add("error", f"{self.where} {key}", f"{text!r} contains a procguard template "
                                "({...}) that procguard would expand; rewrite it by hand")


def _process_num_template(m: "re.Match[str]") -> str:
    """%(process_num)02d -> {process_num:02d}: printf flags and width as a format spec."""
    flags, width = m.group("flags"), m.group("width")
    spec = ""
    if "-" in flags:
        spec += "<"
    elif "0" in flags and width:
        spec += "0"
    if "+" in flags:
        spec += "+"
    elif " " in flags:
        spec += " "
    spec += width
    if m.group("type") not in "diusr":
        raise _Bad(f"%(process_num){m.group(0)[m.end('name') + 1 - m.start():]}: "
                   "procguard formats process_num as a decimal only")
    return "{process_num:" + spec + "d}" if spec else "{process_num}"


# ---------------------------------------------------------------------------- supervisord's datatypes


def sv_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in TRUTHY:
        return True
    if v in FALSY:
        return False
    raise _Bad(f"not a valid boolean value: {value!r}")


def sv_int(value: str, minimum: int | None = None) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise _Bad(f"not an integer: {value!r}") from None
    if minimum is not None and n < minimum:
        raise _Bad(f"expected at least {minimum}, got {n}")
    return n


def sv_size(value: str) -> int | str:
    """supervisord's byte_size: "50MB" (powers of 1024, as procguard) or bytes; as a procguard size."""
    v = value.strip().lower()
    for suffix in ("kb", "mb", "gb"):
        if v.endswith(suffix):
            try:
                return f"{int(v[:-2].strip())}{suffix.upper()}"
            except ValueError:
                break
    else:
        try:
            return int(v)
        except ValueError:
            pass
    raise _Bad(f"not a size like 50MB or 1024: {value!r}")


def sv_octal(value: str) -> int:
    try:
        return int(value.strip(), 8)
    except ValueError:
        raise _Bad(f"not an octal number: {value!r}") from None


def sv_signal(value: str) -> str | int:
    v = value.strip()
    if v.isdigit():
        if int(v) not in {int(s) for s in signal.Signals}:
            raise _Bad(f"not a valid signal number: {value!r}")
        return int(v)
    name = v.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signal.Signals.__members__:
        raise _Bad(f"not a valid signal name: {value!r}")
    return name[3:]


def sv_autorestart(value: str) -> bool | str:
    v = value.strip().lower()
    if v == "unexpected":
        return "unexpected"
    return sv_bool(v)


def sv_exitcodes(value: str) -> list[int]:
    try:
        codes = [int(x) for x in value.split(",")] if value.strip() else []
    except ValueError:
        raise _Bad(f"not a list of exit codes: {value!r}") from None
    if not codes or any(not 0 <= c <= 255 for c in codes):
        raise _Bad(f"not a list of exit codes (0-255): {value!r}")
    return codes


def sv_environment(value: str) -> dict[str, str]:
    """supervisord's dict_of_key_value_pairs: KEY="val",KEY2=val2, with commas allowed inside quotes.

    The same lexer as supervisord (a non-POSIX shlex with `/.+-():` as word characters), so a value parses
    here exactly as it did there, quirks included (quotes are stripped from both ends, not unescaped).
    """
    lexer = shlex.shlex(value)
    lexer.wordchars += "/.+-():"
    try:
        tokens = list(lexer)
    except ValueError as exc:
        raise _Bad(f"cannot parse environment: {exc}") from None
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        kv = tokens[i:i + 3]
        if len(kv) != 3 or kv[1] != "=":
            raise _Bad(f"unexpected end of key/value pairs in {value!r} (supervisord refuses it too)")
        out[kv[0]] = kv[2].strip("'\"")
        i += 4  # supervisord skips the separator without looking at it
    return out


# ------------------------------------------------------------------------------------------ TOML output

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else toml_str(key)


def toml_str(value: str) -> str:
    """A TOML string: a literal '...' when that reads better (quotes inside, as in shell commands)."""
    if ('"' in value or "\\" in value) and "'" not in value and not _CONTROL_RE.search(value):
        return f"'{value}'"
    out = []
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif _CONTROL_RE.match(ch):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


TomlValue = str | int | bool | list[int] | list[str] | dict[str, str]


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_str(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_str(v)}" for k, v in value.items()) + " }"


@dataclass(slots=True)
class Table:
    """A TOML table being written: keys in order, each with comment lines above it."""

    header: str
    intro: list[str] = field(default_factory=list)  # comment lines above the header
    entries: list[tuple[str, TomlValue, list[str]]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def set(self, key: str, value: TomlValue, *comments: str) -> None:
        self.entries.append((key, value, list(comments)))
        self.keys.add(key)

    def render(self) -> str:
        lines = [f"# {c}" if c else "#" for c in self.intro]
        lines.append(self.header)
        subtables: list[str] = []
        for key, value, comments in self.entries:
            if isinstance(value, dict) and len(toml_value(value)) > 90:
                # A long environment reads better as its own table, after the program's keys.
                sub = [f"# {c}" for c in comments] + [f"{self.header[:-1]}.{toml_key(key)}]"]
                sub += [f"{toml_key(k)} = {toml_str(v)}" for k, v in value.items()]
                subtables.append("\n".join(sub))
                continue
            lines.extend(f"# {c}" for c in comments)
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
        return "\n".join(lines + ([""] + subtables if subtables else [])) + "\n"


# ---------------------------------------------------------------------------------------- conversion


@dataclass(slots=True)
class Globals:
    """What [supervisord] passes down to every program."""

    environment: dict[str, str] = field(default_factory=dict)
    umask: str | None = None
    directory: str | None = None
    applies_daemonized: bool = True  # nodaemon=false: supervisord set its umask/directory (children inherit)


@dataclass(slots=True)
class GroupInfo:
    name: str
    priority: int
    explicit_priority: bool
    members: list[str]


@dataclass(slots=True)
class Output:
    files: dict[str, str] = field(default_factory=dict)  # path relative to the output dir -> text
    modes: dict[str, int] = field(default_factory=dict)


KINDS = ("program", "fcgi-program", "eventlistener")


class Converter:
    """One conversion: the source, the findings, and the files to write."""

    def __init__(self, source: Source, report: Report) -> None:
        self.src = source
        self.report = report
        self.parser = source.parser
        self.names: dict[str, str] = {}  # section -> procguard program name
        self.globals = Globals()

    # ---- helpers
    def where(self, section: str, key: str | None = None) -> str:
        sec = self.src.sections.get(section)
        loc = f"{sec.file if sec else self.src.main} [{section}]"
        return f"{loc} {key}" if key else loc

    def options(self, section: str) -> dict[str, str]:
        return dict(self.parser.items(section))

    def drop(self, section: str, key: str, why: str, value: str | None = None) -> None:
        shown = "" if value is None or _is_secret(key) else f" = {_short(value)}"
        self.report.add("dropped", self.where(section, key) + shown, why)

    # ---- the whole file
    def convert(self) -> Output:
        out = Output()
        sections = self.parser.sections()
        if "supervisord" not in sections:
            self.report.add("note", self.src.main, "no [supervisord] section (supervisord requires one; fine "
                            "when converting a conf.d file on its own)")
        main_table = Table("[procguard]")
        main_lines = self.convert_supervisord(main_table)
        groups = self.read_groups()
        grouped = {m: g.name for g in groups.values() for m in g.members}
        self.assign_names(grouped)

        by_file: dict[str, list[str]] = {}  # output file -> rendered tables
        file_modes: dict[str, int] = {}
        for section in sections:
            kind, _, name = section.partition(":")
            if kind not in KINDS or not name.strip():
                continue
            name = name.strip()
            group = groups.get(grouped[name]) if kind != "eventlistener" and name in grouped else None
            rendered = self.convert_program(section, kind, name, group)
            target = _file_name(group.name if group else self.names[section])
            if group is not None and target not in by_file:
                by_file[target] = [_group_table(group, self.names)]
            by_file.setdefault(target, []).append(rendered)
            file_modes[target] = _mode_of(self.src.sections[section].file)
        for section in sections:
            kind, _, name = section.partition(":")
            if kind in KINDS and not name.strip():
                self.report.add("error", self.where(section), "a section without a name; not converted")
            elif section not in ("supervisord", "include") and kind not in (*KINDS, "group"):
                self.convert_other(section)

        header = [f"# procguard configuration imported from {self.src.main}",
                  "# by `procguardctl import-supervisor`. IMPORT-REPORT.txt lists every supervisord key that was",
                  "# not carried over or changed meaning.", ""]
        out.files["procguard.toml"] = "\n".join(header) + "\n" + main_table.render() + (
            "\n" + "\n".join(main_lines) + "\n" if main_lines else "")
        out.modes["procguard.toml"] = _mode_of(self.src.main)
        for target, parts in by_file.items():
            path = os.path.join("conf.d", target)
            out.files[path] = "\n".join(parts)
            out.modes[path] = file_modes[target]
        if not by_file:
            self.report.add("note", self.src.main, "no [program:x], [fcgi-program:x] or [eventlistener:x] found")
        self.report.add("note", self.src.main, "children start with a clean environment in procguard (PATH, LANG, "
                        "TZ, HOME, USER and the environment table), not supervisord's whole environment: a variable "
                        "a program relied on inheriting belongs in its environment table (or as \"{ENV_NAME}\")")
        return out

    # ---- [supervisord]
    def convert_supervisord(self, table: Table) -> list[str]:
        """Fill [procguard]; return comment lines for the main file about what did not carry over."""
        table.set("include", ["conf.d/*.toml"])
        notes: list[str] = []
        if not self.parser.has_section("supervisord"):
            table.set("loglevel", "info")
            self._control(table, notes)
            return notes
        section = "supervisord"
        opts = self.options(section)
        exp = Expander(here=self.src.here, where=self.where(section), report=self.report)
        nodaemon = False
        try:
            nodaemon = sv_bool(opts.get("nodaemon", "false"))
        except _Bad:
            pass
        self.globals.applies_daemonized = not nodaemon
        loglevel = "info"
        for key, raw in opts.items():
            try:
                if key == "environment":
                    env = self.environment(raw, exp, key)
                    self.globals.environment = env
                    self.report.add("changed", self.where(section, key), "procguard has no global environment: "
                                    "these variables are written into every program's environment table")
                    continue
                value = exp.literal(raw, key)
                if key == "loglevel":
                    level = value.strip().lower()
                    if level not in LOGLEVELS:
                        raise _Bad(f"not a supervisord log level: {value!r}")
                    loglevel = LOGLEVELS[level]
                    if loglevel != level:
                        self.report.add("changed", self.where(section, key), f"{level!r} is {loglevel!r} in procguard")
                elif key == "childlogdir":
                    table.set("logdir", value.strip(), "[supervisord] childlogdir: where AUTO log files go "
                              "(procguard names them PROCESS-stdout.log, not with a random suffix)")
                elif key == "umask":
                    self.globals.umask = f"{sv_octal(value):03o}"
                elif key == "directory":
                    self.globals.directory = value.strip()
                elif key in SUPERVISORD_DROPPED:
                    self.drop(section, key, SUPERVISORD_DROPPED[key], value)
                    notes.append(f"# [supervisord] {key}: {SUPERVISORD_DROPPED[key]}")
                else:
                    self.drop(section, key, "not a supervisord 4 [supervisord] key (supervisord ignored it)", value)
            except _Bad as exc:
                self.report.add("error", self.where(section, key), str(exc))
        if "logdir" not in table.keys:
            notes.append("# logdir: supervisord's childlogdir was not set (its default is the temp directory); "
                         "procguard's default is /var/log/procguard as root")
        table.set("loglevel", loglevel)
        for key, what in (("umask", self.globals.umask), ("directory", self.globals.directory)):
            if what is None:
                continue
            if self.globals.applies_daemonized:
                self.report.add("changed", self.where(section, key), f"supervisord's own {key}, which its children "
                                f"inherited: written into every program without its own {key}")
            else:
                self.drop(section, key, "nodaemon=true: supervisord sets its umask and directory only when it "
                          "daemonizes, so its children did not get this; not written")
        self._control(table, notes)
        return notes

    def _control(self, table: Table, notes: list[str]) -> None:
        """[unix_http_server] and [inet_http_server] -> control, control_group; never a password."""
        unix = "unix_http_server" if self.parser.has_section("unix_http_server") else None
        inet = "inet_http_server" if self.parser.has_section("inet_http_server") else None
        if unix is None and inet is None:
            return
        comments: list[str] = []
        group: str | None = None
        if unix is not None:
            opts = self.options(unix)
            comments.append(f"[unix_http_server] file={opts.get('file', '?')}: procguard's control socket "
                            "(procguardctl finds it with -c this file)")
            self.report.add("changed", self.where(unix, "file"), "the control socket is "
                            "ipc:///run/procguard/procguard.sock, mode 0660 in a 0750 directory; scripts use "
                            "procguardctl, not supervisorctl")
            mode = 0o700
            if "chmod" in opts:
                try:
                    mode = sv_octal(opts["chmod"])
                except _Bad as exc:
                    self.report.add("error", self.where(unix, "chmod"), str(exc))
                self.report.add("changed", self.where(unix, "chmod") + f" = {opts['chmod']}",
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
                    self.report.add("changed", self.where(unix, "chown") + f" = {opts['chown']}",
                                    f"members of group {owner_group!r} could use supervisord's socket (chmod "
                                    f"{mode:04o}): control_group = {owner_group!r}")
                else:
                    self.report.add("changed", self.where(unix, "chown") + f" = {opts['chown']}",
                                    "procguard admits root, its own user and members of control_group; put the "
                                    "users who ran supervisorctl into a group and set control_group to it")
            if mode & 0o006:
                self.report.add("changed", self.where(unix, "chmod"), "supervisord's socket was open to every local "
                                "user; procguard's never is (root, its user and control_group only)")
            for key in ("username", "password"):
                if key in opts:
                    self.drop(unix, key, "not carried over, and never copied: procguard needs no password on its "
                              "ipc:// socket; it checks the connecting process's uid through ZAP (SO_PEERCRED)")
            if "username" in opts or "password" in opts:
                comments.append("[unix_http_server] username/password: not carried over. procguard checks the "
                                "peer's uid on this socket instead (ZAP): root, its own user, members of control_group.")
            for key in sorted(set(opts) - {"file", "chmod", "chown", "username", "password"}):
                self.drop(unix, key, "not a supervisord 4 [unix_http_server] key", opts[key])
        if inet is not None:
            opts = self.options(inet)
            port = opts.get("port", "?")
            comments += [
                f"[inet_http_server] port={port}: not carried over. Its HTTP basic auth sent a plaintext",
                "password; procguard's tcp:// endpoint admits only CURVE clients whose public key you",
                "authorised (see docs/protocol.md). To control procguard over the network:",
                "  procguardctl keygen /etc/procguard/curve server",
                "  control = \"tcp://127.0.0.1:9001\"  and a [procguard.curve] table with",
                "  server_secret_key = \"curve/server.key_secret\", authorized_clients = \"curve/authorized\"",
            ]
            self.drop(inet, "port", "not carried over: a tcp:// control endpoint needs CURVE keys (`procguardctl "
                      "keygen`), so the local ipc:// socket is used; see the comment in procguard.toml", port)
            for key in ("username", "password"):
                if key in opts:
                    self.drop(inet, key, "not carried over, and never copied: on tcp:// procguard authenticates "
                              "clients by CURVE public key (procguardctl keygen), not by password")
            for key in sorted(set(opts) - {"port", "username", "password"}):
                self.drop(inet, key, "not a supervisord 4 [inet_http_server] key", opts[key])
        table.set("control", "ipc:///run/procguard/procguard.sock", *comments)
        if group is not None:
            try:
                grp.getgrnam(group)
            except KeyError:
                self.report.add("error", self.where(unix or "", "chown"), f"group {group!r} does not exist on this "
                                "machine: control_group is written commented out")
                notes.append(f"# control_group = {toml_str(group)}   # no such group on this machine")
            else:
                table.set("control_group", group, "[unix_http_server] chown: members of this group may use procguardctl")

    # ---- [group:x]
    def read_groups(self) -> dict[str, GroupInfo]:
        groups: dict[str, GroupInfo] = {}
        seen: dict[str, str] = {}
        for section in self.parser.sections():
            if not section.startswith("group:"):
                continue
            name = section.split(":", 1)[1].strip()
            opts = self.options(section)
            members = [m.strip() for m in opts.get("programs", "").split(",") if m.strip()]
            if not members:
                self.report.add("error", self.where(section, "programs"), "no programs= (supervisord refuses this)")
            priority, explicit = 999, "priority" in opts
            if explicit:
                try:
                    exp = Expander(here=self.src.here, where=self.where(section), report=self.report)
                    priority = sv_int(exp.literal(opts["priority"], "priority"))
                except _Bad as exc:
                    self.report.add("error", self.where(section, "priority"), str(exc))
            kept = []
            for member in members:
                if not (self.parser.has_section(f"program:{member}") or self.parser.has_section(f"fcgi-program:{member}")):
                    self.report.add("error", self.where(section, "programs"), f"names unknown program {member!r} "
                                    "(supervisord refuses this)")
                elif member in seen:
                    self.report.add("error", self.where(section, "programs"), f"{member!r} is also in [group:"
                                    f"{seen[member]}]; it is converted once, with that group")
                else:
                    seen[member] = name
                    kept.append(member)
            for key in sorted(set(opts) - {"programs", "priority"}):
                self.drop(section, key, "not a supervisord 4 [group:x] key", opts[key])
            if not PROGRAM_NAME_RE.fullmatch(name):
                self.report.add("error", self.where(section), f"group name {name!r}: procguard takes letters, digits, "
                                "_ . - only; not converted (its programs are converted on their own)")
                continue
            groups[name] = GroupInfo(name, priority, explicit, kept)
            self.report.add("note", self.where(section), f"kept as [group.{name}] (programs {', '.join(kept)}): "
                            f"processes are named {name}:NAME in status, and {name}:* names the group, as in "
                            "supervisorctl")
        return groups

    def assign_names(self, grouped: dict[str, str]) -> None:
        used: set[str] = set()
        for section in self.parser.sections():
            kind, _, name = section.partition(":")
            if kind not in KINDS or not name.strip():
                continue
            name = name.strip()
            if kind == "fcgi-program" and self.parser.has_section(f"program:{name}") and name in grouped:
                self.report.add("error", self.where(section), f"{name!r} is both a program and an fcgi-program "
                                "in a group (supervisord refuses this)")
            pg = name if PROGRAM_NAME_RE.fullmatch(name) else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            base, n = pg, 2
            while pg in used:
                pg = f"{base}-{kind.split('-')[0]}" if n == 2 else f"{base}-{n}"
                n += 1
            used.add(pg)
            self.names[section] = pg
            if pg != name:
                self.report.add("changed", self.where(section), f"the program is named {pg!r} in procguard "
                                f"({'letters, digits, _ . - only' if base != name else 'the name was taken'})")

    # ---- [program:x], [fcgi-program:x], [eventlistener:x]
    def convert_program(self, section: str, kind: str, name: str, group: GroupInfo | None) -> str:
        pg = self.names[section]
        opts = self.options(section)
        where = self.where(section)
        exp = Expander(here=self.src.here, where=where, report=self.report, program_name=name,
                       keeps_name=pg == name, group_name=group.name if group else None,
                       env_literals=dict(self.globals.environment))
        table = Table(f"[program.{toml_key(pg)}]")
        sec = self.src.sections[section]
        table.intro.append(f"Imported from {sec.file} [{section}].")
        if sec.comments:
            table.intro.append("Comments from there:")
            table.intro.extend(f"  {c}" for c in sec.comments)

        def bad(key: str, exc: Exception) -> None:
            self.report.add("error", self.where(section, key), str(exc))

        # Keys supervisord reads before expanding per-process values (numprocs decides process_num).
        numprocs: int | None = 1  # None: from the environment, read by procguard at load
        if "numprocs" in opts:
            try:
                if exp.deferred(opts["numprocs"], "numprocs") is not None:
                    numprocs = None
                else:
                    numprocs = sv_int(exp.literal(opts["numprocs"], "numprocs"), 1)
            except _Bad as exc:
                bad("numprocs", exc)
        exp.numprocs = numprocs
        exp.per_process = True
        program_env: dict[str, str] = {}
        merged: dict[str, str] = {}
        if "environment" in opts or self.globals.environment:
            try:
                program_env = self.environment(opts.get("environment", ""), exp, "environment")
            except _Bad as exc:
                bad("environment", exc)
            # supervisord: later keys may use %(ENV_X)s of this program's environment= too.
            exp.env_literals.update(program_env)
            merged = {**self.globals.environment, **program_env}
        stopasgroup: bool | None = None
        redirect = False
        try:
            redirect = sv_bool(opts.get("redirect_stderr", "false"))
        except _Bad:
            pass
        socket_table: Table | None = None
        if kind == "fcgi-program":
            socket_table = self.fcgi_socket(section, pg, opts, exp)
            # Written even when the socket could not be converted: procguard then refuses the program
            # (no [socket.NAME] table) instead of running it without its socket.
            table.set("sockets", [pg], f"[socket.{pg}] above: supervisord's fcgi-program socket"
                      if socket_table is not None else "its socket= could not be converted: see the report")

        for key, raw in opts.items():
            try:
                if key in DEFERRABLE_KEYS and not (kind == "eventlistener" and key == "autostart"):
                    text = exp.deferred(raw, key)
                    if text is not None:
                        table.set(key, text, "from procguard's environment when it loads this file (refused "
                                  "while unset), as supervisord read it from its own")
                        self.report.add("changed", self.where(section, key), f"written as {text!r}: procguard "
                                        "reads the variable from its own environment when it loads the config "
                                        "(set it in the systemd unit's Environment=; procguard refuses the config "
                                        "while it is unset) instead of supervisord's at its start")
                        continue
                if key == "command":
                    command = _one_line(exp.template(raw, key))
                    if kind == "fcgi-program" and socket_table is not None:
                        command, comment = _fcgi_command(command, pg)
                        self.report.add("changed", self.where(section, key), comment)
                        table.set("command", command, *_wrap(comment))
                    else:
                        table.set("command", command)
                    self.server_hint(section, command)
                    self.command_paths(section, command, opts)
                elif key == "process_name":
                    if any(c in raw.strip() for c in " :/"):
                        raise _Bad(f"{raw!r}: space, ':' and '/' are not allowed (supervisord refuses them)")
                    pname = exp.template(raw.strip(), key)
                    table.set(key, pname)
                elif key == "numprocs":
                    table.set(key, sv_int(exp.literal(raw, key), 1))
                elif key == "numprocs_start":
                    table.set(key, sv_int(exp.literal(raw, key), 0))
                elif key == "priority":
                    table.set(key, sv_int(exp.literal(raw, key)))
                elif key == "autostart":
                    autostart = sv_bool(exp.literal(raw, key))
                    if kind != "eventlistener":
                        table.set(key, autostart)
                elif key in ("startsecs", "startretries", "stopwaitsecs"):
                    table.set(key, sv_int(exp.literal(raw, key), 0))
                elif key == "autorestart":
                    table.set(key, sv_autorestart(exp.literal(raw, key)))
                elif key == "exitcodes":
                    table.set(key, sv_exitcodes(exp.literal(raw, key)))
                elif key == "stopsignal":
                    table.set(key, sv_signal(exp.literal(raw, key)))
                elif key == "stopasgroup":
                    stopasgroup = sv_bool(exp.literal(raw, key))
                    table.set(key, stopasgroup)
                elif key == "killasgroup":
                    killasgroup = sv_bool(exp.literal(raw, key))
                    if stopasgroup is None:
                        try:
                            stopasgroup = sv_bool(exp.literal(opts.get("stopasgroup", "false"), "stopasgroup"))
                        except _Bad:
                            stopasgroup = False
                    if stopasgroup and not killasgroup:
                        raise _Bad("stopasgroup=true with killasgroup=false (supervisord refuses this)")
                    table.set(key, killasgroup)
                elif key == "user":
                    user = exp.literal(raw, key).strip()
                    table.set(key, user)
                    if not _user_exists(user):
                        self.report.add("note", self.where(section, key), f"no user {user!r} on this machine: "
                                        "procguard refuses the config until it exists")
                elif key == "redirect_stderr":
                    if kind == "eventlistener" and redirect:
                        raise _Bad("redirect_stderr=true in an eventlistener (supervisord refuses this)")
                    table.set(key, redirect)
                elif key in ("stdout_logfile", "stderr_logfile"):
                    self.logfile(table, section, key, raw, exp, redirect, opts)
                elif key in ("stdout_logfile_maxbytes", "stderr_logfile_maxbytes"):
                    table.set(key, sv_size(exp.literal(raw, key)))
                elif key in ("stdout_logfile_backups", "stderr_logfile_backups"):
                    table.set(key, sv_int(exp.literal(raw, key), 0))
                elif key in ("stdout_syslog", "stderr_syslog"):
                    self.syslog(table, section, key, raw, exp, opts)
                elif key == "environment":
                    pass  # written below, merged with [supervisord] environment
                elif key == "directory":
                    directory = exp.template(raw, key).strip()
                    table.set(key, directory)
                    if not directory.startswith(("/", "{")):
                        self.report.add("changed", self.where(section, key), f"{directory!r} is relative: to "
                                        "supervisord's working directory there, to procguard's (/ under systemd) "
                                        "here; write an absolute path")
                elif key == "umask":
                    table.set(key, f"{sv_octal(exp.literal(raw, key)):03o}")
                elif key in NO_EQUIVALENT:
                    self.drop(section, key, NO_EQUIVALENT[key], raw)
                elif kind == "eventlistener" and key in EVENTLISTENER_KEYS:
                    self.drop(section, key, EVENTLISTENER_KEYS[key], raw)
                elif kind == "fcgi-program" and key in FCGI_KEYS:
                    pass  # the [socket.NAME] table
                else:
                    self.drop(section, key, f"not a supervisord 4 [{kind}:x] key (supervisord ignored it)", raw)
            except _Bad as exc:
                bad(key, exc)

        if "command" not in opts:
            self.report.add("error", where, "no command= (supervisord refuses this)")
        if numprocs is not None and numprocs > 1 and "process_name" not in opts:
            self.report.add("error", self.where(section, "process_name"), "numprocs > 1 needs %(process_num) in "
                            "process_name (supervisord refuses this); procguard names them NAME_00, NAME_01, ...")
        elif numprocs is None and "process_name" not in opts:
            # supervisord refuses numprocs > 1 without %(process_num) in process_name; so does procguard with this.
            table.set("process_name", "{program_name}", "supervisord's default: with numprocs > 1 both refuse it")
        if merged:
            comments = []
            if self.globals.environment:
                inherited = ", ".join(k for k in self.globals.environment if k not in program_env)
                if inherited:
                    comments.append(f"{inherited}: from [supervisord] environment (procguard has no global one)")
            table.set("environment", merged, *comments)
        for key, value in (("umask", self.globals.umask), ("directory", self.globals.directory)):
            if value is not None and key not in opts and self.globals.applies_daemonized:
                table.set(key, value, f"[supervisord] {key}: supervisord's own, inherited by its children")
        self.report_env_templates(section, table)
        if kind == "eventlistener" and "priority" not in opts:
            table.set("priority", -1, "supervisord's default for an eventlistener: started first, stopped last")
        if kind == "eventlistener":
            self.eventlistener(table, section, opts, exp)
        self.explicit_defaults(table, opts)
        parts = []
        if socket_table is not None:
            parts.append(socket_table.render())
        parts.append(table.render())
        return "\n".join(parts)

    def report_env_templates(self, section: str, table: Table) -> None:
        """Say where a written {ENV_X} is read from: procguard's environment at load, not supervisord's."""
        for key, value, _ in table.entries:
            if key in DEFERRABLE_KEYS:
                continue  # reported where it was written
            texts = list(value.values()) if isinstance(value, dict) else [value] if isinstance(value, str) else []
            names = sorted({m.group(1) for t in texts for m in ENV_ANY_TEMPLATE_RE.finditer(t)})
            if not names:
                continue
            split = key == "command" and any(":split}" in t for t in texts)
            self.report.add("changed", self.where(section, key), f"{', '.join(names)}: read from procguard's own "
                            "environment when it loads the config (set in the systemd unit's Environment=), as "
                            "supervisord read it from its own when it started; procguard refuses the config while "
                            "one is unset" + (". {ENV_X:split} is expanded before the command is split, as "
                                              "supervisord did" if split else ""))

    def command_paths(self, section: str, command: str, opts: dict[str, str]) -> None:
        """Report a relative program path: it was found from supervisord's working directory."""
        try:
            argv = shlex.split(command)
        except ValueError:
            return
        if argv and "/" in argv[0] and not argv[0].startswith(("/", "{")):
            where = "the program's directory" if "directory" in opts else "procguard's working directory (/ under systemd)"
            self.report.add("changed", self.where(section, "command"), f"{argv[0]!r} is relative: supervisord looked "
                            f"for it from its own working directory, procguard from {where}; write an absolute path")

    def server_hint(self, section: str, command: str) -> None:
        """Point at procguard's `server` key when the command runs an app server it knows."""
        try:
            argv = shlex.split(command)
        except ValueError:
            return
        names = [os.path.basename(a) for a in argv[:3]]  # "uwsgi ...", "python -m gunicorn ...", "venv/bin/daphne"
        found = next((n for n in APP_SERVERS if n in names), None)
        if found is not None:
            self.report.add("note", self.where(section, "command"), f"procguard knows {found}: `server = "
                            f"\"{found}\"` would set its stop signal, stop timeout and readiness (docs/servers.md); "
                            "not written, so it behaves as under supervisord")

    def environment(self, raw: str, exp: Expander, key: str) -> dict[str, str]:
        """Parse environment= as supervisord does, keeping {ENV_X}/{process_num} templates in the values."""
        pieces = exp.segments(raw, key, templatable=True)
        placeholders: dict[str, str] = {}
        text = ""
        for i, (piece, is_template) in enumerate(pieces):
            if is_template:
                # Word characters, so the lexer keeps a template inside the token it was part of.
                marker = f"pgx{i}xgp"
                placeholders[marker] = piece
                text += marker
            else:
                text += piece
        env = {}
        for k, v in sv_environment(text).items():
            for marker, piece in placeholders.items():
                v = v.replace(marker, piece)
                k = k.replace(marker, piece)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                self.report.add("error", f"{exp.where} {key}", f"variable name {k!r}: procguard takes letters, "
                                "digits and _ only; not written")
                continue
            env[k] = v
        return env

    def logfile(self, table: Table, section: str, key: str, raw: str, exp: Expander, redirect: bool,
                opts: dict[str, str]) -> None:
        stream = key.split("_")[0]
        value = exp.template(raw, key).strip()
        if key == "stderr_logfile" and redirect:
            self.drop(section, key, "redirect_stderr=true: supervisord ignored stderr_logfile (and procguard "
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
            self.report.add("changed", self.where(section, key), "syslog -> \"journal\" (the daemon's output, "
                            "collected by journald under systemd), not the syslog socket")
        elif (fd := _own_fd(value)) is not None:
            self.own_fd_log(table, section, key, value, fd)
        else:
            table.set(key, value)
            if not value.startswith(("/", "{")):
                self.report.add("changed", self.where(section, key), f"{value!r} is relative: supervisord opened it "
                                "relative to its own working directory, procguard relative to its own (/ under "
                                "systemd); write an absolute path")
            elif re.fullmatch(r"/proc/\d+/fd/\d+", value):
                self.report.add("changed", self.where(section, key), f"{value}: a descriptor of that pid. Under "
                                "systemd pid 1 is systemd; in a container where procguard is pid 1, \"inherit\" says "
                                "the same and works on any kind of descriptor")

    def own_fd_log(self, table: Table, section: str, key: str, value: str, fd: int) -> None:
        """/dev/stdout, /dev/fd/1, /proc/self/fd/2, ...: supervisord's own descriptor, opened by path."""
        stream = key.split("_")[0]
        if fd not in (1, 2):
            table.set(key, value, "supervisord's own descriptor: procguard refuses it unless it has one open there")
            self.report.add("error", self.where(section, key), f"{value} is supervisord's own descriptor {fd}; "
                            "procguard has nothing meaningful there: write a file or \"inherit\"")
            return
        theirs = ("stdout", "stderr")[fd - 1]
        table.set(key, "inherit", f"supervisord wrote to its own {theirs} ({value}) by path; procguard passes its "
                  f"own {stream} on (a path fails on systemd's journal socket)")
        if theirs != stream:
            self.report.add("changed", self.where(section, key), f"{value} is supervisord's {theirs}; \"inherit\" is "
                            f"procguard's {stream}. Under systemd both go to the journal; in a container, `docker "
                            "logs` shows this output on the other stream")

    def syslog(self, table: Table, section: str, key: str, raw: str, exp: Expander, opts: dict[str, str]) -> None:
        if not sv_bool(exp.literal(raw, key)):
            self.drop(section, key, "false is supervisord's default; nothing to carry over", raw)
            return
        stream = key.split("_")[0]
        logkey = f"{stream}_logfile"
        if logkey in opts and opts[logkey].strip().lower() not in ("none", "off", "syslog"):
            self.drop(section, key, f"procguard writes {stream} to one place: {logkey} is kept; for journald use "
                      f"{logkey} = \"journal\" instead", raw)
        elif logkey not in table.keys:
            table.set(logkey, "journal", f"{key}=true: procguard writes it to its own output, collected by journald")
            self.report.add("changed", self.where(section, key), f"{logkey} = \"journal\" (the daemon's output, "
                            "collected by journald under systemd) instead of the syslog socket")

    def fcgi_socket(self, section: str, pg: str, opts: dict[str, str], exp: Expander) -> Table | None:
        """[fcgi-program:x] socket=... -> a [socket.NAME] table procguard binds and holds."""
        table = Table(f"[socket.{toml_key(pg)}]")
        table.intro.append(f"[{section}] socket: procguard binds it once and holds it across restarts; the program's "
                           "processes get it as a file descriptor.")
        # supervisord expands only here, program_name and ENV_X in socket (not process_num).
        sock_exp = Expander(here=exp.here, where=exp.where, report=self.report, program_name=exp.program_name,
                            keeps_name=False, env_literals=exp.env_literals)
        try:
            raw = opts.get("socket")
            if not raw:
                raise _Bad("an fcgi-program needs socket= (supervisord refuses this)")
            sock = sock_exp.literal(raw, "socket").strip()
            if sock.startswith("unix://"):
                path = sock[len("unix://"):]
                if not os.path.isabs(path):
                    raise _Bad(f"unix socket path {path!r} is not absolute (supervisord refuses this)")
                table.set("bind", "unix:" + os.path.normpath(path))
                unix = True
            else:
                m = re.fullmatch(r"tcp://([^\s:]+):(\d+)", sock)
                if m is None:
                    raise _Bad(f"bad socket {sock!r}: expected tcp://HOST:PORT or unix:///PATH")
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
                raise _Bad("socket_owner and socket_mode apply to unix sockets only (supervisord refuses them "
                           "with tcp://)")
        except _Bad as exc:
            self.report.add("error", self.where(section, "socket"), str(exc))
            return None
        return table

    def eventlistener(self, table: Table, section: str, opts: dict[str, str], exp: Expander) -> None:
        autostart = True
        try:
            autostart = sv_bool(exp.literal(opts.get("autostart", "true"), "autostart"))
        except _Bad:
            pass
        table.intro += [
            "An [eventlistener:x] in supervisord. procguard has no events: this program gets no event",
            "headers on its stdin, so a listener would read end-of-file and exit. It is not started",
            "automatically; " + _listener_hint(opts.get("command", "")),
        ]
        table.set("autostart", False, f"supervisord: autostart={'true' if autostart else 'false'}; see above")
        self.report.add("changed", self.where(section), "became a program that does not start automatically: "
                        "procguard sends no events. " + _listener_hint(opts.get("command", "")))

    def explicit_defaults(self, table: Table, opts: dict[str, str]) -> None:
        """Write supervisord's defaults where procguard's differ, so nothing changes underfoot."""
        if "startretries" not in opts:
            table.set("startretries", 3, "supervisord's default: FATAL after 3 failed retries in a row. Delete this "
                      "line for procguard's default:", "retry forever with backoff (1s doubling to 60s), so a site "
                      "comes back by itself after a database blip.")
        stopasgroup = False
        try:
            stopasgroup = sv_bool(opts.get("stopasgroup", "false"))
        except _Bad:
            pass
        from_env = next((v for k, v, _ in table.entries if k == "stopasgroup" and isinstance(v, str)), None)
        if from_env is not None and "killasgroup" not in opts:
            table.set("killasgroup", from_env, "supervisord's default: as stopasgroup")
            stopasgroup = True  # killasgroup is written
        if "stopasgroup" not in opts:
            table.set("stopasgroup", False, "supervisord's default: the stop signal goes to the main process only. "
                      "Delete for procguard's", "default (true): the whole process group, so workers stop with "
                      "their master.")
        if "killasgroup" not in opts and not stopasgroup:
            table.set("killasgroup", False, "supervisord's default (as stopasgroup): SIGKILL to the main "
                      "process only. Delete for procguard's", "default (true): the whole group, so no worker is "
                      "orphaned holding the port.")

    # ---- everything else
    def convert_other(self, section: str) -> None:
        kind = section.partition(":")[0]
        opts = self.options(section)
        if section in ("unix_http_server", "inet_http_server"):
            return  # handled with [procguard] control
        if section == "supervisorctl":
            why = "supervisorctl's own settings; procguardctl finds the daemon through -c CONFIG or $PROCGUARD_CONTROL"
        elif kind == "rpcinterface":
            why = "supervisord's XML-RPC plugins; procguard's control protocol is built in (docs/protocol.md)"
        elif kind == "ctlplugin":
            why = "a supervisorctl plugin; procguardctl has no plugins"
        else:
            why = f"[{section}] is not a supervisord 4 section (supervisord ignored it)"
        if not opts:
            self.report.add("dropped", self.where(section), why)
        for key, value in opts.items():
            if section == "supervisorctl" and key in ("username", "password"):
                self.drop(section, key, "not carried over, and never copied: procguardctl needs no password "
                          "(the daemon checks its uid, or its CURVE key on tcp://)")
            else:
                self.drop(section, key, why, value)


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


def _group_table(group: GroupInfo, names: dict[str, str]) -> str:
    """[group:x] programs=a,b priority=N -> [group.x] with the members' procguard names (they keep their tables)."""
    members = [names.get(f"program:{m}") or names.get(f"fcgi-program:{m}") or m for m in group.members]
    table = Table(f"[group.{toml_key(group.name)}]")
    table.intro += _wrap(f"[group:{group.name}] in supervisord. Its processes are named {group.name}:NAME, as "
                         f"in supervisorctl; `procguardctl restart {group.name}:*` restarts them all.")
    table.set("programs", members)
    if group.explicit_priority:
        table.set("priority", group.priority)
    return table.render()


def _own_fd(path: str) -> int | None:
    """The descriptor number when path names the opening process's own descriptor (/dev/stdout, /dev/fd/1)."""
    named = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    if path in named:
        return named[path]
    m = re.fullmatch(r"/dev/fd/(\d+)|/proc/(?:self|thread-self)/fd/(\d+)", path)
    return int(m.group(1) or m.group(2)) if m else None


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


_FD_ZERO_RES = (
    (re.compile(r"(--fd[= ]+)0(?=\s|$)"), r"\g<1>{socket.%s.fd}"),  # daphne, uvicorn: --fd 0
    (re.compile(r"(fd://)0(?=\s|$)"), r"\g<1>{socket.%s.fd}"),  # gunicorn, hypercorn: --bind fd://0
)


def _fcgi_command(command: str, pg: str) -> tuple[str, str]:
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


def _one_line(command: str) -> str:
    """A command continued over several INI lines, on one line when that splits the same (it reads better)."""
    if "\n" not in command:
        return command
    joined = " ".join(part.strip() for part in command.splitlines() if part.strip())
    try:
        return joined if shlex.split(joined) == shlex.split(command) else command
    except ValueError:
        return command


def _wrap(text: str, width: int = 110) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".toml"


def _mode_of(path: str) -> int:
    """Output files keep the read permissions of their source (a config holding secrets stays private)."""
    try:
        return os.stat(path).st_mode & 0o666 | 0o600
    except OSError:
        return 0o644


def _user_exists(user: str) -> bool:
    try:
        if user.isdigit():
            pwd.getpwuid(int(user))
        else:
            pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _is_secret(key: str) -> bool:
    return key in ("password", "username") or "secret" in key or "token" in key


def _short(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= 80 else value[:77] + "..."


# ------------------------------------------------------------------------------------------------ main


def convert(path: str) -> tuple[Output, Report]:
    """Convert one supervisord.conf (and its includes); raises ImportFailed when it cannot be read."""
    report = Report()
    source = read_supervisor_config(path, report)
    return Converter(source, report).convert(), report


def write_output(output: Output, out_dir: str, force: bool, report: Report) -> None:
    """Write the files; refuses (ImportFailed) to overwrite an earlier import unless force."""
    existing = [p for p in output.files if os.path.exists(os.path.join(out_dir, p))]
    conf_d = os.path.join(out_dir, "conf.d")
    others = sorted(
        os.path.join("conf.d", f) for f in (os.listdir(conf_d) if os.path.isdir(conf_d) else [])
        if f.endswith(".toml") and os.path.join("conf.d", f) not in output.files)
    if (existing or others) and not force:
        shown = ", ".join(os.path.join(out_dir, p) for p in (existing + others)[:5])
        raise ImportFailed(f"{out_dir} already holds procguard files ({shown}); choose another --output-dir, or "
                           "pass --force to overwrite them")
    for other in others:
        report.add("note", os.path.join(out_dir, other), "was already there and is included too; remove it if an "
                   "earlier import wrote it")
    os.makedirs(conf_d, exist_ok=True)
    for rel, text in output.files.items():
        path = os.path.join(out_dir, rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, output.modes.get(rel, 0o644))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, output.modes.get(rel, 0o644))
        report.wrote.append(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("supervisor_config", metavar="SUPERVISORD_CONF",
                   help="supervisord's main file, e.g. /etc/supervisor/supervisord.conf (its [include] files are read)")
    p.add_argument("--output-dir", "-o", default="procguard-import", metavar="DIR",
                   help="where procguard.toml, conf.d/*.toml and IMPORT-REPORT.txt go (default: ./procguard-import)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an earlier import in DIR")


def run(ns: argparse.Namespace) -> int:
    """The subcommand: convert, write, print the report to stderr. 0 ok, 1 with errors, 2 cannot read/write."""
    out_dir = os.path.abspath(ns.output_dir)
    try:
        output, report = convert(ns.supervisor_config)
        write_output(output, out_dir, ns.force, report)
    except ImportFailed as exc:
        print(f"procguardctl import-supervisor: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"procguardctl import-supervisor: cannot write into {out_dir}: {exc}", file=sys.stderr)
        return 2
    text = report.render(os.path.abspath(ns.supervisor_config), out_dir)
    report_path = os.path.join(out_dir, "IMPORT-REPORT.txt")
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stderr.write(text)
    sys.stderr.write(f"(this report is also in {report_path})\n")
    return 1 if report.has_errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="procguardctl import-supervisor",
                                description="Convert a supervisord configuration into procguard TOML.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
