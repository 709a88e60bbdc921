"""procguardctl's printed lines (render.py) and the names it shares with the protocol (issue #15).

The texts against a real daemon are in tests/integration/test_supervisorctl_texts.py; these pin the pieces
whose every branch a daemon cannot easily be brought to show, and the one-place rules of issue #15.
"""

import argparse
import ast
import base64
import time
from pathlib import Path

import pytest

from procguard import protocol
from procguardctl import exits, render

REPO = Path(__file__).resolve().parents[2]
UP = {"name": "web", "state": "RUNNING", "pid": 12, "uptime_s": 90061, "health": "healthy"}
JOB = {"name": "migrate", "state": "EXITED", "reason": "completed (exit status 0)", "completed": True}
DOWN = {"name": "worker", "state": "BACKOFF", "reason": "exited too quickly", "retry_in_s": 2.4,
        "output_dropped_bytes": 17}
UNKNOWN = {"name": "shop:*", "error": protocol.E_NO_SUCH_PROCESS}


def string_constants(path: Path) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def test_procguardctl_names_the_protocols_error_codes_instead_of_spelling_them() -> None:
    codes = {v for k, v in vars(protocol).items() if k.startswith("E_")}
    spelled = {f"{p.relative_to(REPO)}: {c}" for p in (REPO / "procguardctl").rglob("*.py")
               for c in string_constants(p) & codes}
    assert not spelled, sorted(spelled)


def test_procguardctl_takes_the_root_daemons_endpoint_from_the_protocol() -> None:
    spelled = {str(p.relative_to(REPO)) for p in (REPO / "procguardctl").rglob("*.py")
               for c in string_constants(p) if "/run/procguard" in c}
    assert not spelled, sorted(spelled)
    assert protocol.ROOT_ENDPOINT == "ipc:///run/procguard/procguard.sock"


def test_status_rows_say_why_a_process_is_not_up_and_colour_its_state() -> None:
    nxt = {**UP, "next": {"generation": 2, "state": "STARTING", "pid": 99}, "replace_phase": "warming"}
    printed = render.status([UNKNOWN, nxt, DOWN, JOB], long=False, colour=True)
    assert printed.lines == [
        "shop: ERROR (no such group)",
        f"{'web':<32} \x1b[32mRUNNING  \x1b[0m pid 12, uptime 1 day, 1:01:01, healthy; next generation 2: "
        "STARTING, pid 99 (warming)",
        f"{'worker':<32} \x1b[33mBACKOFF  \x1b[0m exited too quickly, retry in 2s; 17 bytes of output dropped "
        "(see the daemon log)",
        f"{'migrate':<32} \x1b[31mEXITED   \x1b[0m completed (exit status 0)",
    ]
    assert printed.code == exits.NOT_ALL_RUNNING


@pytest.mark.parametrize(("result", "code"), [
    ([UP, JOB], exits.OK), ([UP, DOWN], exits.NOT_ALL_RUNNING), ([UP, UNKNOWN], exits.UNKNOWN),
    ([DOWN, UNKNOWN], exits.NOT_ALL_RUNNING), ([], exits.OK),
])
def test_status_exits_the_same_printed_or_as_json(result: list[dict[str, object]], code: int,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ns = argparse.Namespace(avail=False, long=True)
    assert render.lines("status", result, ns, colour=False).code == code
    assert render.as_json("status", result, [], avail=False) == code
    assert render.as_json("status", result, [], avail=True) == exits.OK  # avail lists, it does not judge
    capsys.readouterr()


@pytest.mark.parametrize(("command", "result"), [
    ("deploy", [{"name": "web", "ok": True, "message": "generation 2"}]),
    ("deploy", [{"name": "web", "ok": True, "message": "ok"}, {"name": "db", "ok": False, "message": "failed",
                                                               "output": ["Traceback", "Error"]}]),
    ("alert", {"alert": "ops", "ok": True}),
    ("alert", {"alert": "ops", "ok": False, "error": "connection refused"}),
    ("start", [{"name": "web", "action": "start", "ok": False, "error": protocol.E_START_FAILED, "message": "x"}]),
    ("update", {"unknown": ["shop"]}),
])
def test_deploy_alert_and_supervisorctls_commands_exit_the_same_printed_or_as_json(
        command: str, result: object, capsys: pytest.CaptureFixture[str]) -> None:
    printed = render.lines(command, result, argparse.Namespace(avail=False, names=["web"]), colour=False)
    assert render.as_json(command, result, ["web"], avail=False) == printed.code
    capsys.readouterr()


def test_deploy_failure_shows_the_last_output_indented() -> None:
    printed = render.deploy([{"name": "db", "ok": False, "message": "not ready in 30s", "output": ["a", "b"]}])
    assert printed.lines == ["db: ERROR (not ready in 30s)", "  last output of db:", "    a", "    b"]
    assert printed.code == exits.ERROR


def test_an_event_line_is_time_who_pid_event_and_logfmt_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        ev = {"time": 1700000000.123, "process": "web:web_00", "program": "web", "pid": 5, "event": "process_exited",
              "fields": {"exit_code": 1, "reason": "not expected", "cause": None, "codes": [0, 2], "empty": ""}}
        assert render.event_line(ev) == ('2023-11-14T22:13:20.123+00:00 web:web_00 pid 5 process_exited exit_code=1 '
                                         'reason="not expected" cause=null codes="[0, 2]" empty=""')
        assert render.event_line({"time": 1700000001, "event": "config_reloaded"}, short_time=True) == \
            "22:13:21 procguard config_reloaded"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_tail_keeps_the_last_lines_first_then_notes_a_gap(capfd: pytest.CaptureFixture[str]) -> None:
    tail = render.TailPrinter(lines=2)
    tail({"data": base64.b64encode(b"one\ntwo\nthree\n").decode(), "offset": 14})
    tail({"data": base64.b64encode(b"five\n").decode(), "offset": 30})  # 11 bytes never reached us
    out, err = capfd.readouterr()
    assert (out, err) == ("two\nthree\nfive\n", "[procguardctl: 11 bytes skipped]\n")
