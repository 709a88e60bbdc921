"""The daemon's log formats and how `auto` picks one (issue #4, item 6); the daemon itself: test_daemon_log.py."""

import json
import os
import re
from collections.abc import Iterator

import pytest
import structlog

from procguard.log import choose_format, configure_logging, is_journal_stream


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def raise_and_log(message: str) -> None:
    log = structlog.get_logger().bind(program="web")
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
    getattr(structlog.get_logger(), method)("something_happened", n=1)
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
    structlog.get_logger().info("config_reloaded", path="/etc/my app.toml", empty="", quote='say "hi"',
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
    log = structlog.get_logger()
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
