"""supervisord's %(name)s expansions, turned into procguard templates where procguard has them."""

import os
import platform
import re
from dataclasses import dataclass, field

from procguard.config.keys import ENV_RE, TEMPLATE_ANY_SPEC_RE
from procguardctl.importer.datatypes import sv_environment
from procguardctl.importer.report import Bad, Report

# A %-expansion as Python's % operator reads it (supervisord expands with `value % expansions`).
EXPANSION_RE = re.compile(r"%(?:(?P<pct>%)|\((?P<name>[^)]*)\)(?P<flags>[#0\- +]*)(?P<width>\d*)"
                          r"(?P<precision>\.\d+)?(?P<type>[diouxXeEfFgGcrsa]))")


@dataclass(slots=True)
class Expander:
    """supervisord's %(name)s expansions, turned into procguard templates where procguard has them.

    A templatable key (command, directory, process_name, environment values, log paths) gets
    `{program_name}`, `{process_num:02d}` and `{ENV_X}`; any other key gets the value supervisord would
    have computed, resolved now (and reported when it came from this machine's environment).
    """

    here: str
    where: str
    report: Report
    program_name: str | None = None
    keeps_name: bool = True  # the procguard name is supervisord's, so {program_name} means the same
    group_name: str | None = None  # a [group:x] the program belongs to
    numprocs: int | None = None
    per_process: bool = False  # process_num exists (supervisord's per-process keys)
    env_literals: dict[str, str] = field(default_factory=dict)  # ENV_X from the config's own environment=

    def template(self, value: str, key: str) -> str:
        return "".join(text for text, _ in self.segments(value, key, templatable=True))

    def literal(self, value: str, key: str) -> str:
        return "".join(text for text, _ in self.segments(value, key, templatable=False))

    def deferred(self, value: str, key: str) -> str | None:
        """value with each %(ENV_X)s not known here as {ENV_X}, for procguard to read at load; None if none.

        Used for keys procguard reads {ENV_X} in (every string-valued program key): the variable is read
        from procguard's environment when it loads the config, as supervisord read it from its own when
        it started, and an unset one refuses the config instead of leaving a default.
        """
        pieces = self.segments(value, key, templatable=False, defer_env=True)
        if not any(is_template and not m.group(2) for text, is_template in pieces for m in ENV_RE.finditer(text)):
            return None
        return "".join(text for text, _ in pieces).strip()

    def segments(self, value: str, key: str, templatable: bool, defer_env: bool = False) -> list[tuple[str, bool]]:
        """Split value into (text, is_template) pieces; raises Bad where supervisord would refuse."""
        out: list[tuple[str, bool]] = []
        pos = 0
        while True:
            i = value.find("%", pos)
            if i < 0:
                out.append((value[pos:], False))
                break
            out.append((value[pos:i], False))
            m = EXPANSION_RE.match(value, i)
            if m is None:
                raise Bad(f"{value!r}: a lone '%' (supervisord refuses it; write %% for a literal %)")
            pos = m.end()
            if m.group("pct"):
                out.append(("%", False))
                continue
            out.append(self._one(m, key, templatable, defer_env))
        self._check_literal_braces(out, key)
        return [(t, tpl) for t, tpl in out if t]

    def _one(self, m: "re.Match[str]", key: str, templatable: bool, defer_env: bool) -> tuple[str, bool]:
        name = m.group("name")
        spec = "%" + m.group(0)[m.end("name") + 1 - m.start():]  # "%02d", "%s"
        plain_s = spec == "%s"

        def fmt(v: object) -> str:
            try:
                return spec % (v,)
            except (TypeError, ValueError) as exc:
                raise Bad(f"%({name}){spec[1:]}: {exc}") from None

        if name == "here":
            return fmt(self.here), False
        if name == "host_node_name":
            node = platform.node()
            self.report.add("changed", f"{self.where} {key}", f"%(host_node_name)s has no procguard equivalent: "
                            f"written as this machine's name {node!r}")
            return fmt(node), False
        if name in ("program_name", "group_name") and self.program_name is not None:
            if name == "group_name" and self.group_name is not None:
                return fmt(self.group_name), False  # procguard's {group_name} is the program name
            if templatable and plain_s and self.keeps_name:
                return "{" + name + "}", True
            return fmt(self.program_name), False
        if name == "process_num" and self.per_process:
            if not templatable:
                raise Bad(f"%(process_num) in {key}: procguard has no per-process value for this key")
            return _process_num_template(m), True
        if name == "numprocs" and self.per_process:
            if self.numprocs is None:
                raise Bad("%(numprocs)d: numprocs comes from the environment, so it is not known at import")
            return fmt(self.numprocs), False
        if name.startswith("ENV_"):
            var = name[4:]
            if var in self.env_literals:
                text = fmt(self.env_literals[var])
                return text, bool(TEMPLATE_ANY_SPEC_RE.search(text))
            if templatable and plain_s:
                # In a command supervisord expanded before splitting: {ENV_X:split} does that at load.
                return "{" + name + (":split" if key == "command" else "") + "}", True
            if defer_env and plain_s:
                return "{" + name + "}", True
            if var not in os.environ:
                raise Bad(f"%({name})s: this machine's environment has no {var} (supervisord would refuse too)")
            self.report.add("changed", f"{self.where} {key}", f"%({name})s is not a template in procguard's "
                            f"{key}: written as its value here now, {os.environ[var]!r}")
            return fmt(os.environ[var]), False
        raise Bad(f"%({name}){spec[1:]}: supervisord has no such expansion here")

    def environment(self, raw: str, key: str) -> dict[str, str]:
        """Parse environment= as supervisord does, keeping {ENV_X}/{process_num} templates in the values."""
        pieces = self.segments(raw, key, templatable=True)
        placeholders: dict[str, str] = {}
        text = ""
        for i, (piece, is_template) in enumerate(pieces):
            if is_template:
                # Word characters, so the lexer keeps a template inside the token it was part of.
                marker = f"pgx{i}xgp"
                placeholders[marker] = piece
                text += marker
            else:
                text += piece
        env = {}
        for k, v in sv_environment(text).items():
            for marker, piece in placeholders.items():
                v = v.replace(marker, piece)
                k = k.replace(marker, piece)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                self.report.add("error", f"{self.where} {key}", f"variable name {k!r}: procguard takes letters, "
                                "digits and _ only; not written")
                continue
            env[k] = v
        return env

    def _check_literal_braces(self, pieces: list[tuple[str, bool]], key: str) -> None:
        for text, is_template in pieces:
            if not is_template and TEMPLATE_ANY_SPEC_RE.search(text):
                self.report.add("error", f"{self.where} {key}", f"{text!r} contains a procguard template "
                                "({...}) that procguard would expand; rewrite it by hand")


def _process_num_template(m: "re.Match[str]") -> str:
    """%(process_num)02d -> {process_num:02d}: printf flags and width as a format spec."""
    flags, width = m.group("flags"), m.group("width")
    spec = ""
    if "-" in flags:
        spec += "<"
    elif "0" in flags and width:
        spec += "0"
    if "+" in flags:
        spec += "+"
    elif " " in flags:
        spec += " "
    spec += width
    if m.group("type") not in "diusr":
        raise Bad(f"%(process_num){m.group(0)[m.end('name') + 1 - m.start():]}: "
                  "procguard formats process_num as a decimal only")
    return "{process_num:" + spec + "d}" if spec else "{process_num}"
