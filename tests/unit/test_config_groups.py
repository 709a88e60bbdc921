"""[group.NAME]: supervisord's [group:x] in procguard's config, and the daemon's log ring (issue #14)."""

from pathlib import Path

from procguard import daemon
from procguard.config.diff import diff_groups
from procguard.config.load import load_config
from procguard.config.model import GroupConfig
from procguard.log import LogRing
from tests.unit.test_config import ENV, HEADER, load, main_file, refusal, write

PROGRAMS = """
[program.web]
command = "/bin/sleep 1"
priority = 1
[program.worker]
command = "/bin/sleep 2"
numprocs = 2
priority = 2
[program.beat]
command = "/bin/sleep 3"
priority = 500
"""


def test_group_names_its_processes_like_supervisord_and_orders_by_its_priority(tmp_path: Path) -> None:
    cfg = load(tmp_path, HEADER + PROGRAMS + '[group.app]\nprograms = ["worker", "web"]\npriority = 900\n')
    assert cfg.groups == (GroupConfig(name="app", source=str(main_file(tmp_path)), programs=("worker", "web"),
                                      priority=900),)
    # The group's priority comes first (beat, 500, before the group at 900), then the program's.
    assert [p.name for p in cfg.programs] == ["beat", "web", "worker"]
    web, worker = cfg.program("web"), cfg.program("worker")
    assert web is not None and worker is not None
    assert [p.name for p in web.processes] == ["app:web"]
    assert [p.name for p in worker.processes] == ["app:worker_00", "app:worker_01"]
    env = dict(worker.processes[1].environment)
    assert (env["SUPERVISOR_GROUP_NAME"], env["SUPERVISOR_PROCESS_NAME"], env["PROCGUARD_PROCESS"]) == (
        "app", "worker_01", "app:worker_01")
    assert web.process_group == "app" and cfg.program("beat").process_group == "beat"  # type: ignore[union-attr]


def test_group_mistakes_name_the_file_the_group_and_the_key(tmp_path: Path) -> None:
    inc = write(tmp_path / "conf.d" / "more.toml", '[group.other]\nprograms = ["web"]\n')
    lines = refusal(tmp_path, '[procguard]\nlogdir = "logs"\ninclude = ["conf.d/*.toml"]\n' + PROGRAMS + """
[group.app]
programs = ["web", "ghost"]
[group.beat]
programs = ["beat"]
[group.empty]
programs = []
[group.bad]
programs = ["worker"]
priority = "high"
prio = 3
""")
    main = main_file(tmp_path)
    assert lines == [
        f"{main}: [group.empty] programs: expected a non-empty list of program names like [\"web\", \"worker\"], "
        "got []",
        f"{main}: [group.bad] prio: unknown key (did you mean 'priority'?)",
        f"{main}: [group.bad] priority: expected an integer, got 'high'",
        f"{inc}: [group.other] programs: program 'web' is already in [group.app]; a program belongs to one "
        "group at most",
        f"{main}: [group.app] programs: no such program 'ghost'",
        f"{main}: [group] beat: a group cannot have the name of a program (also in {main})",
    ], lines


def test_check_shows_groups(tmp_path: Path, capsys: object) -> None:
    write(main_file(tmp_path), HEADER + PROGRAMS + '[group.app]\nprograms = ["web", "worker"]\npriority = 7\n')
    assert daemon.main(["-c", str(main_file(tmp_path)), "--check"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert f"[group.app]  ({main_file(tmp_path)})\n  programs = web, worker\n  priority = 7\n" in out
    assert "  group = app\n  process app:worker_00\n" in out


def test_reread_diff_is_by_process_group(tmp_path: Path) -> None:
    old = load(tmp_path, HEADER + PROGRAMS + '[group.app]\nprograms = ["web", "worker"]\n')
    same = load_config(main_file(tmp_path), environ=ENV)
    assert diff_groups(old, same) == diff_groups(same, same)
    assert diff_groups(old, same).added == diff_groups(old, same).changed == diff_groups(old, same).removed == ()
    # A member changes: its group is changed; beat leaves; a new ungrouped program is available.
    new = load(tmp_path, HEADER + PROGRAMS.replace("/bin/sleep 2", "/bin/sleep 22").replace(
        '[program.beat]\ncommand = "/bin/sleep 3"\npriority = 500\n', '[program.cron]\ncommand = "/bin/true"\n')
        + '[group.app]\nprograms = ["web", "worker"]\n')
    diff = diff_groups(old, new)
    assert (diff.added, diff.changed, diff.removed) == (("cron",), ("app",), ("beat",))
    # A group's priority or membership counts as a change of the group.
    moved = load(tmp_path, HEADER + PROGRAMS + '[group.app]\nprograms = ["web"]\n')
    diff = diff_groups(old, moved)
    assert (diff.added, diff.changed, diff.removed) == (("worker",), ("app",), ())


def test_log_ring_keeps_the_last_lines_only() -> None:
    ring = LogRing(lines=3)
    got: list[tuple[bytes, int]] = []
    for i in range(5):
        ring.append(f"<6>event_{i} n={i}")
    assert ring.tail() == b"event_2 n=2\nevent_3 n=3\nevent_4 n=4\n"  # journald's priority prefix dropped
    assert ring.offset == 5 * len(b"event_0 n=0\n")
    ring.followers.add(lambda data, offset: got.append((data, offset)))
    ring.append("event_5")  # no loop bound: followers are fed only from the event loop
    assert got == []
