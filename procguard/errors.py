"""Exception hierarchy: one root, one subclass per boundary."""

from dataclasses import dataclass


class ProcguardError(Exception):
    """Root of every error procguard raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a config file, with where it is."""

    file: str
    program: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.program is not None:
            where += f": [program.{self.program}]"
            if self.key is not None:
                where += f" {self.key}"
        elif self.key is not None:
            # "procguard.curve.authorized_clients" reads as "[procguard.curve] authorized_clients".
            table, _, key = self.key.rpartition(".")
            where += f": [{table}] {key}" if table else f": {key}"
        return f"{where}: {self.message}"


class ConfigError(ProcguardError):
    """A config was refused; `issues` lists every problem found in one pass."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in issues))


class SpawnError(ProcguardError):
    """A child could not be started; the message says why."""


class ControlError(ProcguardError):
    """A control command failed; `code` is stable, `message` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
