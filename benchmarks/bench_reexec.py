"""`procguardctl reexec` with N programs: how long the control socket does not answer, and failed requests.

    .venv/bin/python benchmarks/bench_reexec.py [--programs 1000] [--runs 3] [--clients 2]

Issue #19: the control socket's unavailable time during a re-exec with 1000 programs (aim: under 300 ms)
and zero failed requests. N programs of `sleep 100000`, all RUNNING; `clients` threads send `version`
back to back through procguardctl.client.request (30 s timeout) while this script asks for `reexec`.
Per run: unavailable (the `reexec` reply -> the new image's first `version` reply); the daemon's CPU over
that span (it goes on across exec); the daemon's own split from its log (saving, the new image's start,
adopting, adopted -> ready), in wall and CPU time, the config's share split off; the longest gap any
client saw; requests that ended in an error (a connection closed by exec) or a timeout (must be 0); every
pid the same after (else the run fails). Last, in this process: the new image's CPU for the config,
loaded from the files against carried from the pre-flight.

Bytecode is compiled first, as pip does on install. Prints figures, never asserts speed. Cleanup: SIGTERM
to the daemon (SIGKILL after 60 s), every recorded child still alive killed, the temp directory removed.
"""

import argparse
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from benchmarks.harness.run import SeenPids  # noqa: E402
from procguardctl.client import TimedOut, Unreachable, request  # noqa: E402
from procguardctl.endpoint import ClientSettings  # noqa: E402

AIM_MS = 300.0


class Clients:
    """Threads sending `cmd` back to back through procguardctl's client; each reply's time, each error.
    (tests/integration/test_reexec.py uses it too.)"""

    def __init__(self, endpoint: str | ClientSettings, n: int, cmd: str = "version") -> None:
        self.settings = endpoint if isinstance(endpoint, ClientSettings) else ClientSettings(endpoint)
        self.cmd = cmd
        self.replies: list[float] = []
        self.errors: list[str] = []  # error replies, and connections closed by the exec (Unreachable)
        self.hangs = 0  # requests that timed out (30 s)
        self.crashes: list[str] = []  # anything else the client raised: a bug of its own
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = request(self.settings, self.cmd, {}, 30.0)
                with self._lock:
                    self.replies.append(time.monotonic()) if reply.ok else self.errors.append(str(reply.message))
            except Unreachable as exc:
                with self._lock:
                    self.errors.append(str(exc))
            except TimedOut:
                with self._lock:
                    self.hangs += 1
            except Exception as exc:
                with self._lock:
                    self.crashes.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def status(endpoint: str) -> list[dict[str, Any]]:
    reply = request(ClientSettings(endpoint), "status", {}, 60.0)
    assert reply.ok, reply.message
    return list(reply.result)


def log_event(logfile: Path, event: str, nth: int, *others: str) -> dict[str, Any]:
    """The nth (1-based) `event` (or one of `others`) line of the daemon's JSON log, with its wall time as
    "at" (epoch s)."""
    seen = 0
    for line in logfile.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") in (event, *others):
            seen += 1
            if seen == nth:
                return dict(ev, at=datetime.fromisoformat(ev["timestamp"]).timestamp())
    raise SystemExit(f"bench_reexec: no {event} #{nth} in {logfile}")


