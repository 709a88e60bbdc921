"""[group:x] -> [group.x]: the members keep their own tables, under their procguard names."""

from dataclasses import dataclass

from procguard.config.keys import PROGRAM_NAME_RE
from procguardctl.importer.context import Context
from procguardctl.importer.datatypes import sv_int
from procguardctl.importer.expansions import Expander
from procguardctl.importer.report import Bad
from procguardctl.importer.tomlout import Table, toml_key, wrap


@dataclass(slots=True)
class GroupInfo:
    name: str
    priority: int
    explicit_priority: bool
    members: list[str]



def read_groups(ctx: Context) -> dict[str, GroupInfo]:
    groups: dict[str, GroupInfo] = {}
    seen: dict[str, str] = {}
    for section in ctx.parser.sections():
        if not section.startswith("group:"):
            continue
        name = section.split(":", 1)[1].strip()
        opts = ctx.options(section)
        members = [m.strip() for m in opts.get("programs", "").split(",") if m.strip()]
        if not members:
            ctx.report.add("error", ctx.where(section, "programs"), "no programs= (supervisord refuses this)")
        priority, explicit = 999, "priority" in opts
        if explicit:
            try:
                exp = Expander(here=ctx.src.here, where=ctx.where(section), report=ctx.report)
                priority = sv_int(exp.literal(opts["priority"], "priority"))
            except Bad as exc:
                ctx.report.add("error", ctx.where(section, "priority"), str(exc))
        kept = []
        for member in members:
            if not (ctx.parser.has_section(f"program:{member}") or ctx.parser.has_section(f"fcgi-program:{member}")):
                ctx.report.add("error", ctx.where(section, "programs"), f"names unknown program {member!r} "
                               "(supervisord refuses this)")
            elif member in seen:
                ctx.report.add("error", ctx.where(section, "programs"), f"{member!r} is also in [group:"
                               f"{seen[member]}]; it is converted once, with that group")
            else:
                seen[member] = name
                kept.append(member)
        for key in sorted(set(opts) - {"programs", "priority"}):
            ctx.drop(section, key, "not a supervisord 4 [group:x] key", opts[key])
        if not PROGRAM_NAME_RE.fullmatch(name):
            ctx.report.add("error", ctx.where(section), f"group name {name!r}: procguard takes letters, digits, "
                           "_ . - only; not converted (its programs are converted on their own)")
            continue
        groups[name] = GroupInfo(name, priority, explicit, kept)
        ctx.report.add("note", ctx.where(section), f"kept as [group.{name}] (programs {', '.join(kept)}): "
                       f"processes are named {name}:NAME in status, and {name}:* names the group, as in "
                       "supervisorctl")
    return groups


def group_table(group: GroupInfo, names: dict[str, str]) -> str:
    """[group:x] programs=a,b priority=N -> [group.x] with the members' procguard names (they keep their tables)."""
    members = [names.get(f"program:{m}") or names.get(f"fcgi-program:{m}") or m for m in group.members]
    table = Table(f"[group.{toml_key(group.name)}]")
    table.intro += wrap(f"[group:{group.name}] in supervisord. Its processes are named {group.name}:NAME, as "
                        f"in supervisorctl; `procguardctl restart {group.name}:*` restarts them all.")
    table.set("programs", members)
    if group.explicit_priority:
        table.set("priority", group.priority)
    return table.render()
