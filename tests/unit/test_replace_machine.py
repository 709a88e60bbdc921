"""Two generations of one process (replace.Replacement) on the fake seam (issue #16).

The rules pinned here: the next generation starts only once its sockets are ready; the switch happens
only when it is RUNNING by its own readiness rule; the current generation is signalled only after the
switch has drained; a next generation that fails is stopped (group too), its sockets discarded, and the
current one is never signalled; a trial never retries, and a retired generation never restarts.
"""

import signal

from procguard.config.model import Ready
from procguard.engine.process import Process
from procguard.engine.states import ProcessState, ReplacePhase, ReplaceTrigger
from procguard.engine.replace import Replacement
from procguard.testing import FakeOS, program


def setup(**over: object) -> tuple[Process, Process, Replacement, FakeOS, list[str]]:
    fos = FakeOS()
    prog = program(sockets=("web",), **over)
    phases: list[str] = []
    holder: list[Replacement] = []

    def changed(proc: Process, old: ProcessState, new: ProcessState) -> None:
        if holder:
            r = holder[0]
            (r.next_changed if proc is r.next else r.current_changed)(new)

    current = Process(prog, prog.processes[0], fos, changed)
    current.start()
    current.spawned(100)
    if prog.ready == Ready.NOTIFY:
        current.notified({"READY": "1"})
    elif prog.ready == Ready.HEALTHCHECK:
        current.health_result(True, "")
    fos.advance(prog.startsecs)
    assert current.state == ProcessState.RUNNING
    nxt = Process(prog, prog.processes[0], fos, changed)
    r = Replacement(current, nxt, fos, ReplaceTrigger.DEPLOY, lambda r: phases.append(str(r.phase)))
    holder.append(r)
    return current, nxt, r, fos, phases


def signals_to(fos: FakeOS, pid: int) -> list[int]:
    return [sig for p, sig, _ in fos.signals if p == pid]


def test_the_next_generation_starts_after_its_sockets_and_takes_over_once_ready():
    current, nxt, r, fos, phases = setup(startsecs=1.0)
    r.begin()
    assert fos.spawned == [current]  # not yet: its sockets are being prepared
    fos.prepared[0][1](None)
    assert fos.spawned == [current, nxt] and nxt.generation == 2 and nxt.trial
    nxt.spawned(200)
    fos.advance(0.5)
    assert fos.switches == [] and current.state == ProcessState.RUNNING  # both alive, only one serves
    fos.advance(0.6)
    assert nxt.state == ProcessState.RUNNING and r.phase == ReplacePhase.SWITCHING
    [(cur, new, drained)] = fos.switches
    assert (cur, new) == (current, nxt) and not nxt.trial and current.retiring
    assert signals_to(fos, 100) == []  # the current one drains before any signal
    drained()
    assert r.phase == ReplacePhase.STOPPING and signals_to(fos, 100) == [signal.SIGTERM, signal.SIGCONT]
    current.exited(0)
    assert current.state == ProcessState.STOPPED and r.phase == ReplacePhase.SUCCEEDED
    assert phases == ["preparing", "starting", "switching", "stopping", "succeeded"]
    assert nxt.state == ProcessState.RUNNING and signals_to(fos, 200) == []


def test_a_next_generation_that_exits_at_start_fails_without_a_retry_and_the_current_is_untouched():
    current, nxt, r, fos, phases = setup()
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    fos.groups_alive.add(200)  # a worker it forked outlives it
    nxt.exited(1)
    assert r.phase == ReplacePhase.FAILED and r.failed_in == ReplacePhase.STARTING
    assert "exited too quickly (exit status 1)" in r.reason
    assert nxt.state == ProcessState.FATAL and (200, signal.SIGKILL, True) in fos.signals  # its group too
    assert fos.discarded == [nxt] and fos.forgotten == [nxt]
    fos.advance(120)
    assert fos.spawned == [current, nxt]  # no retry of a trial
    assert current.state == ProcessState.RUNNING and signals_to(fos, 100) == [] and not current.retiring
    assert phases[-1] == "failed"


def test_a_next_generation_not_ready_within_start_timeout_is_stopped_then_the_replace_fails():
    current, nxt, r, fos, phases = setup(ready=Ready.NOTIFY, start_timeout=5.0)
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    fos.advance(5.1)
    assert nxt.state == ProcessState.STOPPING and signals_to(fos, 200) == [signal.SIGTERM, signal.SIGCONT]
    assert r.phase == ReplacePhase.STARTING  # it counts as failed once its group is gone
    assert "failed" not in phases
    nxt.exited(-15)
    assert r.phase == ReplacePhase.FAILED and "no READY=1" in r.reason
    assert fos.discarded == [nxt] and phases.count("failed") == 1
    assert current.state == ProcessState.RUNNING and signals_to(fos, 100) == []


def test_sockets_that_cannot_be_prepared_fail_the_replace_before_anything_starts():
    current, nxt, r, fos, phases = setup()
    r.begin()
    fos.prepared[0][1]("[socket.web] tcp://127.0.0.1:8000: 2 sockets listen there, expected 1")
    assert r.phase == ReplacePhase.FAILED and fos.spawned == [current] and fos.discarded == []
    assert "2 sockets listen there" in r.reason


