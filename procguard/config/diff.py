"""What a reload changes: programs (and process groups) added, changed or removed between two configs."""

from procguard.config.model import Config, ConfigDiff, ProgramConfig


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs program by program (the `source` file does not count)."""
    old_by_name = {p.name: p for p in old.programs}
    new_by_name = {p.name: p for p in new.programs}
    added = tuple(n for n in new_by_name if n not in old_by_name)
    removed = tuple(n for n in old_by_name if n not in new_by_name)
    old_socks = {s.name: s for s in old.sockets}
    new_socks = {s.name: s for s in new.sockets}

    def sockets_changed(prog: ProgramConfig) -> bool:
        return any(old_socks.get(n) != new_socks.get(n) for n in prog.sockets)

    changed = tuple(n for n in new_by_name if n in old_by_name
                    and (new_by_name[n] != old_by_name[n] or sockets_changed(new_by_name[n])))
    return ConfigDiff(added=added, changed=changed, removed=removed)


def process_groups(config: Config) -> dict[str, tuple[str, ...]]:
    """Each process group (a [group.NAME], or an ungrouped program) and its programs, in config order."""
    out: dict[str, tuple[str, ...]] = {}
    for prog in config.programs:
        out[prog.process_group] = (*out.get(prog.process_group, ()), prog.name)
    return out


def diff_groups(old: Config, new: Config) -> ConfigDiff:
    """diff_configs by process group, as supervisord's reread reports it (names are group names).

    A group is changed when its programs are not the same ones, or one of them changed.
    """
    progs = diff_configs(old, new)
    touched = {*progs.added, *progs.changed, *progs.removed}
    before, after = process_groups(old), process_groups(new)
    return ConfigDiff(
        added=tuple(g for g in after if g not in before),
        changed=tuple(g for g in after if g in before
                      and (set(after[g]) != set(before[g]) or touched & {*after[g], *before[g]})),
        removed=tuple(g for g in before if g not in after),
    )
