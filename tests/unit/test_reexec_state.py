"""The re-exec state: versioned JSON; a newer image reads an older image's state (issue #19)."""

import json
from pathlib import Path

import pytest

from procguard.upgrade.state import (
    FORMAT, SavedOutcome, SavedProcess, SavedStream, Snapshot, StateError, dumps, loads,
)

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "reexec-state-v1.json"


def test_a_state_saved_by_format_1_loads_with_every_field_and_descriptor():
    snap = loads(FIXTURE.read_bytes())
    assert snap.format == FORMAT and snap.version == "0.1.0" and snap.pid == 4312
    assert snap.sockets == {"web": 10}
    web, flaky = snap.processes
    assert (web.state, web.pid, web.leader_alive, web.spawned_at, web.restarts, web.generation) == \
        ("RUNNING", 4400, True, 1200.5, 2, 3)
    assert (web.health, web.status_text, web.notify_fd, web.notify_name) == ("healthy", "serving", 11,
                                                                             "@procguard/4312/5")
    assert web.streams[0] == SavedStream(name="stdout", tail=b"serving\n", offset=8, dropped=0, pipe_fds=(12,))
    assert web.streams[1].pipe_fds == () and web.streams[1].dropped == 3
    assert (flaky.state, flaky.failures, flaky.failed_starts, flaky.retry_at) == ("BACKOFF", 3, 3, 1310.25)
    assert web.exits == {} and snap.outcomes == ()  # not in format 1: counted afresh
    assert sorted(snap.fds()) == [7, 9, 10, 11, 12]
    assert (snap.systemd_address, snap.watchdog_s) == ("/run/systemd/notify", 30.0)


def test_the_current_format_round_trips():
    snap = Snapshot(version="9.9", pid=1, config_path="/c.toml", argv=("-c", "/c.toml"), control_lock_fd=3,
                    control_listen_fd=4, sockets={"web": 5},
                    processes=(SavedProcess(name="a", program="a", state="RUNNING", pid=7, leader_alive=True,
                                            exits={"unexpected": 2}, notify_fd=6, notify_name="@procguard/1/1",
                                            streams=(SavedStream(name="stdout", tail=b"\x00\xffbytes",
                                                                 pipe_fds=(8, 9)),)),),
                    outcomes=(SavedOutcome(process="a", at=1.5, ok=False, trigger="deploy", generation=2,
                                           pid=None, step="starting", reason="exited"),))
    assert loads(dumps(snap)) == snap
    carrying = Snapshot(version="9.9", pid=1, config_path="/c.toml", argv=(), config_fd=11)
    assert loads(dumps(carrying)).config_fd == 11 and 11 not in carrying.fds()  # read and closed by resume.py


def test_a_format_2_state_loads_without_a_carried_config():
    """What the release before the carried config saves: the new image then loads the config files."""
    doc = json.loads(dumps(Snapshot(version="0.1.0", pid=1, config_path="/c.toml", argv=("-c", "/c.toml"),
                                    control_lock_fd=3, control_listen_fd=4)))
    del doc["config_fd"]
    snap = loads(json.dumps(dict(doc, format=2)).encode())
    assert (snap.format, snap.config_fd, snap.control_listen_fd) == (FORMAT, None, 4)


@pytest.mark.parametrize("doc, why", [
    (b'{"format": 4}', r"format 4; this procguard reads \[1, 2, 3\]"),  # (3 became real with config_fd)
    (b'{"version": "1"}', "format None"),
    (b"[]", "not a JSON object"),
    (b"{", "not JSON"),
    (b'{"format": 2, "version": "1", "pid": 1, "config_path": "c", "argv": [], "surprise": 1}', "malformed"),
])
def test_a_state_this_image_cannot_read_is_refused_with_the_reason(doc, why):
    with pytest.raises(StateError, match=why):
        loads(doc)
