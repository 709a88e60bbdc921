"""What an import tells the operator: findings by level, and the errors that stop or mark a value."""

import os
from dataclasses import dataclass, field


class ImportFailed(Exception):
    """The supervisord configuration could not be read at all (missing file, INI syntax error)."""


class Bad(ValueError):
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
