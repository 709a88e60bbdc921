"""`procguardctl top` driven in a real terminal (tmux: send-keys, capture-pane), and its plain fallback (issue #18 item 4)."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO, DaemonRun, probe, prog, wait_until

TMUX = shutil.which("tmux")


class Tmux:
    """A private tmux server (its own socket in the test's directory) with one 160x40 pane running a shell."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.socket = str(work / "tmux.sock")
        rc = work / "bashrc"
        rc.write_text("PS1='pgtest$ '\n")  # bash takes no PS1 from the environment here
        self.run("-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "40",
                 f"bash --noprofile --rcfile {shlex.quote(str(rc))}", env=env)

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        assert TMUX is not None
        return subprocess.run([TMUX, "-S", self.socket, *args], check=True, capture_output=True, text=True,
                              timeout=30, env=env).stdout

    def type(self, line: str) -> None:
        self.run("send-keys", "-t", "0", "-l", line)
        self.run("send-keys", "-t", "0", "Enter")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "0", *keys)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "0")

    def wait_for(self, pred: Callable[[str], object], what: str, timeout: float = 30.0) -> str:
        last = [""]

        def ready() -> str:
            last[0] = self.screen()
            return last[0] if pred(last[0]) else ""

        try:
            return wait_until(ready, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe screen:\n{last[0]}") from None

    def close(self) -> None:
        subprocess.run([TMUX or "tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Tmux]]:
    made: list[Tmux] = []

    def make(env: dict[str, str]) -> Tmux:
        t = Tmux(tmp_path, env)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def pid_on_screen(screen: str, name: str) -> int | None:
    for line in screen.splitlines():
        cells = line.split()
        if cells and cells[0] == name and len(cells) > 3 and cells[3].isdigit():
            return int(cells[3])
    return None


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (./dev test installs it in CI)")
def test_top_shows_every_process_restarts_the_selected_one_and_quits_cleanly(
        daemon: Callable[[str], DaemonRun], terminal: Callable[[dict[str, str]], Tmux]) -> None:
    d = daemon(prog("web", probe("WORK", "web"), startsecs=0)
               + prog("worker", probe("WORK", "worker"), startsecs=0, numprocs=2,
                      process_name="worker_{process_num:02d}"))
    d.write_config(d.config.read_text().replace("WORK", str(d.work)))
    d.start()
    d.wait_reports("web")
    d.wait_reports("worker", count=2)
    for name in ("web", "worker:worker_00", "worker:worker_01"):
        d.wait_state(name, "RUNNING")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(d.work), "TERM": "xterm-256color",
           "LANG": "C.UTF-8", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    tmux = terminal(env)
    tmux.wait_for(lambda s: "pgtest$" in s, "the shell prompt")
    top = f"{shlex.quote(sys.executable)} -m procguardctl -s {d.endpoint} top"
    tmux.type(f"cd {shlex.quote(str(REPO))}")
    tmux.type(top + " -d 0.5")
    screen = tmux.wait_for(lambda s: all(pid_on_screen(s, n) for n in ("web", "worker:worker_00", "worker:worker_01"))
                           and "latest events" in s, "every process with its pid in top")
    before = {n: pid_on_screen(screen, n) for n in ("web", "worker:worker_00", "worker:worker_01")}
    assert "RUNNING" in screen and "procguard top" in screen and "q quit" in screen
    # The third row is worker_01: two steps down, then r.
    tmux.keys("Down", "Down")
    tmux.keys("r")
    screen = tmux.wait_for(lambda s: pid_on_screen(s, "worker:worker_01") not in (None, before["worker:worker_01"]),
                           "worker_01's new pid after r")
    second = d.wait_reports("worker", count=3)[2]
    assert pid_on_screen(screen, "worker:worker_01") == second["pid"]
    assert {n: pid_on_screen(screen, n) for n in ("web", "worker:worker_00")} == \
        {n: before[n] for n in ("web", "worker:worker_00")}
    tmux.wait_for(lambda s: "restart worker:worker_01: started" in s, "the restart's outcome on the message line")
    tmux.wait_for(lambda s: re.search(r"worker:worker_01 pid \d+ process_restarting cause=restart", s),
                  "the restart in the latest events pane")
    # q: back to the shell, whose terminal still echoes and reads lines (curses restored it).
    tmux.keys("q")
    tmux.wait_for(lambda s: "procguard top" not in s and "pgtest$" in s, "the shell again after q")
    tmux.type("stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e icanon -e -echo -e -icanon | sort | tr '\\n' ' '; "
              "echo MARK-$((6*7))")
    screen = tmux.wait_for(lambda s: "MARK-42" in s.replace("MARK-$((6*7))", ""), "the command's output")
    assert "echo icanon MARK-42" in screen, screen  # typed text echoed, canonical mode, no -echo/-icanon
    # The dumb-terminal fallback: a plain table, no full-screen drawing.
    tmux.type(f"clear; TERM=dumb {top} -n 2 -d 0.2; echo TOP-EXIT-$?")
    screen = tmux.wait_for(lambda s: "TOP-EXIT-0" in s, "top -n 2 on TERM=dumb to finish")
    assert screen.count("procguard top") == 2 and screen.count("latest events:") == 2
    for name in ("web", "worker:worker_00", "worker:worker_01"):
        assert screen.count(f"\n{name} ") == 2, screen


def test_top_without_a_terminal_prints_a_plain_table(daemon: Callable[[str], DaemonRun]) -> None:
    d = daemon(prog("web", probe("WORK", "web"), startsecs=0))
    d.write_config(d.config.read_text().replace("WORK", str(d.work)))
    d.start()
    pid = d.wait_reports("web")[0]["pid"]
    d.wait_state("web", "RUNNING")
    out = subprocess.run([sys.executable, "-m", "procguardctl", "-s", d.endpoint, "top", "-n", "3", "-d", "0.2"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "TERM": "xterm"},
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout  # no escape sequences into a pipe
    blocks = [b for b in out.stdout.split("\n\n") if b.strip()]
    assert len(blocks) == 3
    for block in blocks:
        [row] = [line for line in block.splitlines() if line.startswith("web ")]
        cells = row.split()
        assert cells[1] == "RUNNING" and int(cells[3]) == pid and cells[7] == "0"
    events = blocks[0].split("latest events:")[1]
    assert re.search(rf"web pid {pid} process_state_changed old=STARTING new=RUNNING", events), events
    # CPU% needs two samples: the first block has none, the later ones a number.
    assert re.match(r"^\d+\.\d$", [ln for ln in blocks[2].splitlines() if ln.startswith("web ")][0].split()[5])


def test_top_says_when_the_daemon_is_not_there(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "procguardctl", "-s", f"ipc://{tmp_path}/none.sock", "top"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 4
    assert "no socket there" in out.stderr
