"""The daemon's log formats and how `auto` picks one (issue #4, item 6); the daemon itself: test_daemon_log.py."""

import json
import os
import re
from collections.abc import Iterator

import pytest

from procguard.log import choose_format, configure_logging, get_logger, is_journal_stream, reset_logging


@pytest.fixture(autouse=True)
def reset_log() -> Iterator[None]:
    yield
    reset_logging()


def raise_and_log(message: str) -> None:
    log = get_logger().bind(program="web")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception(message, request_id=7)


def stream_id(path: os.PathLike[str]) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.mark.parametrize(("method", "priority"), [
    ("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2), ("exception", 3),
])
def test_journal_prefixes_the_syslog_priority(capsys, method, priority):
    configure_logging("debug", "journal")
    getattr(get_logger(), method)("something_happened", n=1)
    assert capsys.readouterr().err == f"<{priority}>something_happened n=1\n"


def test_journal_keeps_a_traceback_in_one_line(capsys):
    configure_logging("info", "journal")
    raise_and_log("control_command_failed")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("<3>control_command_failed program=web request_id=7 exception=")
    assert "Traceback (most recent call last):\\n" in err and "ValueError: bad\\nvalue" in err
    assert "timestamp" not in err and "level" not in err  # journald has both


def test_journal_quotes_and_escapes_values(capsys):
    configure_logging("info", "journal")
    get_logger().info("config_reloaded", path="/etc/my app.toml", empty="", quote='say "hi"',
                                eq="a=b", back="C:\\x", tab="a\tb", nul="a\0b", plain="web", n=3, ok=True,
                                pids=[1, 2])
    err = capsys.readouterr().err
    assert err == ('<6>config_reloaded path="/etc/my app.toml" empty="" quote="say \\"hi\\"" eq="a=b" '
                   'back="C:\\\\x" tab="a\\tb" nul="a\\x00b" plain=web n=3 ok=True pids="[1, 2]"\n')


def test_json_renders_the_traceback(capsys):
    configure_logging("info", "json")
    raise_and_log("control_command_failed")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    ev = json.loads(err)
    assert ev["event"] == "control_command_failed" and ev["level"] == "error" and "timestamp" in ev
    assert "ValueError: bad\nvalue" in ev["exception"]


def test_console_renders_the_traceback_without_colour_off_a_terminal(capsys):
    configure_logging("info", "console")
    raise_and_log("control_command_failed")
    err = capsys.readouterr().err
    assert re.match(r"\S+ \[error\s*\] control_command_failed ", err), err
    assert "Traceback (most recent call last):\n" in err and "ValueError: bad\nvalue" in err
    assert "\x1b[" not in err


def test_log_level_filters(capsys):
    configure_logging("warning", "journal")
    log = get_logger()
    log.info("dropped")
    log.warning("kept")
    assert capsys.readouterr().err == "<4>kept\n"


def test_journal_stream_must_name_this_very_stream(tmp_path, monkeypatch):
    mine, other = tmp_path / "stderr", tmp_path / "other"
    mine.touch()
    other.touch()
    with open(mine, "a") as stream:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not is_journal_stream(stream)
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(mine))
        assert is_journal_stream(stream)
        assert choose_format(stream) == "journal"
        monkeypatch.setenv("JOURNAL_STREAM", stream_id(other))  # stderr redirected inside the unit
        assert not is_journal_stream(stream)
        assert choose_format(stream) == "json"
        for junk in ("", "12", "a:b", ":", "1:2:3"):
            monkeypatch.setenv("JOURNAL_STREAM", junk)
            assert not is_journal_stream(stream), junk
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(mine))
    assert not is_journal_stream(stream)  # closed: fileno() raises ValueError


def test_auto_picks_console_on_a_terminal(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as tty:
            assert choose_format(tty) == "console"
            monkeypatch.setenv("JOURNAL_STREAM", stream_id(f"/proc/self/fd/{secondary}"))
            assert choose_format(tty) == "journal"  # the journal check comes first
    finally:
        os.close(secondary)
        os.close(primary)


# The daemon renders its lines itself without importing structlog (#17); they stay byte for byte what
# structlog's processors wrote before, which scripts parsing the log rely on.
def by_structlog(processors, method: str, event_dict: dict) -> str:
    for processor in processors:
        event_dict = processor(None, method, event_dict)
    return event_dict


class Odd:
    def __repr__(self) -> str:
        return "<odd>"


SAMPLES = [
    ("info", {"program": "web", "pid": 4312, "event": "process_spawned"}),
    ("warning", {"program": "web", "old": "RUNNING", "new": "EXITED", "exit_status": -9, "expected": False,
                 "ratio": 0.5, "none": None, "tags": ("a", "b"), "env": {"K": "v"}, "odd": Odd(),
                 "text": 'quote " back\\ ünïcode \x00\n', "event": "process_exited"}),
    ("error", {"event": "config_reload_failed", "issues": ["a.toml: [program.x] bad"]}),
]


@pytest.mark.parametrize(("method", "fields"), SAMPLES)
def test_json_lines_are_structlogs(method, fields):
    import structlog.processors

    from procguard.log import add_log_level, render_json

    ours = render_json(None, method, add_log_level(None, method, dict(fields)))
    theirs = by_structlog([structlog.processors.add_log_level, structlog.processors.JSONRenderer()], method,
                          dict(fields))
    assert ours == theirs


def test_tracebacks_are_structlogs():
    import structlog.processors

    from procguard.log import format_exc_info

    try:
        raise ValueError("bad\nvalue")
    except ValueError as exc:
        for exc_info in (True, exc, (ValueError, exc, exc.__traceback__)):
            ours = format_exc_info(None, "error", {"event": "x", "exc_info": exc_info})
            theirs = structlog.processors.format_exc_info(None, "error", {"event": "x", "exc_info": exc_info})
            assert ours == theirs and "ValueError: bad\nvalue" in ours["exception"]
    # No exception being handled: nothing, as structlog.
    assert format_exc_info(None, "error", {"event": "x", "exc_info": True}) == {"event": "x"}


@pytest.mark.parametrize("micros", [0, 1, 999_999, 123_000])
def test_timestamps_are_datetimes_isoformat(monkeypatch, micros):
    import datetime
    import time

    from procguard.log import timestamp_iso

    seconds = 1_764_790_000
    monkeypatch.setattr(time, "time_ns", lambda: seconds * 10**9 + micros * 1000 + 999)
    expected = datetime.datetime.fromtimestamp(seconds).replace(microsecond=micros).isoformat()
    assert timestamp_iso(None, "info", {})["timestamp"] == expected


def test_the_daemon_does_not_import_structlog():
    import subprocess
    import sys

    code = ("import sys; sys.modules['twisted'] = None; import procguard.daemon; "
            "from procguard.log import configure_logging; configure_logging('info', 'json'); "
            "print('structlog' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
