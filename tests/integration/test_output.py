"""Output capture, rotation, reopen, tail and back-pressure with a real daemon and real children (issue #4)."""

import base64
import json
import os
import re
import signal
import subprocess
import sys
import zmq
from pathlib import Path

import pytest

from procguard.protocol import encode_request
from tests.helpers import REPO, DaemonRun, prog, wait_until

WRITER = str(REPO / "tests" / "programs" / "writer.py")
TS = rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d "


def writer(d: DaemonRun, name: str, mode: str, arg: object = None, *extra: str) -> list[str]:
    argv = [sys.executable, WRITER, "--dir", str(d.work), "--name", name, *extra, mode]
    return argv + ([str(arg)] if arg is not None else [])


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else -1


def started(d: DaemonRun, name: str, count: int = 1) -> None:
    wait_until(lambda: sum(1 for e in d.probe_events() if e.startswith(f"{name} ") and e.endswith("started")) >= count,
               what=f"{name} started x{count}")


# ----------------------------------------------------------------------------------- capture


def test_binary_and_text_output_is_captured_byte_exact(daemon):
    d = daemon()
    blob = os.urandom(3 * 1024 * 1024 + 17)
    text = "".join(f"line {i} ünïcödé\n" for i in range(20000)).encode()
    (d.work / "blob").write_bytes(blob)
    (d.work / "text").write_bytes(text)
    out, err = d.work / "out.log", d.work / "err.log"
    d.write_config(prog("bin", writer(d, "bin", "copy", d.work / "blob", "--exit", "--err", str(d.work / "text")),
                        startsecs=0, autorestart=False, stdout_logfile=str(out), stderr_logfile=str(err),
                        stdout_logfile_maxbytes=0, stderr_logfile_maxbytes=0))
    d.start()
    d.wait_state("bin", "EXITED")
    wait_until(lambda: size(out) == len(blob) and size(err) == len(text), what="all bytes in the files")
    assert out.read_bytes() == blob
    assert err.read_bytes() == text


def test_redirect_stderr_keeps_the_order_of_writes(daemon):
    d = daemon()
    out = d.work / "both.log"
    d.write_config(prog("alt", writer(d, "alt", "alternate", 5000, "--exit"), startsecs=0, autorestart=False,
                        redirect_stderr=True, stdout_logfile=str(out)))
    d.start()
    d.wait_state("alt", "EXITED")
    expected = "".join(f"out {i}\nerr {i}\n" for i in range(5000)).encode()
    wait_until(lambda: size(out) == len(expected), what="all output")
    assert out.read_bytes() == expected


def test_timestamps_on_every_line_including_a_partial_last_one(daemon):
    d = daemon()
    out = d.work / "ts.log"
    # "second" arrives in two pieces: one timestamp; "partial" never gets its newline.
    d.write_config(prog("ts", writer(d, "ts", "text", "first\\nsec|ond\\nthird\\n|partial", "--exit"),
                        startsecs=0, autorestart=False, stdout_logfile=str(out), stdout_logfile_timestamps=True))
    d.start()
    d.wait_state("ts", "EXITED")
    wait_until(lambda: out.exists() and out.read_bytes().endswith(b"partial"), what="the partial line")
    data = out.read_bytes()
    lines = data.split(b"\n")
    assert [re.sub(TS, b"", line) for line in lines] == [b"first", b"second", b"third", b"partial"]
    assert all(re.match(TS, line) for line in lines), data
    assert data.count(b"second") == 1 and re.search(TS + b"second\n", data)


# ---------------------------------------------------------------------------------- rotation


def test_rotation_is_exact_and_numbered_like_supervisor(daemon):
    d = daemon()
    out = d.work / "rot.log"
    data = b"".join(b"%07d abcdefghijklmnopqrstuvwxyz\n" % i for i in range(1700))  # 59500 bytes
    (d.work / "data").write_bytes(data)
    d.write_config(prog("rot", writer(d, "rot", "copy", d.work / "data", "--exit"), startsecs=0, autorestart=False,
                        stdout_logfile=str(out), stdout_logfile_maxbytes=10000, stdout_logfile_backups=4))
    d.start()
    d.wait_state("rot", "EXITED")
    files = [Path(f"{out}.{i}") for i in (4, 3, 2, 1)] + [out]
    kept = len(data) - 10000  # 6 files' worth of bytes, 5 files kept: the oldest 10000 bytes rotated away
    wait_until(lambda: sum(max(0, size(f)) for f in files) == kept and not Path(f"{out}.5").exists(),
               what="exact totals across backups")
    assert [size(f) for f in files] == [10000, 10000, 10000, 10000, 9500]
    assert b"".join(f.read_bytes() for f in files) == data[-kept:]  # nothing lost or doubled across files


