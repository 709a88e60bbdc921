"""The state machine on a fake seam: transitions and timers without real processes.

Real-process tests (tests/integration) are the evidence; these pin the rules exactly, including
jitter bounds and timer arithmetic that real time makes noisy.
"""

import signal

import pytest

from procguard.config.model import AutoRestart
from procguard.engine.process import Process
from procguard.engine.states import ProcessState
from procguard.testing import FakeOS, make


def test_start_becomes_running_after_startsecs():
    p, fos, seen = make(startsecs=2.0)
    p.start()
    p.spawned(100)
    assert p.state == ProcessState.STARTING
    fos.advance(1.9)
    assert p.state == ProcessState.STARTING
    fos.advance(0.2)
    assert p.state == ProcessState.RUNNING
    assert seen == [("STOPPED", "STARTING"), ("STARTING", "RUNNING")]


def test_exit_before_startsecs_backs_off_with_doubling_delays_up_to_the_cap():
    p, fos, _ = make(backoff_initial=1.0, backoff_max=8.0)
    p.start()
    delays = []
    for pid in range(100, 107):
        p.spawned(pid)
        p.exited(1)
        assert p.state == ProcessState.BACKOFF
        delays.append(fos.pending_delay())
        fos.advance(delays[-1])
        assert p.state == ProcessState.STARTING
    for got, nominal in zip(delays, [1, 2, 4, 8, 8, 8, 8]):
        assert nominal * 0.8 <= got <= nominal


def test_default_retries_forever_but_startretries_gives_fatal_like_supervisor():
    forever, fos, _ = make(backoff_initial=0.1, backoff_max=0.1)
    forever.start()
    for pid in range(50):
        forever.spawned(pid)
        forever.exited(1)
        fos.advance(0.2)
    assert forever.state == ProcessState.STARTING

    limited, fos, _ = make(startretries=3, backoff_initial=0.1)
    limited.start()
    for pid in range(3):
        limited.spawned(pid)
        limited.exited(1)
        assert limited.state == ProcessState.BACKOFF
        fos.advance(1.0)
    limited.spawned(4)
    limited.exited(1)
    assert limited.state == ProcessState.FATAL
    assert "startretries = 3" in limited.reason


def test_crash_after_stable_run_restarts_at_once_and_resets_backoff():
    p, fos, seen = make(backoff_reset=10.0)
    p.start()
    p.spawned(1)
    p.exited(1)  # a quick failure first
    fos.advance(fos.pending_delay())
    p.spawned(2)
    fos.advance(30)
    assert p.state == ProcessState.RUNNING
    p.exited(-9)
    assert p.state == ProcessState.STARTING  # no BACKOFF in between
    assert seen[-2:] == [("RUNNING", "EXITED"), ("EXITED", "STARTING")]
    assert p.failures == 0


def test_crash_soon_after_running_still_backs_off():
    p, fos, _ = make(startsecs=1.0, backoff_reset=10.0)
    p.start()
    p.spawned(1)
    fos.advance(2)
    assert p.state == ProcessState.RUNNING
    p.exited(1)
    assert p.state == ProcessState.BACKOFF


@pytest.mark.parametrize(
    ("autorestart", "code", "restarts"),
    [
        (AutoRestart.ALWAYS, 0, True),
        (AutoRestart.NEVER, 1, False),
        (AutoRestart.UNEXPECTED, 0, False),
        (AutoRestart.UNEXPECTED, 2, False),
        (AutoRestart.UNEXPECTED, 1, True),
        (AutoRestart.UNEXPECTED, -15, True),
    ],
)
def test_autorestart_follows_supervisor_rules(autorestart, code, restarts):
    p, fos, _ = make(autorestart=autorestart, exitcodes=(0, 2), startsecs=0.0, backoff_reset=0.0)
    p.start()
    p.spawned(1)
    assert p.state == ProcessState.RUNNING
    p.exited(code)
    assert p.state == (ProcessState.STARTING if restarts else ProcessState.EXITED)


def test_stop_sends_stopsignal_to_group_then_sigkill_after_stopwaitsecs():
    p, fos, seen = make(stopsignal=int(signal.SIGQUIT), stopwaitsecs=5.0, startsecs=0.0)
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    p.stop()
    assert fos.signals == [(42, signal.SIGQUIT, True), (42, signal.SIGCONT, True)]
    fos.advance(4.9)
    assert p.state == ProcessState.STOPPING
    fos.advance(0.2)
    assert fos.signals[-1] == (42, signal.SIGKILL, True)
    fos.groups_alive.clear()
    p.exited(-9)
    assert p.state == ProcessState.STOPPED
    assert seen[-1] == ("STOPPING", "STOPPED")


