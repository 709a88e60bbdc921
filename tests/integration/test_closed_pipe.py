"""procguardctl ends quietly when the reader of its output goes away, as cat does (issue #14, item 3).

`procguardctl status -l | head -1` used to end in a BrokenPipeError traceback.
"""

import os
import subprocess
import sys

from tests.helpers import REPO, DaemonRun, prog, wait_until

EXIT_BROKEN_PIPE = 141  # what a shell reports for cat killed by SIGPIPE: 128 + 13


def piped_into_head(d: DaemonRun, *args: str, lines: int = 1) -> tuple[int, str, str]:
    """Run `procguardctl ARGS | head -LINES` with real pipes; return (ctl's exit code, its stderr, head's output)."""
    ctl = subprocess.Popen(d.ctl_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    head = subprocess.Popen(["head", f"-{lines}"], stdin=ctl.stdout, stdout=subprocess.PIPE)
    assert ctl.stdout is not None and ctl.stderr is not None
    ctl.stdout.close()  # head alone holds the read end: when it exits, the pipe has no reader
    shown, _ = head.communicate(timeout=60)
    err = ctl.stderr.read().decode(errors="replace")
    return ctl.wait(timeout=60), err, shown.decode()


def test_status_piped_into_head_ends_quietly(daemon):
    d = daemon()
    # 2000 processes (none started): every status listing is far more than a pipe holds (64 KiB).
    d.write_config(prog("many", ["sleep", "3600"], numprocs=2000, process_name="many_{process_num:04d}",
                        autostart=False))
    d.start()
    for args in (("status", "-l"), ("status",), ("--json", "status"), ("avail",)):
        code, err, shown = piped_into_head(d, *args)
        assert "Traceback" not in err and "BrokenPipeError" not in err and err == "", (args, err)
        assert code == EXIT_BROKEN_PIPE, (args, code, err)
        assert shown.count("\n") == 1 and shown.strip(), (args, shown)


def test_short_output_to_a_pipe_already_closed_ends_quietly(daemon):
    d = daemon()
    d.write_config(prog("one", ["sleep", "3600"], autostart=False))
    d.start()
    for args in (("version",), ("status",), ("pid",)):
        r, w = os.pipe()
        os.close(r)  # the reader is gone before procguardctl writes its one line
        try:
            done = subprocess.run(d.ctl_argv(*args), stdout=w, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, timeout=60)
        finally:
            os.close(w)
        err = done.stderr.decode(errors="replace")
        assert err == "" and done.returncode == EXIT_BROKEN_PIPE, (args, done.returncode, err)


def test_tail_follow_piped_into_head_ends_quietly(daemon):
    d = daemon()
    writer = [sys.executable, str(REPO / "tests" / "programs" / "writer.py"), "--dir", str(d.work),
              "--name", "ticker", "tick"]
    d.write_config(prog("ticker", writer, startsecs=0))
    d.start()
    wait_until(lambda: [l for l in d.probe_events() if l.startswith("ticker ")], what="ticker started")
    # head leaves after two lines while `tail -f` keeps following: its next write has no reader.
    code, err, shown = piped_into_head(d, "tail", "-f", "ticker", lines=2)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert code == EXIT_BROKEN_PIPE, (code, err)
    assert shown.count("tick") == 2, shown
