"""Read the keys of one [program.NAME] table, collecting every problem as a ConfigIssue."""

from typing import Any

from procguard.config.keys import ENV_RE, PER_PROCESS_KEYS
from procguard.config.templates import expand_env, parse_expanded
from procguard.config.values import Bad
from procguard.errors import ConfigIssue


class ProgramReader:
    """One [program.NAME] table: each key parsed once, each problem reported once, as program NAME, key KEY."""

    def __init__(self, name: str, table: dict[str, Any], source: str, issues: list[ConfigIssue],
                 environ: dict[str, str] | None = None) -> None:
        self.name, self.table, self.source, self.issues = name, table, source, issues
        self.environ = environ if environ is not None else {}

    def err(self, key: str | None, message: str) -> None:
        issue = ConfigIssue(self.source, self.name, key, message)
        if issue not in self.issues:  # a template shared by numprocs processes fails once, not N times
            self.issues.append(issue)

    def given(self, key: str, parser: Any) -> dict[str, Any]:
        """{key: parsed value} when the table sets key and it parses, else {} (the dataclass default applies).

        {ENV_X} in a string value is the daemon's variable (issue #14), in every key.
        """
        if key not in self.table:
            return {}
        try:
            return {key: self._parse(key, parser)}
        except Bad as exc:
            self.err(key, str(exc))
            return {}

    def _parse(self, key: str, parser: Any) -> Any:
        value = self.table[key]
        if isinstance(value, str) and "{ENV_" in value:
            if key != "command" and any(m.group(2) for m in ENV_RE.finditer(value)):
                raise Bad("{ENV_X:split} is for a command string only")
            if key == "command":  # {ENV_X:split}: expanded before the split, as supervisord
                return parser(expand_env(value, self.environ, split=True))
            if key not in PER_PROCESS_KEYS:
                return parse_expanded(parser, value, expand_env(value, self.environ), key == "umask")
        return parser(value)