def test_rotation_with_timestamps_cuts_at_line_ends(daemon):
    d = daemon()
    out = d.work / "rot.log"
    data = b"".join(b"%05d %s\n" % (i, b"x" * (i % 50)) for i in range(2000))
    (d.work / "data").write_bytes(data)
    d.write_config(prog("rot", writer(d, "rot", "copy", d.work / "data", "--exit"), startsecs=0, autorestart=False,
                        stdout_logfile=str(out), stdout_logfile_maxbytes=8000, stdout_logfile_backups=50,
                        stdout_logfile_timestamps=True))
    d.start()
    d.wait_state("rot", "EXITED")

    def files() -> list[Path]:
        backups = sorted(out.parent.glob("rot.log.*"), key=lambda p: -int(p.suffix[1:]))
        return [*backups, out]

    def stripped() -> bytes:
        return b"".join(re.sub(b"(?m)^" + TS, b"", f.read_bytes()) for f in files())

    wait_until(lambda: stripped() == data, what="every line across the files")
    assert len(files()) > 10
    for f in files():
        content = f.read_bytes()
        assert len(content) <= 8000 and content.endswith(b"\n")
        assert all(re.match(TS, line) for line in content.splitlines())


def test_logrotate_command_rotates_now(daemon):
    d = daemon()
    out = d.work / "sig.log"
    d.write_config(prog("sig", writer(d, "sig", "on-signal"), startsecs=0, stdout_logfile=str(out)))
    d.start()
    started(d, "sig")
    wait_until(lambda: any(e.endswith("ready") for e in d.probe_events()), what="writer ready")
    assert d.ctl_bytes("signal", "USR1", "sig").returncode == 0
    wait_until(lambda: size(out) > 0, what="first line")
    r = d.ctl_bytes("logrotate", "sig")
    assert r.returncode == 0 and r.stdout.decode() == f"rotated {out}\nrotated {d.work}/logs/sig-stderr.log\n"
    assert d.ctl_bytes("signal", "USR1", "sig").returncode == 0
    wait_until(lambda: size(out) > 0, what="second line")
    assert Path(f"{out}.1").read_bytes().startswith(b"line 1 ") and out.read_bytes().startswith(b"line 2 ")
    # The tail buffer spans the rotation (its bytes are read back from the file before it moves).
    tail = d.ctl_bytes("tail", "-n", "2", "sig").stdout
    assert tail.startswith(b"line 1 ") and b"\nline 2 " in tail


# ------------------------------------------------------------------------------------ reopen


@pytest.mark.parametrize("how", ["SIGUSR2", "logreopen"])
def test_reopen_after_an_external_mv(daemon, how):
    d = daemon()
    out = d.work / "app.log"
    d.write_config(prog("app", writer(d, "app", "on-signal"), startsecs=0, stdout_logfile=str(out)))
    d.start()
    wait_until(lambda: any(e.endswith("ready") for e in d.probe_events()), what="writer ready")
    assert d.ctl_bytes("signal", "USR1", "app").returncode == 0
    wait_until(lambda: size(out) > 0, what="line 1")
    os.rename(out, d.work / "app.log.old")  # what logrotate does (without copytruncate)
    if how == "SIGUSR2":
        d.signal(signal.SIGUSR2)
        wait_until(lambda: d.events("logs_reopened"), what="reopen")
    else:
        r = d.ctl_bytes("logreopen")
        assert r.returncode == 0 and r.stdout == b"reopened 2 log files\n"  # stdout and AUTO stderr
    assert d.ctl_bytes("signal", "USR1", "app").returncode == 0
    wait_until(lambda: size(out) > 0, what="line 2 in the new file")
    assert (d.work / "app.log.old").read_bytes().startswith(b"line 1 ")
    assert out.read_bytes().startswith(b"line 2 ")


# -------------------------------------------------------------------------------------- tail


