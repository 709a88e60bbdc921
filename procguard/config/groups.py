"""[group.NAME]: supervisord's [group:NAME], programs controlled together under one name."""

from typing import Any

from procguard.config.tables import named_tables
from procguard.config.keys import GROUP_KEYS, PROGRAM_NAME_RE
from procguard.config.model import GroupConfig
from procguard.config.values import did_you_mean
from procguard.errors import ConfigIssue


def parse_groups(files: list[tuple[str, dict[str, Any]]], issues: list[ConfigIssue]) -> list[GroupConfig]:
    """Resolve every [group.NAME] table of every file; problems are reported as group.NAME.KEY."""
    groups: list[GroupConfig] = []
    member_of: dict[str, str] = {}  # program -> its group: a program belongs to one group at most
    for source, name, table in named_tables("group", files, issues, {}):
        group = _parse_group(name, table, source, member_of, issues)
        if group is not None:
            groups.append(group)
    return groups


def _parse_group(name: str, table: object, source: str, member_of: dict[str, str],
                 issues: list[ConfigIssue]) -> GroupConfig | None:
    n_before = len(issues)

    def bad(key: str | None, message: str) -> None:
        issues.append(ConfigIssue(source, None, f"group.{name}" + (f".{key}" if key else ""), message))

    if not isinstance(table, dict):
        bad(None, 'expected a table like { programs = ["web", "worker"] }')
        return None
    if not PROGRAM_NAME_RE.fullmatch(name):
        bad(None, "group names may use only letters, digits, '_', '.' and '-'")
    for key in sorted(set(table) - GROUP_KEYS):
        bad(key, "unknown key" + did_you_mean(key, GROUP_KEYS))
    members: tuple[str, ...] = ()
    if "programs" not in table:
        bad("programs", 'is required: a list of program names like ["web", "worker"]')
    else:
        raw = table["programs"]
        if not isinstance(raw, list) or not raw or not all(isinstance(m, str) and m for m in raw):
            bad("programs", f'expected a non-empty list of program names like ["web", "worker"], got {raw!r}')
        else:
            members = tuple(dict.fromkeys(raw))
    for member in members:
        if member in member_of:
            bad("programs", f"program {member!r} is already in [group.{member_of[member]}]; "
                            "a program belongs to one group at most")
        else:
            member_of[member] = name
    values: dict[str, Any] = {}  # only the keys given: the dataclass holds the defaults
    if "priority" in table:
        priority = values["priority"] = table["priority"]
        if not isinstance(priority, int) or isinstance(priority, bool):
            bad("priority", f"expected an integer, got {priority!r}")
    if len(issues) != n_before:
        return None
    return GroupConfig(name=name, source=source, programs=members, **values)
