"""The daemon's own log: journal lines under systemd, console on a TTY, JSON lines otherwise (issue #4, item 6)."""

import json
import os
import re
import subprocess
import sys
import threading

from tests.helpers import REPO, DaemonRun, probe, prog, wait_until

# One journal line: a syslog priority, the event name, then key=value fields (systemd.exec(5) SyslogLevelPrefix=).
JOURNAL_LINE = re.compile(r"^<[0-7]>[a-z_]+( [A-Za-z_]+=\S.*)?$")
ANSI = "\x1b["


def journal_lines(d: DaemonRun) -> list[str]:
    return d.logfile.read_text(errors="replace").splitlines() if d.logfile.exists() else []


def wait_line(d: DaemonRun, prefix: str, *contains: str, timeout: float = 10.0) -> str:
    """The first log line that starts with `prefix` and contains every string in `contains`."""
    def found() -> str | None:
        assert d.proc is None or d.proc.poll() is None, d.logfile.read_text()
        return next((line for line in journal_lines(d)
                     if line.startswith(prefix) and all(c in line for c in contains)), None)

    return wait_until(found, timeout, f"a log line {prefix!r} with {contains}; log so far: {journal_lines(d)}")


def failing_config(d: DaemonRun) -> str:
    """A program whose command does not exist (spawn failures, then FATAL at error level) and one that runs."""
    return (prog("missing", ["/nonexistent/bin/server"], startretries=1, backoff_initial="50ms")
            + prog("web", probe(d.work, "web"), startsecs=0))


def stream_id(path: os.PathLike[str]) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_auto_under_systemd_writes_journal_priorities(daemon, monkeypatch):
    d = daemon()
    d.write_config(failing_config(d))
    d.logfile.touch()  # DaemonRun appends to it: the daemon's stderr keeps this inode
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(d.logfile))
    d.start("--log-format", "auto", wait=False)  # after the helper's `--log-format json`: the last one wins
    started = wait_line(d, "<6>daemon_started ")
    assert "timestamp" not in started and "level=" not in started  # journald stamps entries itself
    assert f"pid={d.proc.pid}" in started
    fatal = wait_line(d, "<3>process_state_changed ", "program=missing", "new=FATAL")
    assert "/nonexistent/bin/server" in fatal  # the reason, quoted as one field
    wait_line(d, "<4>spawn_failed ", "program=missing")
    wait_line(d, "<6>process_state_changed ", "program=web", "new=RUNNING")
    assert d.stop() == 0
    lines = journal_lines(d)
    assert lines[-1].startswith("<6>daemon_stopped")
    # One event, one line: every line is a whole entry with its own priority (journalctl -p err works).
    assert [line for line in lines if not JOURNAL_LINE.match(line)] == []


def test_journal_stream_of_another_file_means_json(daemon, monkeypatch):
    d = daemon()
    d.write_config(failing_config(d))
    # A unit that redirects stderr (`procguard ... 2>file`) inherits JOURNAL_STREAM, but stderr is not it.
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(d.config))
    d.start("--log-format", "auto")
    d.wait_state("missing", "FATAL")
    assert d.stop() == 0
    lines = journal_lines(d)
    assert [json.loads(line)["event"] for line in lines][-1] == "daemon_stopped"  # every line is JSON
    assert d.events("process_state_changed", program="missing", new="FATAL")[0]["level"] == "error"


def test_forced_journal_format_without_systemd(daemon, monkeypatch):
    d = daemon()
    d.write_config(failing_config(d))
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    d.start("--log-format", "journal", wait=False)
    wait_line(d, "<6>daemon_started ")
    wait_line(d, "<3>process_state_changed ", "program=missing", "new=FATAL")
    assert d.stop() == 0
    lines = journal_lines(d)
    assert lines and [line for line in lines if not JOURNAL_LINE.match(line)] == []
    assert not any(line.lstrip().startswith("{") for line in lines)


class PtyReader:
    """Collect everything written to a pseudo-terminal until its last writer closes it."""

    def __init__(self) -> None:
        self.primary, self.secondary = os.openpty()
        self._data = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        """Drop our copy of the terminal (the daemon holds its own) and read until EIO."""
        os.close(self.secondary)
        self.secondary = -1
        self._thread.start()

    def _read(self) -> None:
        # Read all along: a terminal nobody reads fills up and blocks the daemon's writes.
        while True:
            try:
                chunk = os.read(self.primary, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                return
            if not chunk:
                return
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace").replace("\r\n", "\n")  # the tty's ONLCR

    def finish(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the terminal never closed"

    def close(self) -> None:
        """Close the terminal; call once its writers are gone, so EIO has ended the reader."""
        if self.secondary >= 0:
            os.close(self.secondary)
        if self._thread.ident is not None:
            self._thread.join(10)
        os.close(self.primary)


def test_auto_on_a_terminal_uses_the_console_renderer(daemon, monkeypatch):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    pty = PtyReader()
    try:
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "procguard", "-c", str(d.config), "--log-format", "auto"],
            stdout=pty.secondary, stderr=pty.secondary, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
        )
        pty.start()
        wait_until(lambda: "daemon_started" in pty.text() and "RUNNING" in pty.text() or d.proc.poll() is not None,
                   what=f"console output; so far {pty.text()!r}")
        assert d.proc.poll() is None, pty.text()
        assert d.stop() == 0
        pty.finish()
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()  # a failed assertion above: the reader ends only once the daemon is gone
        pty.close()
    out = pty.text()
    assert "daemon_started" in out and "daemon_stopped" in out
    assert ANSI in out  # coloured: a terminal, and NO_COLOR unset
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+ \[info\s*\] daemon_started ", plain, re.M), plain
    assert not any(line.lstrip().startswith(("{", "<")) for line in plain.splitlines()), plain


def test_forced_console_into_a_file_has_no_colour_codes(daemon, monkeypatch):
    d = daemon()
    d.write_config(prog("web", probe(d.work, "web"), startsecs=0))
    monkeypatch.delenv("NO_COLOR", raising=False)
    d.start("--log-format", "console", wait=False)
    wait_line(d, "", "daemon_started")
    assert d.stop() == 0
    out = d.logfile.read_text()
    assert "daemon_stopped" in out and ANSI not in out


def test_log_level_warning_drops_info_events(daemon):
    d = daemon()
    d.write_config(failing_config(d))  # the config says loglevel = "debug": the flag overrides it
    d.start("--log-level", "warning", wait=False)
    d.wait_state("missing", "FATAL")  # logged at error level
    wait_until(lambda: d.reports("web"), what="web started")
    assert d.stop() == 0
    events = d.events()
    assert {e["level"] for e in events} <= {"warning", "error", "critical"}, events
    names = {e["event"] for e in events}
    assert "spawn_failed" in names  # a warning
    for info_event in ("daemon_started", "process_spawned", "shutdown_requested", "daemon_stopped"):
        assert info_event not in names