def phases(logfile: Path, n: int) -> tuple[str, dict[str, float]]:
    """The daemon's own split of the nth re-exec, from its log: saving, the new image's start (interpreter,
    imports, config) until it adopted, adopting, and serving again; wall, then CPU where the log has it."""
    saved = log_event(logfile, "daemon_reexec", n)
    adopted = log_event(logfile, "processes_adopted", n)
    ready = log_event(logfile, "daemon_ready", n + 1)
    wall = (f"save {saved['saved_ms']:.0f} ms ({saved['state_bytes']} bytes), exec->adopt "
            f"{(adopted['at'] - saved['at']) * 1e3 - adopted['took_ms']:.0f} ms, adopt {adopted['took_ms']:.0f} ms, "
            f"adopted->ready {(ready['at'] - adopted['at']) * 1e3:.0f} ms")
    if "cpu_ms" not in saved:  # an image from before the log carried CPU times
        return wall, {}
    config = log_event(logfile, "reexec_config_carried", n, "reexec_config_loaded")
    cpu = {"save": saved["saved_cpu_ms"], "interpreter+imports": config["started_cpu_ms"] - saved["cpu_ms"],
           "state+config": config["cpu_ms"] - config["started_cpu_ms"],
           "setup+adopt": adopted["cpu_ms"] - config["cpu_ms"], "adopted->ready": ready["cpu_ms"] - adopted["cpu_ms"]}
    how = "carried" if config["event"] == "reexec_config_carried" else f"loaded ({config['reason']})"
    return (wall + "; CPU: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + f" ms; config {how}"), cpu


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = pred()
        except Unreachable:  # a daemon still starting (or a very busy machine): ask again
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"bench_reexec: timed out waiting for {what}")


def run(programs: int, runs: int, clients: int) -> int:
    # An installed procguard has its bytecode compiled (pip does it); a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module again at each exec and time that instead.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "procguard"), str(REPO / "procguardctl")],
                   check=True)
    work = Path(tempfile.mkdtemp(prefix="procguard-bench-reexec-"))
    endpoint = f"ipc://{work}/control.sock"
    config = work / "procguard.toml"
    lines = [f'[procguard]\nlogdir = "{work}/logs"\ncontrol = "{endpoint}"\n']
    for i in range(programs):
        lines.append(f'[program.p{i:04d}]\ncommand = ["sleep", "100000"]\nstartsecs = 0\nstdout_logfile = "NONE"\n'
                     'stderr_logfile = "NONE"\n')
    config.write_text("\n".join(lines))
    logfile = work / "daemon.log"
    children = SeenPids()
    with open(logfile, "ab") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "procguard", "-c", str(config), "--log-format", "json"],
                                  stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(REPO))
    try:
        wait(lambda: logfile.exists() and "daemon_started" in logfile.read_text(errors="replace"), 60, "start")
        wait(lambda: sum(s["state"] == "RUNNING" for s in status(endpoint)) == programs, 120, "all RUNNING")
        print(f"bench_reexec: {programs} programs RUNNING under pid {daemon.pid}; {clients} clients; {runs} runs")
        rows, splits = [], []
        for n in range(1, runs + 1):
            row, cpu_split = one_round(endpoint, daemon.pid, logfile, n, clients, children)
            rows.append(row)
            splits.append(cpu_split)
        summary(rows, splits, runs)
        config_cost(config)
        return 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        for pid in children.last_seen:  # one that survived the daemon's shutdown, and still ours (not a reused pid)
            try:
                proc = psutil.Process(pid)
                if proc.cmdline() == ["sleep", "100000"] and children.ours(proc):
                    os.kill(pid, signal.SIGKILL)
                    print(f"bench_reexec: killed a survivor, pid {pid}", file=sys.stderr)
            except (psutil.Error, ProcessLookupError):
                pass
        shutil.rmtree(work, ignore_errors=True)


Row = tuple[float, float, int, int, int, float]  # unavailable ms, longest gap ms, replies, errors, hangs, CPU ms


