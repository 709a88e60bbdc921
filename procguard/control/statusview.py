"""The `status` reply's process objects, each encoded again only when what it shows has changed (#17).

A plain `status` of 1000 processes used to build 1000 snapshots and 1000 dicts and encode 390 KB of
JSON per request: 20 ms of the daemon's CPU, four times circus's whole round trip. Between two requests
almost nothing but the clock changes, so each process's object is kept as JSON text cut around its three
clock-dependent values (started_at, uptime_s, retry_in_s), under a key of everything else it shows
(records.status_key, its last deploy, its dropped output bytes). A request compares keys, encodes again
the processes whose key changed, and writes the clock into the others.

The text is byte for byte what encode_reply makes of status_dict's dict at the same instant
(tests/unit/test_status_view.py compares them in every state). A process whose replace is under way
(its `next` carries a clock of its own) is encoded whole each time, as before.
"""

from typing import Any, NamedTuple

from procguard.engine.process import Process
from procguard.engine.records import ProcessStatus, ReplaceOutcome, shown_retry, shown_spawn, snapshot, status_key
from procguard.engine.supervisor import Supervisor
from procguard.io.output import Output
from procguard.protocol import encode_json

# status_dict with the clock left out encodes these two runs once each, in this order; no string value can
# contain them (the encoder escapes every quote inside a string), and `next` is null in a cut object.
_CLOCK = b'"started_at":null,"uptime_s":null'
_RETRY = b'"retry_in_s":null'


def outcome_dict(o: ReplaceOutcome | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"at": o.at, "ok": o.ok, "trigger": str(o.trigger), "generation": o.generation, "pid": o.pid,
            "step": str(o.step), "reason": o.reason}


def status_dict(st: ProcessStatus) -> dict[str, Any]:
    replace = {"generation": st.generation, "next": None if st.next is None else status_dict(st.next),
               "replace_phase": None if st.replace_phase is None else str(st.replace_phase),
               "last_deploy": outcome_dict(st.last_deploy)}
    return replace | {
        "name": st.name, "program": st.program, "state": str(st.state), "pid": st.pid,
        "started_at": st.started_at, "uptime_s": st.uptime_s, "exit_status": st.exit_status,
        "reason": st.reason, "retry_in_s": st.retry_in_s, "failures": st.failures,
        "health": st.health, "health_reason": st.health_reason, "status_text": st.status_text,
        "autostart": st.autostart, "priority": st.priority, "restarts": st.restarts, "completed": st.completed,
    }


class _Cut(NamedTuple):
    """One process's object as text, cut where the clock goes: head S,"uptime_s":U mid R tail."""

    key: tuple[object, ...]
    head: bytes  # ... "started_at":
    mid: bytes  # ,"exit_status": ... "retry_in_s":
    tail: bytes  # ,"failures": ... }
    spawned_at: float | None  # records.shown_spawn: uptime counts from here (None: null)
    retry_at: float | None  # records.shown_retry: retry_in_s counts down to here (None: null)


_NO_CLOCK = b'null,"uptime_s":null'


class StatusView:
    """Status objects of one Supervisor's processes, as dicts or as cached JSON text."""

    def __init__(self, supervisor: Supervisor, output: Output | None) -> None:
        self._sup = supervisor
        self._output = output
        self._cuts: dict[Process, _Cut] = {}  # as of the last status of every process

    def dicts(self, procs: list[Process]) -> list[dict[str, Any]]:
        """Each process's status object, built afresh (status -l and top add their usage fields)."""
        now_m, now_w = self._sup.now()
        return [self._dict(p, now_m, now_w) for p in procs]

    def items(self, procs: list[Process], *, keep: bool) -> list[bytes]:
        """Each process's status object as encode_json's text (ASCII bytes); keep: procs is every process,
        so the cache becomes exactly theirs (a process gone since is forgotten)."""
        now_m, now_w = self._sup.now()
        replacing = self._sup.deployer.replacing()
        outcomes = self._sup.deployer.outcomes
        dropped = None if self._output is None else self._output.dropped
        old, new = self._cuts, {}
        items = []
        for p in procs:
            if replacing and p in replacing:
                items.append(encode_json(self._dict(p, now_m, now_w)).encode())
                continue
            name = p.name
            key = (status_key(p), outcomes.get(name), None if dropped is None else dropped(name))
            cut = old.get(p)
            if cut is None or cut.key != key:
                cut = self._cut(p, key, now_m, now_w)
            new[p] = cut
            # %a is repr for a float, and records.snapshot's arithmetic gives the same floats.
            if cut.spawned_at is None:
                clock = _NO_CLOCK
            else:
                uptime = now_m - cut.spawned_at
                clock = b'%a,"uptime_s":%a' % (now_w - uptime, uptime)
            retry = b"null" if cut.retry_at is None else b"%a" % max(0.0, cut.retry_at - now_m)
            items.append(b"".join((cut.head, clock, cut.mid, retry, cut.tail)))
        if keep:
            self._cuts = new
        return items

    def _dict(self, p: Process, now_m: float, now_w: float) -> dict[str, Any]:
        d = status_dict(self._sup.deployer.annotate(snapshot(p, now_m, now_w), p, now_m, now_w))
        if self._output is not None:
            d["output_dropped_bytes"] = self._output.dropped(p.name)
        return d

    def _cut(self, p: Process, key: tuple[object, ...], now_m: float, now_w: float) -> _Cut:
        d = self._dict(p, now_m, now_w)
        d["started_at"] = d["uptime_s"] = d["retry_in_s"] = None
        text = encode_json(d).encode()
        clock = text.index(_CLOCK)
        retry = text.index(_RETRY, clock)
        return _Cut(key, text[:clock] + b'"started_at":', text[clock + len(_CLOCK):retry] + b'"retry_in_s":',
                    text[retry + len(_RETRY):], shown_spawn(p), shown_retry(p))