def test_tail_works_for_files_none_and_journal(daemon):
    d = daemon()
    d.write_config(prog("file", writer(d, "file", "text", "a\\nb\\nc\\n"), startsecs=0)
                   + prog("none", writer(d, "none", "text", "n1\\nn2\\n"), startsecs=0, stdout_logfile="NONE")
                   + prog("journal", writer(d, "journal", "text", "j1\\nj2\\n"), startsecs=0,
                          stdout_logfile="journal"))
    d.start()
    for name in ("file", "none", "journal"):
        started(d, name)
    wait_until(lambda: d.ctl_bytes("tail", "journal").stdout == b"j1\nj2\n", what="journal tail")
    assert d.ctl_bytes("tail", "-n", "2", "file").stdout == b"b\nc\n"
    assert d.ctl_bytes("tail", "none").stdout == b"n1\nn2\n"
    assert d.ctl_bytes("tail", "-n", "1", "none").stdout == b"n2\n"
    # journal/inherit output goes to the daemon's own stdout (journald reads it under systemd).
    assert "j1\nj2\n" in d.logfile.read_text()
    r = d.ctl_bytes("--json", "tail", "none")
    res = json.loads(r.stdout)
    assert base64.b64decode(res["data"]) == b"n1\nn2\n" and res["offset"] == 6 and res["stream"] == "stdout"
    r = d.ctl_bytes("tail", "file", "stderr")
    assert r.returncode == 0 and r.stdout == b""
    r = d.ctl_bytes("tail", "nope")
    assert r.returncode == 1


def test_tail_buffer_keeps_only_the_configured_size(daemon):
    d = daemon()
    d.write_config(prog("big", writer(d, "big", "burst", 100_000), startsecs=0, stdout_logfile="NONE",
                        stdout_tail_maxbytes=1000))
    d.start()
    wait_until(lambda: any("wrote 100000" in e for e in d.probe_events()), what="burst written")
    res = wait_until(lambda: (lambda r: r if r["offset"] == 100_000 else None)(
        json.loads(d.ctl_bytes("--json", "tail", "big").stdout)), what="all bytes seen")
    assert base64.b64decode(res["data"]) == (b"0123456789abcdef" * 4096)[:65536][-1000:]


