"""Names one table gives another: a program's sockets and depends_on, a group's programs; cycles in depends_on."""

from procguard.config.model import GroupConfig, ProgramConfig
from procguard.config.values import did_you_mean
from procguard.errors import ConfigIssue


def check_references(programs: list[ProgramConfig], program_defined_in: dict[str, str],
                     socket_defined_in: dict[str, str], groups: list[GroupConfig], issues: list[ConfigIssue]) -> None:
    """Every name refers to a table that exists (defined, even if invalid), and depends_on has no cycle."""
    for prog in programs:
        for sock_name in prog.sockets:
            if sock_name not in socket_defined_in:
                issues.append(ConfigIssue(prog.source, prog.name, "sockets", f"no [socket.{sock_name}] table"
                                          + did_you_mean(sock_name, frozenset(socket_defined_in))))
    for g in groups:
        if g.name in program_defined_in:
            issues.append(ConfigIssue(g.source, None, f"group.{g.name}",
                                      f"a group cannot have the name of a program (also in {program_defined_in[g.name]})"))
        for member in g.programs:
            if member not in program_defined_in:
                issues.append(ConfigIssue(g.source, None, f"group.{g.name}.programs", f"no such program {member!r}"
                                          + did_you_mean(member, frozenset(program_defined_in))))
    _check_dependencies(programs, issues)


def _check_dependencies(programs: list[ProgramConfig], issues: list[ConfigIssue]) -> None:
    """Unknown names and cycles in depends_on are config errors."""
    by_name = {p.name: p for p in programs}
    for prog in programs:
        for dep in prog.depends_on:
            if dep == prog.name:
                issues.append(ConfigIssue(prog.source, prog.name, "depends_on", "a program cannot depend on itself"))
            elif dep not in by_name:
                issues.append(ConfigIssue(prog.source, prog.name, "depends_on", f"no such program {dep!r}"
                                          + did_you_mean(dep, frozenset(by_name))))
    # Depth-first search for cycles, reported once each with the path.
    state: dict[str, int] = {}  # 1 visiting, 2 done
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in by_name[name].depends_on:
            if dep not in by_name or dep == name:
                continue
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    issues.append(ConfigIssue(by_name[dep].source, dep, "depends_on",
                                              "dependency cycle: " + " -> ".join(cycle)))
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in by_name:
        if name not in state:
            visit(name, [name])
