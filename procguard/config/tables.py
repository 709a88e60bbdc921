"""[KIND.NAME] tables: each NAME defined once across the files, each problem reported as KIND.NAME.KEY."""

from collections.abc import Iterator
from typing import Any

from procguard.config.values import did_you_mean
from procguard.errors import ConfigIssue


def named_tables(kind: str, files: list[tuple[str, dict[str, Any]]], issues: list[ConfigIssue],
                 defined_in: dict[str, str]) -> Iterator[tuple[str, str, object]]:
    """(source, NAME, table) of each [KIND.NAME] in every file; a NAME defined again is reported, not yielded.

    defined_in collects the file each NAME is defined in (valid or not), for names that refer to it.
    """
    for source, content in files:
        tables = content.get(kind, {})
        if not isinstance(tables, dict):
            issues.append(ConfigIssue(source, None, kind, f"expected [{kind}.NAME] tables"))
            continue
        for name, table in tables.items():
            if name in defined_in and kind == "program":
                issues.append(ConfigIssue(source, name, None, f"program defined twice: also in {defined_in[name]}"))
            elif name in defined_in:
                issues.append(ConfigIssue(source, None, f"{kind}.{name}", f"defined twice: also in {defined_in[name]}"))
            else:
                defined_in[name] = source
                yield source, name, table



class TableIssues:
    """The problems of one [KIND.NAME] table, each named KIND.NAME.KEY."""

    def __init__(self, kind: str, name: str, source: str, issues: list[ConfigIssue]) -> None:
        self.where, self.source, self.issues = f"{kind}.{name}", source, issues
        self.n_before = len(issues)

    def bad(self, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.source, None, f"{self.where}.{key}", message))

    def check(self, table: object, known: frozenset[str]) -> dict[str, Any] | None:
        """The table, its unknown keys reported; None (reported) when it is not a table."""
        if not isinstance(table, dict):
            self.issues.append(ConfigIssue(self.source, None, self.where, "expected a table"))
            return None
        for key in sorted(set(table) - known):
            self.bad(key, "unknown key" + did_you_mean(key, known))
        return table

    @property
    def is_valid(self) -> bool:
        """No problem was reported since this table was begun."""
        return len(self.issues) == self.n_before
