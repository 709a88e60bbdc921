"""The engine around the state machine on the fake seam: monitors, ordering and change notification.

Issue #15: the memory guard measures through the OS seam (never procfs directly), decisions read
`Process.hold` rather than the reason's text, and one `Changes` wakes every kind of waiter.
"""

import asyncio
from dataclasses import replace

from procguard.engine.changes import Changes
from procguard.engine.monitors import memory_loop
from procguard.engine.ordering import Ordering
from procguard.engine.process import Process
from procguard.engine.registry import Registry
from procguard.engine.states import Hold, ProcessState
from procguard.testing import FakeOS, make, program


def running(**over: object) -> tuple[Process, FakeOS]:
    p, fos, _ = make(startsecs=0.0, **over)
    p.start()
    p.spawned(42)
    assert p.state == ProcessState.RUNNING
    return p, fos


def test_max_memory_is_measured_through_the_seam_and_recycles_above_it():
    p, fos = running(max_memory=1000, resource_check_interval=0.01)
    fos.tree_rss_bytes[42] = 999
    asyncio.run(asyncio.wait_for(_exceed_after_a_few_rounds(p, fos, over=4000), 10))
    assert p.state == ProcessState.STOPPING
    assert p.reason == "restarting: max_memory: tree RSS 4000 bytes > 1000", p.reason


async def _exceed_after_a_few_rounds(p: Process, fos: FakeOS, *, over: int) -> None:
    guard = asyncio.create_task(memory_loop(p, 42, fos))
    for _ in range(3):  # a few rounds under the limit: nothing happens
        await asyncio.sleep(0.02)
        assert p.state == ProcessState.RUNNING and not guard.done()
    fos.tree_rss_bytes[42] = over
    await guard


def test_the_memory_guard_ends_when_the_seam_says_the_tree_is_gone():
    p, fos = running(max_memory=1000, resource_check_interval=0.01)
    asyncio.run(asyncio.wait_for(memory_loop(p, 42, fos), 10))  # tree_rss answers None: gone
    assert p.state == ProcessState.RUNNING


def test_any_other_reason_clears_the_hold_that_code_decides_on():
    p, _, _ = make()
    p.set_reason(Hold.WAITING, "waiting for db")
    assert (p.hold, p.reason) == (Hold.WAITING, "waiting for db")
    p.reason = "waiting for db"  # the same words, written for people only
    assert p.hold == Hold.NONE


def test_a_oneshot_is_satisfied_by_completing_not_by_its_reason():
    job, _, _ = make(type="oneshot", startsecs=0.0)
    job.start()
    job.spawned(7)
    job.exited(0)
    assert job.state == ProcessState.EXITED and job.reason == "completed (exit status 0)"
    assert job.hold == Hold.COMPLETED and job.is_satisfied
    job.reason = "completed (exit status 0)"  # text alone satisfies nobody
    assert not job.is_satisfied and job.has_given_up


def _two_programs() -> tuple[Registry, Process, Process]:
    fos = FakeOS()
    web_prog = program(depends_on=("db",))
    db_prog = program(name="db", processes=(replace(web_prog.processes[0], name="db"),))
    db = Process(db_prog, db_prog.processes[0], fos, lambda *a: None)
    web = Process(web_prog, web_prog.processes[0], fos, lambda *a: None)
    reg = Registry()
    reg.put("db", [db])
    reg.put("web", [web])
    return reg, db, web


def test_start_up_is_settled_while_a_dependent_waits_on_a_stuck_dependency():
    reg, db, web = _two_programs()
    ordering = Ordering(reg, Changes())
    db.state = ProcessState.FATAL
    web.set_reason(Hold.WAITING, "waiting for db")
    assert ordering.is_settled()
    web.reason = "waiting for db"  # the same text, but nothing waits any more
    assert not ordering.is_settled()
    web.set_reason(Hold.BLOCKED, "blocked: dependency db failed: FATAL")
    db.state = ProcessState.STARTING
    assert not ordering.is_settled()  # db itself is still on its way up
    db.state = ProcessState.BACKOFF
    assert ordering.is_settled()


def test_one_change_wakes_its_own_waiters_any_change_waiters_and_listeners():
    reg, db, web = _two_programs()
    changes = Changes()
    heard: list[str] = []
    changes.listen(lambda: heard.append("listener"))

    async def scenario() -> None:
        on_db = asyncio.create_task(changes.next(db))
        on_web = asyncio.create_task(changes.next(web))
        on_any = asyncio.create_task(changes.next())
        await asyncio.sleep(0)
        changes.changed(db)
        await asyncio.sleep(0)
        assert on_db.done() and on_any.done() and not on_web.done()
        assert heard == ["listener"]
        until = asyncio.create_task(changes.until([db, web], lambda p: p.state == ProcessState.RUNNING))
        db.state = web.state = ProcessState.RUNNING
        changes.changed(db)
        changes.changed(web)
        await asyncio.wait_for(until, 5)
        await asyncio.wait_for(on_web, 5)

    asyncio.run(scenario())
