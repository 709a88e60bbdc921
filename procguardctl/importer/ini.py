"""Read supervisord's INI as supervisord 4 does: comments, includes, %(here)s per file."""

import configparser
import glob
import os
import re
from dataclasses import dataclass, field

from procguardctl.importer.expansions import Expander
from procguardctl.importer.report import Bad, ImportFailed, Report


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
    source = Source(main=main, here=here, sections={},
                    parser=configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False))
    if not os.path.isfile(main):
        raise ImportFailed(f"{main}: no such file")
    _read_one(source, main, report)
    if source.parser.has_section("include"):
        _read_includes(source, report)
    if source.parser.defaults():
        report.add("note", f"{main} [DEFAULT]", "its keys apply to every section, as in supervisord; each "
                   "converted table carries them explicitly")
    return source


def _read_one(source: Source, filename: str, report: Report) -> None:
    """Merge one file into the parser, noting where each new section and its comments came from."""
    parser, sections = source.parser, source.sections
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


def _read_includes(source: Source, report: Report) -> None:
    """The main file's [include] files= globs, relative to it; an [include] in an included file is ignored."""
    parser = source.parser
    where = f"{source.main} [include]"
    if not parser.has_option("include", "files"):
        report.add("error", where, "has no files= setting (supervisord refuses this)")
        return
    files = parser.get("include", "files")
    try:
        files = Expander(here=source.here, where=where, report=report).literal(files, "files")
    except Bad as exc:
        report.add("error", f"{where} files", str(exc))
        files = ""
    for pattern in files.split():
        full = os.path.join(source.here, pattern)
        matches = sorted(glob.glob(full))
        if not matches:
            report.add("note", f"{where} files", f"{pattern!r} matches no file (supervisord warns and goes on)")
        for filename in matches:
            in_main_include = parser.get("include", "files")
            _read_one(source, filename, report)
            if parser.get("include", "files") != in_main_include:
                # supervisord reads only the main file's [include]; an included one merges into it
                # and is ignored.
                report.add("note", f"{filename} [include]", "an [include] inside an included file is "
                           "ignored by supervisord 4, so it is ignored here too")
                parser.set("include", "files", in_main_include)
