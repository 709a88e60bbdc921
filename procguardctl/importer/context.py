"""One conversion's shared state: the supervisord source, the report, program names, [supervisord]'s globals."""

from dataclasses import dataclass, field

from procguardctl.importer.ini import Source
from procguardctl.importer.report import Report

KINDS = ("program", "fcgi-program", "eventlistener")


@dataclass(slots=True)
class Globals:
    """What [supervisord] passes down to every program."""

    environment: dict[str, str] = field(default_factory=dict)
    umask: str | None = None
    directory: str | None = None
    applies_daemonized: bool = True  # nodaemon=false: supervisord set its umask/directory (children inherit)


@dataclass(slots=True)
class Output:
    """The files to write, by path relative to the output directory, with their modes."""

    files: dict[str, str] = field(default_factory=dict)  # path relative to the output dir -> text
    modes: dict[str, int] = field(default_factory=dict)


class Context:
    """One conversion: the source, the findings, and the names given so far."""

    def __init__(self, source: Source, report: Report) -> None:
        self.src = source
        self.report = report
        self.parser = source.parser
        self.names: dict[str, str] = {}  # section -> procguard program name
        self.globals = Globals()

    def where(self, section: str, key: str | None = None) -> str:
        sec = self.src.sections.get(section)
        loc = f"{sec.file if sec else self.src.main} [{section}]"
        return f"{loc} {key}" if key else loc

    def options(self, section: str) -> dict[str, str]:
        return dict(self.parser.items(section))

    def drop(self, section: str, key: str, why: str, value: str | None = None) -> None:
        shown = "" if value is None or _is_secret(key) else f" = {_short(value)}"
        self.report.add("dropped", self.where(section, key) + shown, why)



def _is_secret(key: str) -> bool:
    return key in ("password", "username") or "secret" in key or "token" in key


def _short(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= 80 else value[:77] + "..."
