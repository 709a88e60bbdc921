"""The conversion of a whole supervisord configuration: which section goes to which file."""

import os
import re

from procguard.config.keys import PROGRAM_NAME_RE
from procguardctl.importer.context import KINDS, Context, Output
from procguardctl.importer.groups import group_table, read_groups
from procguardctl.importer.ini import Source
from procguardctl.importer.programs import convert_program
from procguardctl.importer.report import Report
from procguardctl.importer.supervisord import convert_supervisord
from procguardctl.importer.tomlout import Table


class Converter:
    """One conversion: the source, the findings, and the files to write."""

    def __init__(self, source: Source, report: Report) -> None:
        self.ctx = Context(source, report)

    def convert(self) -> Output:
        """The main file, and one conf.d file per program (a group's members share one)."""
        out = Output()
        sections = self.ctx.parser.sections()
        if "supervisord" not in sections:
            self.ctx.report.add("note", self.ctx.src.main, "no [supervisord] section (supervisord requires one; fine "
                                "when converting a conf.d file on its own)")
        main_table = Table("[procguard]")
        main_lines = convert_supervisord(self.ctx, main_table)
        groups = read_groups(self.ctx)
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
            rendered = convert_program(self.ctx, section, kind, name, group)
            target = _file_name(group.name if group else self.ctx.names[section])
            if group is not None and target not in by_file:
                by_file[target] = [group_table(group, self.ctx.names)]
            by_file.setdefault(target, []).append(rendered)
            file_modes[target] = _mode_of(self.ctx.src.sections[section].file)
        for section in sections:
            kind, _, name = section.partition(":")
            if kind in KINDS and not name.strip():
                self.ctx.report.add("error", self.ctx.where(section), "a section without a name; not converted")
            elif section not in ("supervisord", "include") and kind not in (*KINDS, "group"):
                self.convert_other(section)

        header = [f"# procguard configuration imported from {self.ctx.src.main}",
                  "# by `procguardctl import-supervisor`. IMPORT-REPORT.txt lists every supervisord key that was",
                  "# not carried over or changed meaning.", ""]
        out.files["procguard.toml"] = "\n".join(header) + "\n" + main_table.render() + (
            "\n" + "\n".join(main_lines) + "\n" if main_lines else "")
        out.modes["procguard.toml"] = _mode_of(self.ctx.src.main)
        for target, parts in by_file.items():
            path = os.path.join("conf.d", target)
            out.files[path] = "\n".join(parts)
            out.modes[path] = file_modes[target]
        if not by_file:
            self.ctx.report.add("note", self.ctx.src.main, "no [program:x], [fcgi-program:x] or [eventlistener:x] found")
        self.ctx.report.add("note", self.ctx.src.main, "children start with a clean environment in procguard (PATH, LANG, "
                            "TZ, HOME, USER and the environment table), not supervisord's whole environment: a variable "
                            "a program relied on inheriting belongs in its environment table (or as \"{ENV_NAME}\")")
        return out


    def assign_names(self, grouped: dict[str, str]) -> None:
        used: set[str] = set()
        for section in self.ctx.parser.sections():
            kind, _, name = section.partition(":")
            if kind not in KINDS or not name.strip():
                continue
            name = name.strip()
            if kind == "fcgi-program" and self.ctx.parser.has_section(f"program:{name}") and name in grouped:
                self.ctx.report.add("error", self.ctx.where(section), f"{name!r} is both a program and an fcgi-program "
                                    "in a group (supervisord refuses this)")
            pg = name if PROGRAM_NAME_RE.fullmatch(name) else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            base, n = pg, 2
            while pg in used:
                pg = f"{base}-{kind.split('-')[0]}" if n == 2 else f"{base}-{n}"
                n += 1
            used.add(pg)
            self.ctx.names[section] = pg
            if pg != name:
                self.ctx.report.add("changed", self.ctx.where(section), f"the program is named {pg!r} in procguard "
                                    f"({'letters, digits, _ . - only' if base != name else 'the name was taken'})")


    def convert_other(self, section: str) -> None:
        kind = section.partition(":")[0]
        opts = self.ctx.options(section)
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
            self.ctx.report.add("dropped", self.ctx.where(section), why)
        for key, value in opts.items():
            if section == "supervisorctl" and key in ("username", "password"):
                self.ctx.drop(section, key, "not carried over, and never copied: procguardctl needs no password "
                              "(the daemon checks its uid, or its CURVE key on tcp://)")
            else:
                self.ctx.drop(section, key, why, value)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".toml"


def _mode_of(path: str) -> int:
    """Output files keep the read permissions of their source (a config holding secrets stays private)."""
    try:
        return os.stat(path).st_mode & 0o666 | 0o600
    except OSError:
        return 0o644
