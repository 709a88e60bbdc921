"""Templates in config values: {here}, {program_name}, {process_num:02d}, {socket.NAME.fd} and {ENV_X}.

Per-process keys are expanded per process (`expand`); {ENV_X} in any other string-valued key is the
daemon's variable, read when the config loads (`expand_env`, `parse_expanded`).
"""

import re
from typing import Any

from procguard.config.keys import ENV_RE, TEMPLATE_RE
from procguard.config.values import Bad


def expand(template: str, variables: dict[str, object], environ: dict[str, str]) -> str:
    """Expand {here}, {program_name}, {process_num[:02d]} and {ENV_X}; other braces stay as written.

    Raises Bad naming an undefined ENV_ variable.
    """
    if "{" not in template:  # most values of 1000 programs: no closure, no regex pass (issue #19)
        return template

    def repl(m: re.Match[str]) -> str:
        name, spec = m.group(1), m.group(2)
        if name.startswith("ENV_"):
            var = name[4:]
            if var not in environ:
                raise Bad(f"{{{name}}}: the daemon's environment has no {var}")
            return environ[var]
        if name.startswith("socket.") and name not in variables:
            raise Bad(f"{{{name}}}: socket {name[7:-3]!r} is not in this program's sockets")
        value = variables[name]
        if spec:
            if not isinstance(value, int):
                raise Bad(f"{{{name}{spec}}}: a number format needs a number")
            return format(value, spec[1:])
        return str(value)

    return TEMPLATE_RE.sub(repl, template)


# supervisord's booleans, for a value that came from the environment (%(ENV_X)s was read this way there).
_SV_BOOLEANS = {"yes": True, "on": True, "1": True, "no": False, "off": False, "0": False}


def expand_env(value: str, environ: dict[str, str], split: bool = False) -> str:
    """Replace {ENV_X} (with split: only {ENV_X:split}) by the daemon's variable X; raises Bad if unset."""

    def repl(m: re.Match[str]) -> str:
        if split and not m.group(2):
            return m.group(0)  # expanded in each argument after the split, as ever
        if m.group(1) not in environ:
            raise Bad(f"{m.group(0)}: the daemon's environment has no {m.group(1)}")
        return environ[m.group(1)]

    return ENV_RE.sub(repl, value)


def parse_expanded(parser: Any, template: str, text: str, octal: bool) -> Any:
    """Parse a value that came from the environment: as text, else as supervisord reads it (an int, a boolean).

    octal: the text is octal digits (umask), so it is never read as a decimal integer.
    """
    try:
        return parser(text)
    except Bad as exc:
        error = exc
    candidates: list[object] = []
    if not octal and re.fullmatch(r"\s*[+-]?\d+\s*", text):
        candidates.append(int(text))
    if text.strip().lower() in _SV_BOOLEANS:
        candidates.append(_SV_BOOLEANS[text.strip().lower()])
    for i, candidate in enumerate(candidates):
        try:
            return parser(candidate)
        except Bad as exc:
            if i == 0 and type(candidate) is int:
                error = exc  # "expected an integer >= 1, got 0" says more than "got '0'"
    raise Bad(f"{template}: {error}")



def expand_here(value: object, here: str, environ: dict[str, str]) -> str:
    """A [procguard] value: {here} and {ENV_X} (a program's variables are empty there); raises Bad."""
    if not isinstance(value, str):
        raise Bad(f"expected a string, got {value!r}")
    return expand(value, {"here": here, "program_name": "", "group_name": "", "process_num": 0}, environ)