def one_round(endpoint: str, dpid: int, logfile: Path, n: int, clients: int, children: SeenPids
              ) -> tuple[Row, dict[str, float]]:
    """One re-exec under `clients` clients: its figures, checked to keep every pid."""
    before = {s["name"]: s["pid"] for s in status(endpoint)}
    children.update(before.values())
    load = Clients(endpoint, clients)
    wait(lambda: len(load.replies) >= 5, 30, "clients answered")
    reply = request(ClientSettings(endpoint), "reexec", {}, 120.0)
    replied = time.monotonic()
    cpu_before = sum(psutil.Process(dpid).cpu_times()[:2])
    if not reply.ok:
        load.stop()
        raise SystemExit(f"bench_reexec: reexec refused: {reply.message}")
    while True:  # the prober: the first answer from the new image
        try:
            if request(ClientSettings(endpoint), "version", {}, 60.0).ok:
                break
        except Unreachable:
            continue
    unavailable_ms = (time.monotonic() - replied) * 1e3
    cpu_ms = (sum(psutil.Process(dpid).cpu_times()[:2]) - cpu_before) * 1e3
    wait(lambda: len(load.replies) > 0 and load.replies[-1] > replied + 0.2, 30, "clients after the exec")
    load.stop()
    after = {s["name"]: s["pid"] for s in status(endpoint)}
    if after != before:
        raise SystemExit(f"bench_reexec: pids changed across the re-exec: "
                         f"{sum(before[k] != after.get(k) for k in before)} of {len(before)}")
    times = sorted(load.replies)
    gap_ms = max((b - a for a, b in zip(times, times[1:])), default=0.0) * 1e3
    split, cpu_split = phases(logfile, n)
    print(f"  run {n}: unavailable {unavailable_ms:.0f} ms (aim {AIM_MS:.0f}: ratio "
          f"{unavailable_ms / AIM_MS:.2f}), daemon CPU meanwhile {cpu_ms:.0f} ms; {split}; longest gap {gap_ms:.0f} ms; "
          f"{len(load.replies)} replies, {len(load.errors)} errors, {load.hangs} timeouts; pids kept")
    return (unavailable_ms, gap_ms, len(load.replies), len(load.errors), load.hangs, cpu_ms), cpu_split


def summary(rows: list[Row], splits: list[dict[str, float]], runs: int) -> None:
    med = statistics.median(r[0] for r in rows)
    print(f"bench_reexec: unavailable median {med:.0f} ms over {runs} runs (aim {AIM_MS:.0f} ms, ratio "
          f"{med / AIM_MS:.2f}; the daemon's CPU meanwhile, median {statistics.median(r[5] for r in rows):.0f} "
          f"ms: the figure on an idle machine); failed requests {sum(r[3] for r in rows)} errors + "
          f"{sum(r[4] for r in rows)} timeouts of {sum(r[2] + r[3] + r[4] for r in rows)}")
    if all(splits):
        print("bench_reexec: the daemon's CPU split, median ms: " + ", ".join(
            f"{k} {statistics.median(s[k] for s in splits):.0f}" for k in splits[0]))


def config_cost(config: Path, repeat: int = 7) -> None:
    """In this process, CPU ms (least and median of `repeat`): the new image loading the config files,
    against reading the config the pre-flight carried over (upgrade/carried.py, its checks included)."""
    try:
        from procguard.upgrade import carried
    except ImportError:  # a tree from before the config was carried
        return
    from procguard.config.load import load_config

    loaded, fingerprint = carried.load_recorded(lambda: load_config(str(config)))
    pickled = io.BytesIO()
    carried.write(pickled, loaded, fingerprint)  # the pre-flight's part, not timed

    def from_carry() -> None:
        fd = os.memfd_create("bench-config")
        os.write(fd, pickled.getvalue())
        assert carried.read(fd, str(config))[1] == carried.Mismatch.NONE

    for what, f in (("load_config", lambda: load_config(str(config))), ("carried.read", from_carry)):
        times = []
        for _ in range(repeat):
            began = time.process_time()
            f()
            times.append((time.process_time() - began) * 1e3)
        print(f"bench_reexec: config in the new image, {what}: {min(times):.0f} ms CPU least, "
              f"{statistics.median(times):.0f} median of {repeat}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    return run(args.programs, args.runs, args.clients)


if __name__ == "__main__":
    sys.exit(main())
