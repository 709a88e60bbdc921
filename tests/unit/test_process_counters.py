"""Restarts and exits by reason, counted by the state machine for metrics and top (issue #18 item 3)."""

import signal

from procguard.engine.records import snapshot
from procguard.engine.states import ExitReason
from procguard.testing import make


def exits(p: object) -> dict[str, int]:
    return {str(k): v for k, v in p.exits.items() if v}  # type: ignore[attr-defined]


def test_an_operator_start_is_not_a_restart_but_every_automatic_respawn_is():
    p, fos, _ = make(startsecs=0.0, backoff_reset=10.0, backoff_initial=1.0)
    fos.now = 1.0  # Process treats a spawn time of 0.0 as unknown
    p.start()
    p.spawned(100)
    assert (p.restarts, exits(p)) == (0, {})
    fos.advance(20)
    p.exited(1)  # a crash after a stable run: respawned at once
    assert (p.restarts, exits(p)) == (1, {"unexpected": 1})
    p.spawned(101)
    p.exited(-int(signal.SIGKILL))  # killed by someone else right away: back off, then retry
    assert exits(p) == {"unexpected": 1, "signal": 1}
    fos.advance(5)
    assert p.restarts == 2
    p.spawned(102)
    p.stop()
    p.exited(-int(signal.SIGTERM))
    assert exits(p) == {"unexpected": 1, "signal": 1, "stopped": 1}
    p.start()  # the operator's: counts nothing
    assert p.restarts == 2
    assert snapshot(p, fos.now, 0.0).restarts == 2


def test_exits_before_ready_and_expected_exits_have_their_own_reasons():
    p, fos, _ = make(startsecs=1.0, exitcodes=(0, 2))
    p.start()
    p.spawned(100)
    p.exited(1)  # before startsecs
    assert exits(p) == {"early": 1}
    fos.advance(5)
    p.spawned(101)
    fos.advance(2)
    p.exited(2)  # in exitcodes: expected, and not restarted (autorestart = unexpected)
    assert exits(p) == {"early": 1, "expected": 1}
    assert p.restarts == 1
    assert set(p.exits) == set(ExitReason)
