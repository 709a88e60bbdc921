"""`procguardctl import-supervisor`: convert, write the files, print the report."""

import argparse
import os
import sys

from procguardctl.importer.context import Output
from procguardctl.importer.converter import Converter
from procguardctl.importer.ini import read_supervisor_config
from procguardctl.importer.report import ImportFailed, Report


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

