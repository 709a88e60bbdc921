"""Write TOML: keys, strings that read back unchanged, tables with comments."""

import re
from dataclasses import dataclass, field

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def toml_key(key: str) -> str:
    return key if _BARE_KEY_RE.fullmatch(key) else toml_str(key)


def toml_str(value: str) -> str:
    """A TOML string: a literal '...' when that reads better (quotes inside, as in shell commands)."""
    if ('"' in value or "\\" in value) and "'" not in value and not _CONTROL_RE.search(value):
        return f"'{value}'"
    out = []
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif _CONTROL_RE.match(ch):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


TomlValue = str | int | bool | list[int] | list[str] | dict[str, str]


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_str(v) if isinstance(v, str) else str(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_str(v)}" for k, v in value.items()) + " }"


@dataclass(slots=True)
class Table:
    """A TOML table being written: keys in order, each with comment lines above it."""

    header: str
    intro: list[str] = field(default_factory=list)  # comment lines above the header
    entries: list[tuple[str, TomlValue, list[str]]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def set(self, key: str, value: TomlValue, *comments: str) -> None:
        self.entries.append((key, value, list(comments)))
        self.keys.add(key)

    def render(self) -> str:
        lines = [f"# {c}" if c else "#" for c in self.intro]
        lines.append(self.header)
        subtables: list[str] = []
        for key, value, comments in self.entries:
            if isinstance(value, dict) and len(toml_value(value)) > 90:
                # A long environment reads better as its own table, after the program's keys.
                sub = [f"# {c}" for c in comments] + [f"{self.header[:-1]}.{toml_key(key)}]"]
                sub += [f"{toml_key(k)} = {toml_str(v)}" for k, v in value.items()]
                subtables.append("\n".join(sub))
                continue
            lines.extend(f"# {c}" for c in comments)
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
        return "\n".join(lines + ([""] + subtables if subtables else [])) + "\n"


def wrap(text: str, width: int = 110) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines
