"""The event bus behind the daemon log: any stable name logged anywhere is an event (issue #18 item 1)."""

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest

from procguard.observe.events import EventBus, Event
from procguard.log import configure_logging, get_logger, reset_logging


@pytest.fixture
def bus() -> Iterator[EventBus]:
    """A bus behind the daemon's logging at loglevel "error".

    Configured in the test body: pytest swaps sys.stderr between a fixture's set-up and the test.
    """
    yield EventBus(size=5)
    reset_logging()


def test_deploy_events_logged_anywhere_are_published_whatever_the_log_level(bus, capsys):
    configure_logging("error", "json", bus=bus)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    # What the deploy engine does: log (procguard.log), nothing else.
    log = get_logger().bind(program="web")
    log.info("deploy_started", release="abc123", steps=("migrate", "switch"))
    log.info("deploy_step", step="migrate", process="web:web_00", pid=4312)
    log.error("deploy_failed", reason="migrate exited 1")
    log.info("control_request", cmd="status")  # not a stable name: logged (or not), never published
    assert [e.event for e in seen] == ["deploy_started", "deploy_step", "deploy_failed"]
    started, step, failed = seen
    assert started.program == "web" and started.process is None and started.pid is None
    assert started.fields == {"release": "abc123", "steps": ["migrate", "switch"]}
    assert step.process == "web:web_00" and step.pid == 4312 and step.fields == {"step": "migrate"}
    assert failed.level == "error" and [e.seq for e in seen] == [1, 2, 3]
    json.dumps([e.to_wire() for e in seen])  # wire-safe
    # The log still honours loglevel = "error": only deploy_failed was written.
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == ["deploy_failed"]


def test_the_ring_keeps_the_newest_and_filters_by_name(bus):
    configure_logging("error", "json", bus=bus)
    log = get_logger()
    for i in range(4):
        log.info("process_state_changed", program="web", process="web", pid=i, new="RUNNING")
        log.info("process_state_changed", program="worker", process="worker:worker_01", pid=i, new="RUNNING")
    log.info("config_reloaded", added=(), changed=("web",), removed=())
    assert [e.seq for e in bus.recent()] == [5, 6, 7, 8, 9]  # size 5: the oldest went first
    assert [e.pid for e in bus.recent(["worker:worker_01"])] == [2, 3]
    assert [e.pid for e in bus.recent(["worker:*"], limit=1)] == [3]
    assert [e.event for e in bus.recent(["all"], limit=1)] == ["config_reloaded"]
    assert bus.recent(["web"])[-1].pid == 3 and not bus.recent(["nosuch"])


def test_events_from_another_thread_are_delivered_on_the_loop_in_order(bus):
    configure_logging("error", "json", bus=bus)
    seen: list[tuple[str, int]] = []

    async def main() -> None:
        bus.attach(asyncio.get_running_loop())
        bus.subscribe(lambda e: seen.append((e.event, threading.get_ident())))
        await asyncio.to_thread(get_logger().info, "alert_sent", alert="ops", kind="alert")
        get_logger().info("alert_failed", alert="ops", kind="alert")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert [name for name, _ in seen] == ["alert_sent", "alert_failed"]
    assert {tid for _, tid in seen} == {threading.get_ident()}


def test_a_failing_subscriber_does_not_break_the_caller_or_others(bus):
    configure_logging("error", "json", bus=bus)
    got: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("bug")

    bus.subscribe(broken)
    unsubscribe = bus.subscribe(lambda e: got.append(e.event))
    get_logger().warning("output_dropped", program="web", process="web", stream="stdout")
    unsubscribe()
    get_logger().info("output_recovered", program="web", process="web", stream="stdout")
    assert got == ["output_dropped"]