def test_stopped_only_when_group_and_strays_are_gone():
    p, fos, _ = make(startsecs=0.0)
    p.start()
    p.spawned(42)
    fos.groups_alive |= {42, 77}
    p.stop()
    p.add_strays([77])
    assert (77, signal.SIGTERM, False) in fos.signals
    p.exited(0)
    assert p.state == ProcessState.STOPPING  # workers still in the group
    fos.groups_alive.discard(42)
    p.child_reaped(500)
    assert p.state == ProcessState.STOPPING  # the stray still lives
    fos.groups_alive.discard(77)
    p.child_reaped(77)
    assert p.state == ProcessState.STOPPED


def test_stop_during_backoff_cancels_the_retry():
    p, fos, _ = make()
    p.start()
    p.spawned(1)
    p.exited(1)
    assert p.state == ProcessState.BACKOFF
    p.stop()
    assert p.state == ProcessState.STOPPED
    fos.advance(120)
    assert p.state == ProcessState.STOPPED and len(fos.spawned) == 1


def test_stop_before_spawn_returns_signals_once_pid_is_known():
    p, fos, _ = make()
    p.start()
    p.stop()
    assert p.state == ProcessState.STOPPING and fos.signals == []
    p.spawned(9)
    assert fos.signals == [(9, signal.SIGTERM, True), (9, signal.SIGCONT, True)]
    p.exited(-15)
    assert p.state == ProcessState.STOPPED


def test_spawn_failure_is_a_failed_start_with_reason():
    p, fos, _ = make(startretries=0)
    p.start()
    p.spawn_failed("No such file or directory: /x")
    assert p.state == ProcessState.FATAL
    assert "spawn failed: No such file or directory: /x" in p.reason


def test_leader_exit_kills_leftover_group_before_restart():
    p, fos, _ = make(startsecs=0.0, backoff_reset=0.0)
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    p.exited(1)
    assert (42, signal.SIGKILL, True) in fos.signals


# ------------------------------------------------------------- restarts that drain first (drain_timeout)


def running(**over: object) -> tuple[Process, FakeOS, list[tuple[str, str]]]:
    p, fos, seen = make(startsecs=0.0, sockets=("web",), drain_timeout=5.0, **over)
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    assert p.state == ProcessState.RUNNING
    return p, fos, seen


def test_restart_with_drain_timeout_signals_only_after_the_drain():
    p, fos, _ = running()
    assert p.restart("max_age")
    assert (p.state, p.draining, fos.signals, len(fos.drains)) == (ProcessState.STOPPING, True, [], 1)
    fos.advance(100)  # no stopwaitsecs timer runs while draining: the drain itself is bounded
    assert fos.signals == []
    fos.drains[0]()
    assert fos.signals == [(42, signal.SIGTERM, True), (42, signal.SIGCONT, True)] and not p.draining
    p.exited(0)
    fos.groups_alive.discard(42)
    p.child_reaped(42)
    assert p.state == ProcessState.STARTING and len(fos.spawned) == 2


def test_plain_stop_does_not_drain_and_a_stop_cuts_a_drain_short():
    p, fos, _ = running()
    assert p.stop()  # the operator's stop: no drain (the held socket keeps new connections waiting)
    assert fos.drains == [] and fos.signals == [(42, signal.SIGTERM, True), (42, signal.SIGCONT, True)]
    p, fos, _ = running()
    p.stop(drain=True)  # the first half of the operator's restart
    assert fos.signals == [] and p.draining
    p.stop()  # then a stop (or the daemon shutting down): signal now
    assert fos.signals == [(42, signal.SIGTERM, True), (42, signal.SIGCONT, True)] and not p.draining
    fos.drains[0]()  # the drain reports back late: nothing more happens
    assert fos.signals == [(42, signal.SIGTERM, True), (42, signal.SIGCONT, True)]


def test_process_that_exits_while_draining_ends_the_drain():
    p, fos, _ = running()
    p.restart("unhealthy: 503")
    p.exited(-9)
    fos.groups_alive.discard(42)
    p.child_reaped(42)
    assert p.state == ProcessState.STARTING and not p.draining  # the restart goes on
    fos.drains[0]()
    assert fos.signals == []


def test_no_drain_without_sockets_or_drain_timeout():
    for over in ({"sockets": ()}, {"drain_timeout": 0.0}):
        p, fos, _ = make(startsecs=0.0, **{"sockets": ("web",), "drain_timeout": 5.0, **over})
        p.start()
        p.spawned(42)
        p.restart("max_age")
        assert fos.drains == [] and fos.signals == [(42, signal.SIGTERM, True), (42, signal.SIGCONT, True)]


def running_with_scans_held(**over: object) -> tuple[Process, FakeOS, list[tuple[str, str]]]:
    """A process running as pid 42 (its group alive) whose stray scans wait for answer_scan()."""
    p, fos, seen = make(**over)
    fos.hold_scans = True
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    return p, fos, seen