def test_tail_follow_streams_across_a_restart(daemon):
    d = daemon()
    d.write_config(prog("app", writer(d, "app", "on-signal"), startsecs=0, stdout_logfile="AUTO"))
    d.start()
    wait_until(lambda: any(e.endswith("ready") for e in d.probe_events()), what="writer ready")
    follower = subprocess.Popen(d.ctl_argv("tail", "-f", "app"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        got = bytearray()
        os.set_blocking(follower.stdout.fileno(), False)

        def read_until(text: bytes) -> bool:
            chunk = follower.stdout.read()
            if chunk:
                got.extend(chunk)
            return text in got

        wait_until(lambda: len(d.events("control_request", cmd="tail")) >= 0 and d.ctl_bytes("signal", "USR1", "app")
                   and read_until(b"line 1 "), what="line 1 through tail -f")
        first_pid = d.status()["app"]["pid"]
        assert d.ctl_bytes("restart", "app").returncode == 0
        wait_until(lambda: sum(1 for e in d.probe_events() if e.endswith("ready")) >= 2, what="restarted writer")
        second_pid = d.status()["app"]["pid"]
        assert d.ctl_bytes("signal", "USR1", "app").returncode == 0
        wait_until(lambda: read_until(f"line 1 pid {second_pid}".encode()), what="the new process's output")
        assert f"pid {first_pid}".encode() in got
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


# ------------------------------------------------------------------------------ back-pressure


def test_a_200mb_burst_neither_blocks_status_nor_other_programs(daemon):
    d = daemon()
    total = 200 * 1024 * 1024
    out = d.work / "burst.log"
    d.write_config(prog("burst", writer(d, "burst", "burst", total), startsecs=0, autostart=False,
                        stdout_logfile=str(out), stdout_logfile_maxbytes=0)
                   + prog("tick", writer(d, "tick", "tick"), startsecs=0, stdout_logfile=str(d.work / "tick.log")))
    d.start()
    started(d, "tick")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(d.endpoint)
    try:
        assert d.ctl_bytes("start", "burst").returncode == 0
        ticks_before = (d.work / "tick.log").read_bytes().count(b"\n")
        answered = 0
        while size(out) < total:
            # Status requests during the burst, one at a time: each must come back right.
            sock.send(encode_request("status", {"names": ["tick"]}, str(answered)))
            assert sock.poll(30_000), "status went unanswered during the burst"
            reply = json.loads(sock.recv())
            assert reply["ok"] and reply["id"] == str(answered) and reply["result"][0]["state"] == "RUNNING"
            answered += 1
        ticks_during = (d.work / "tick.log").read_bytes().count(b"\n") - ticks_before
    finally:
        sock.close()
        ctx.term()
    assert size(out) == total  # not a byte lost or added
    assert answered >= 10, answered  # the loop kept serving the control socket throughout
    assert ticks_during >= 1  # another program's output kept flowing
    assert d.status()["burst"]["output_dropped_bytes"] == 0


def test_a_full_disk_drops_output_without_blocking_the_child(daemon):
    d = daemon()
    # /dev/full fails every write with ENOSPC: a disk that is always full.
    d.write_config(prog("full", writer(d, "full", "burst", 5_000_000, "--exit"), startsecs=0, autorestart=False,
                        stdout_logfile="/dev/full"))
    d.start()
    d.wait_state("full", "EXITED")  # it was never blocked: it wrote everything and exited
    st = wait_until(lambda: (lambda s: s if s["output_dropped_bytes"] == 5_000_000 else None)(d.status()["full"]),
                    what="dropped bytes counted")
    assert st["state"] == "EXITED"
    failed = d.events("log_write_failed")
    assert len(failed) == 1 and failed[0]["path"] == "/dev/full" and "No space left" in failed[0]["error"]
    assert b"5000000 bytes of output dropped" in d.ctl_bytes("status", "full").stdout
    assert len(d.ctl_bytes("tail", "-n", "0", "full").stdout) == 65536  # the tail buffer still has the newest


def test_an_unwritable_log_path_is_logged_once_and_the_child_runs(daemon):
    d = daemon()
    d.write_config(prog("app", writer(d, "app", "tick"), startsecs=0,
                        stdout_logfile=str(d.work / "no-such-dir" / "app.log")))
    d.start()
    wait_until(lambda: d.status()["app"]["output_dropped_bytes"] > 100, what="drops counted")
    assert d.status()["app"]["state"] == "RUNNING"
    [ev] = d.events("log_write_failed")
    assert "No such file or directory" in ev["error"]
    assert b"tick " in d.ctl_bytes("tail", "app").stdout


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_then_freed_recovers_and_counts_the_gap(daemon):
    d = daemon()
    disk = d.work / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        out = disk / "app.log"
        d.write_config(prog("app", writer(d, "app", "tick"), startsecs=0, autostart=False, stdout_logfile=str(out),
                            stdout_logfile_maxbytes=0)
                       + prog("filler", writer(d, "filler", "burst", 2_000_000, "--exit"), startsecs=0,
                              autorestart=False, stdout_logfile=str(disk / "filler.log"), stdout_logfile_maxbytes=0))
        d.start()
        d.wait_state("filler", "EXITED")
        wait_until(lambda: d.events("log_write_failed", path=str(disk / "filler.log")), what="the disk full")
        assert d.ctl_bytes("start", "app").returncode == 0
        wait_until(lambda: d.events("log_write_failed", path=str(out)), what="app's writes failing")
        # Free the space: the filler exited, so procguard closed its file and the unlink frees its blocks.
        (disk / "filler.log").unlink()
        [ev] = wait_until(lambda: d.events("log_write_recovered", path=str(out)), 15, "recovery")
        assert ev["dropped_bytes"] > 0
        before = size(out)
        wait_until(lambda: size(out) > before + 20, what="ticks written again")
        st = d.status()["app"]
        assert st["state"] == "RUNNING" and st["output_dropped_bytes"] == ev["dropped_bytes"]
        assert len(d.events("log_write_failed", path=str(out))) == 1  # once per episode, not per write
    finally:
        d.stop()
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------------------- shutdown


def test_everything_written_before_exit_is_in_the_file_at_shutdown(daemon):
    d = daemon()
    out = d.work / "drain.log"
    # On SIGTERM the child writes 8 MiB (many pipe-fulls) and "bye", then exits at once.
    d.write_config(prog("drain", writer(d, "drain", "drain-on-term", 8 * 1024 * 1024), startsecs=0,
                        stdout_logfile=str(out), stdout_logfile_maxbytes=0))
    d.start()
    wait_until(lambda: any(e.endswith("ready") for e in d.probe_events()), what="writer ready")
    assert d.stop() == 0
    data = out.read_bytes()
    assert len(data) == 8 * 1024 * 1024 + 4 and data.endswith(b"xbye\n")


def test_copytruncate_goes_on_from_the_new_end_without_a_hole(daemon):
    d = daemon()
    out = d.work / "app.log"
    d.write_config(prog("app", writer(d, "app", "on-signal"), startsecs=0, stdout_logfile=str(out)))
    d.start()
    wait_until(lambda: any(e.endswith("ready") for e in d.probe_events()), what="writer ready")
    assert d.ctl_bytes("signal", "USR1", "app").returncode == 0
    wait_until(lambda: size(out) > 0, what="line 1")
    os.truncate(out, 0)  # logrotate's copytruncate
    assert d.ctl_bytes("signal", "USR1", "app").returncode == 0
    wait_until(lambda: size(out) > 0, what="line 2")
    assert out.read_bytes().startswith(b"line 2 ")  # not NUL bytes up to the old offset
