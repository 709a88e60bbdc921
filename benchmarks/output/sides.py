"""The output benchmark's sides: each way of capturing the child's stdout (a daemon's program, or the file
itself), how its child starts and whose CPU counts (bench_output.py's docstring says how they are used)."""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness.peers import Program, System, make
from benchmarks.harness.run import CHILD_PYTHON, Bench
from benchmarks.output.stream import CHILD_SOURCE


@dataclass(kw_only=True)
class Side:
    """One way of capturing the child's stdout: where the file is, how to start the child, whose CPU."""

    key: str
    label: str
    kind: str  # the daemon's (peers.SYSTEMS), "" for none
    work: Path
    argv: list[str]
    stamped: bool = False
    capture: Path = field(init=False)
    side_file: Path = field(init=False)
    fifo: Path = field(init=False)

    def __post_init__(self) -> None:
        self.capture = self.work / "out.log"
        self.side_file = self.work / "child.side"
        self.fifo = self.work / "go.fifo"

    @property
    def keeps_file_open(self) -> bool:
        """The daemon keeps the capture open after the child exits (no 2 s wait for it): supervisord's
        handler stays open until the next spawn, circus's FileStream for the daemon's life."""
        return self.kind in ("supervisord", "circus")

    def prepare(self, bench: Bench) -> None:
        """Make the working directory; start the daemon, if any, idle until the first run."""
        raise NotImplementedError

    def start_child(self) -> None:
        raise NotImplementedError

    def daemon_pid(self) -> int | None:
        return None

    def after_child(self) -> None:
        """The child is gone: let the side reap or forget it before the next run."""

    def reset_capture(self) -> None:
        """Make the capture file absent or empty before a run and after it (it is verified in between)."""
        self.capture.unlink(missing_ok=True)


def child_argv(script: Path, n: int, work: Path) -> list[str]:
    return [CHILD_PYTHON, "-S", str(script), str(n), str(work / "child.side"), str(work / "go.fifo")]


class DaemonSide(Side):
    """The child as program `writer` (autostart and autorestart false) of a procguard, supervisord or circus
    daemon (peers.py renders the configs), started with the daemon's own control CLI."""

    system: System

    def prepare(self, bench: Bench) -> None:
        keys = {"stdout_logfile_timestamps": True} if self.stamped else {}
        prog = Program(name="writer", argv=tuple(self.argv), autostart=False, autorestart=False,
                       stdout=str(self.capture), procguard_keys=keys)
        self.system = make(self.kind, bench, f"output-{self.key}", [prog])
        self.system.start()
        self.system.wait_control()

    def start_child(self) -> None:
        self.system.run_ctl("start", "writer")
        self.system.check_alive()

    def daemon_pid(self) -> int | None:
        return self.system.pid

    def after_child(self) -> None:
        if self.kind == "circus":
            # With respawn = false the watcher stays "active" after its process exits, and a second
            # `start` is a no-op: stop it so the next run's `start` spawns again.
            self.system.run_ctl("stop", "writer")

    def reset_capture(self) -> None:
        if self.kind != "circus":
            return super().reset_capture()
        # circus opens the FileStream once, when it loads the config, and keeps it open (mode 'a+'):
        # a deleted file would swallow the next run. Truncate in place; O_APPEND writes land at 0.
        with open(self.capture, "wb"):
            pass


class DirectSide(Side):
    """Reference: the child's stdout is the file itself (opened by this script), no daemon in between."""

    bench: Bench
    proc: subprocess.Popen[bytes] | None = None

    def prepare(self, bench: Bench) -> None:
        self.work.mkdir()
        self.bench = bench

    def start_child(self) -> None:
        with open(self.capture, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.DEVNULL, close_fds=True)
        self.bench.plain_children.append(self.proc)

    def after_child(self) -> None:
        if self.proc is not None:
            self.proc.wait()


SIDES = (  # key, label, daemon kind ("": none), timestamps
    ("a", "procguard", "procguard", False),
    ("b", "procguard, timestamps", "procguard", True),
    ("c", "supervisord", "supervisord", False),
    ("d", "direct to file (no daemon)", "", False),
    ("e", "circus", "circus", False))


def prepare_sides(bench: Bench, n: int, keys: str) -> list[Side]:
    """The sides named by keys, each daemon started and idle, each child's FIFO made."""
    script = bench.root / "child.py"
    script.write_text(CHILD_SOURCE)
    sides: list[Side] = []
    for key, label, kind, stamped in SIDES:
        if key not in keys:
            continue
        work = bench.root / (f"{kind}-output-{key}" if kind else f"{key}-direct")  # make() names it so
        argv = child_argv(script, n, work)
        cls = DaemonSide if kind else DirectSide
        new = cls(key=key, label=label, kind=kind, work=work, argv=argv, stamped=stamped)
        bench.known_cmdlines.append(argv)
        new.prepare(bench)
        os.mkfifo(new.fifo)
        sides.append(new)
    return sides