def test_stopped_waits_for_the_stray_scan_and_a_last_sweep():
    """Issue #14: a scan answering after the leader was reaped used to find the stray after STOPPED."""
    p, fos, seen = running_with_scans_held(startsecs=0.0)
    p.stop()
    assert fos.strays_scanned == [(p, 42)]  # walk the leader's descendants while it lives
    fos.groups_alive.clear()
    p.exited(-15)
    assert p.state == ProcessState.STOPPING  # leader and group gone, but the scan has not answered
    fos.groups_alive.add(77)
    fos.answer_scan([77])
    assert (77, signal.SIGTERM, False) in fos.signals
    fos.groups_alive.discard(77)
    p.child_reaped(77)
    # All known is gone: one more scan, without the reaped leader's pid (it may be reused).
    assert p.state == ProcessState.STOPPING and fos.strays_scanned[-1] == (p, None)
    fos.groups_alive.add(88)  # a descendant that escaped while the first scan ran
    fos.answer_scan([88])
    assert (88, signal.SIGTERM, False) in fos.signals and p.state == ProcessState.STOPPING
    fos.groups_alive.discard(88)
    p.child_reaped(88)
    assert p.state == ProcessState.STOPPING and len(fos.strays_scanned) == 3
    fos.answer_scan([])
    assert p.state == ProcessState.STOPPED and seen[-1] == ("STOPPING", "STOPPED")
    assert all(t.cancelled for t in fos.timers)  # the stopwaitsecs timer went with it


def test_strays_found_after_the_kill_escalation_get_sigkill_and_restart_waits_for_them():
    p, fos, _ = running_with_scans_held(startsecs=0.0, stopwaitsecs=5.0)
    assert p.restart("test")
    fos.advance(5.0)
    assert fos.signals[-1] == (42, signal.SIGKILL, True)
    fos.groups_alive.clear()
    p.exited(-9)
    fos.groups_alive.add(99)
    fos.answer_scan([99])
    assert fos.signals[-1] == (99, signal.SIGKILL, False)
    assert len(fos.spawned) == 1  # no new process while the stray lives
    fos.groups_alive.clear()
    p.child_reaped(99)
    fos.answer_scan([])
    assert p.state == ProcessState.STARTING and len(fos.spawned) == 2


def test_a_stop_waiting_only_for_its_stray_scan_does_not_say_killed():
    # Seen while timing the model test's steps on a busy machine (#20): the leader exited 0 on
    # SIGTERM at once, the /proc scans took longer than stopwaitsecs, and status said "killed: did not
    # stop within stopwaitsecs" with exit status 0.
    p, fos, seen = running_with_scans_held(stopwaitsecs=1.0)
    p.stop()
    fos.groups_alive.clear()
    p.exited(0)
    fos.advance(1.5)  # stopwaitsecs passes while the first scan is still out
    fos.answer_scan([])
    fos.answer_scan([])  # the sweep
    assert p.state == ProcessState.STOPPED and p.reason == "stopped" and p.exit_status == 0
    assert (42, signal.SIGKILL, True) not in fos.signals


def test_a_stray_found_after_stopwaitsecs_is_killed_and_says_so():
    p, fos, seen = running_with_scans_held(stopwaitsecs=1.0)
    p.stop()
    fos.groups_alive.clear()
    p.exited(0)
    fos.advance(1.5)
    fos.groups_alive.add(77)
    fos.answer_scan([77])
    assert (77, signal.SIGKILL, False) in fos.signals and p.reason.startswith("killed: did not stop")


# ------------------------------------------------- a crashed master whose workers exit by themselves (#16)


def test_orphans_that_do_not_serve_keep_the_held_sockets_for_the_replacement_and_get_no_stop_signal():
    """uWSGI's workers exit when their master dies: no handover (its queue stays for the replacement), no
    TERM (a uWSGI worker's TERM exits at once, cutting its request off); SIGKILL only at stopwaitsecs."""
    p, fos, _ = make(startsecs=0.0, sockets=("web",), orphans_serve=False, autorestart=AutoRestart.ALWAYS)
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    fos.now = 100.0  # a long healthy run
    p.exited(-9)
    assert (len(fos.spawned), fos.signals) == (2, []), fos.signals  # the replacement at once, nothing signalled
    fos.advance(p.program.stopwaitsecs)
    assert fos.signals == [(42, signal.SIGKILL, True)]  # still there at stopwaitsecs
    fos.groups_alive.discard(42)


def test_orphans_that_exit_by_themselves_in_time_are_never_killed():
    p, fos, _ = make(startsecs=0.0, sockets=("web",), orphans_serve=False, autorestart=AutoRestart.ALWAYS)
    p.start()
    p.spawned(42)
    fos.groups_alive.add(42)
    fos.now = 100.0
    p.exited(-9)
    fos.groups_alive.discard(42)
    fos.advance(p.program.stopwaitsecs)
    assert fos.signals == []