def test_an_abort_before_the_switch_stops_the_next_generation_and_keeps_the_current():
    current, nxt, r, fos, phases = setup(ready=Ready.NOTIFY)
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    r.abort("procguard is shutting down")
    assert signals_to(fos, 200) == [signal.SIGTERM, signal.SIGCONT] and r.phase == ReplacePhase.FAILED
    nxt.exited(0)
    assert nxt.state in (ProcessState.STOPPED, ProcessState.FATAL) and fos.discarded == [nxt]
    assert current.state == ProcessState.RUNNING


def test_the_current_generation_stopped_meanwhile_ends_the_replace():
    current, nxt, r, fos, phases = setup(ready=Ready.NOTIFY)
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    current.stop()
    assert r.phase == ReplacePhase.FAILED and nxt.state == ProcessState.STOPPING


def test_a_retiring_generation_that_exits_during_the_drain_is_not_restarted():
    current, nxt, r, fos, phases = setup(startsecs=0.0)
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    assert r.phase == ReplacePhase.SWITCHING
    current.exited(1)  # crashed while draining
    assert current.state == ProcessState.EXITED and r.phase == ReplacePhase.SUCCEEDED
    fos.advance(60)
    assert fos.spawned.count(current) == 1


def test_a_recycle_of_an_overlapping_program_asks_for_a_replace_and_does_not_stop():
    current, nxt, r, fos, phases = setup(max_age=30.0)
    asked: list[tuple[str, ReplaceTrigger]] = []
    current.on_replace = lambda p, why, trigger: asked.append((why, trigger)) or True
    fos.advance(31)
    assert asked == [("max_age (30s) reached", ReplaceTrigger.MAX_AGE)]
    assert current.state == ProcessState.RUNNING and signals_to(fos, 100) == []
    # The replace could not begin: stop and start in place, as before.
    current.restart("max_age (30s) reached", ReplaceTrigger.MAX_AGE, overlap=False)
    assert current.state == ProcessState.STOPPING


def test_an_unhealthy_overlapping_process_asks_for_a_replace():
    from procguard.config.model import HealthCheckConfig

    current, nxt, r, fos, phases = setup(healthcheck=HealthCheckConfig(type="tcp", address="127.0.0.1:1", retries=2),
                                         ready=Ready.STARTSECS)
    asked: list[ReplaceTrigger] = []
    current.on_replace = lambda p, why, trigger: asked.append(trigger) or True
    current.health_result(False, "connection refused")
    current.health_result(False, "connection refused")
    assert asked == [ReplaceTrigger.HEALTH] and current.state == ProcessState.RUNNING


def _checked(retries: int = 3, start_period: float = 0.0) -> tuple[Process, Process, Replacement, FakeOS, list[str]]:
    from procguard.config.model import HealthCheckConfig

    current, nxt, r, fos, phases = setup(
        healthcheck=HealthCheckConfig(type="http", url="http://127.0.0.1:1/", retries=retries,
                                      start_period=start_period),
        ready=Ready.HEALTHCHECK, start_timeout=60.0)
    r.begin()
    fos.prepared[0][1](None)
    nxt.spawned(200)
    return current, nxt, r, fos, phases


def test_a_next_generation_whose_check_answers_no_retries_times_in_a_row_is_refused_before_start_timeout():
    current, nxt, r, fos, phases = _checked(retries=3)
    for _ in range(2):
        nxt.health_result(False, "HTTP 503 (expected one of 100-499)", answered=True)
    assert nxt.state == ProcessState.STARTING and signals_to(fos, 200) == []
    nxt.health_result(False, "HTTP 503 (expected one of 100-499)", answered=True)
    assert nxt.state == ProcessState.STOPPING and signals_to(fos, 200) == [signal.SIGTERM, signal.SIGCONT]
    nxt.exited(-15)
    assert r.phase == ReplacePhase.FAILED and fos.now < 60.0
    assert r.reason == "health check failed 3 times in a row: HTTP 503 (expected one of 100-499)", r.reason
    assert current.state == ProcessState.RUNNING and signals_to(fos, 100) == []


def test_refused_connections_and_timeouts_wait_for_start_timeout_and_break_a_run_of_answers():
    current, nxt, r, fos, phases = _checked(retries=2)
    for answered in (False, True, False, True, False, False):  # never two answers in a row
        nxt.health_result(False, "HTTP 503" if answered else "connection refused", answered=answered)
    assert nxt.state == ProcessState.STARTING and r.phase == ReplacePhase.STARTING
    fos.advance(60.1)
    assert nxt.state == ProcessState.STOPPING and signals_to(fos, 200) == [signal.SIGTERM, signal.SIGCONT]


def test_answers_within_start_period_do_not_count_and_a_pass_starts_a_clean_count():
    current, nxt, r, fos, phases = _checked(retries=2, start_period=10.0)
    for _ in range(3):
        nxt.health_result(False, "HTTP 503", answered=True)
    assert nxt.state == ProcessState.STARTING
    fos.advance(10.0)
    nxt.health_result(False, "HTTP 503", answered=True)
    nxt.health_result(True, "")
    assert nxt.state == ProcessState.RUNNING and nxt.health_failures == 0
