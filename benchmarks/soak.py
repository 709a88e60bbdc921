"""A soak: a real daemon under HTTP load with random faults for N minutes (issue #20, item 4).

    python -m benchmarks soak --minutes N [--programs 6] [--seed 20] [--json OUT]

The daemon runs recorder programs (procguard/testing/recorder.py: checksummed, numbered records; some with
a worker, one as nobody, one with an exec health check) and a web server (tests/programs/fdserver.py)
on a socket procguard holds, with drain_timeout. Clients request the web server without pause. Every
1-3 s a random fault: SIGKILL or SIGSTOP/SIGCONT of a child, a chosen exit code, stop + start, restart
(of the web server too), a config reload that changes a program, logrotate, SIGUSR2 to the daemon, a
failing health check, and `deploy` when the daemon has that command. Every 10 s the invariants of
procguard/testing/world.py are checked against /proc, the files and the socket.

Reported: survivors after shutdown, lost bytes (records a child wrote that are not in its file),
failed requests, invariant violations, and the daemon's RSS, descriptors and threads after a warm-up
and at the end. Figures, not assertions; the exit status is 1 if anything was lost or survived.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.load import Load  # noqa: E402
from benchmarks.harness.procs import free_port  # noqa: E402
from benchmarks.harness.run import REPO  # noqa: E402
from procguard.testing.world import DOWN, UP, Expect, Spec, World  # noqa: E402
from procguard.testing.recorder import record  # noqa: E402

FDSERVER = str(REPO / "tests" / "programs" / "fdserver.py")
try:
    from procguard.protocol import COMMANDS
    HAS_DEPLOY = "deploy" in COMMANDS  # extension point: deploys, once the daemon has the command
except ImportError:  # pragma: no cover
    HAS_DEPLOY = False


def daemon_figures(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status}
    # Descriptors: the least of 20 looks (a spawn's pipes or a health check's socket come and go).
    fds = min(len(os.listdir(f"/proc/{pid}/fd")) for _ in range(20))
    return {"rss_kib": int(field["VmRSS"].split()[0]), "threads": int(field["Threads"]), "fds": fds}


def lost_bytes(w: World) -> dict[str, int]:
    """Per program: bytes of records its children reported written that are not in its files."""
    out: dict[str, int] = {}
    owners = w.owners()
    for name in w.specs.keys() | w.removed:
        data = w.output(name)
        have: Counter[int] = Counter()
        for line in data.split(b"\n"):
            parts = line.split(b" ")
            if len(parts) == 5 and parts[0] == b"R" and record(int(parts[1]), int(parts[2])) == line + b"\n":
                have[int(parts[1])] += len(line) + 1
        lost = 0
        for pid in owners.get(name, []):
            wrote = sum(len(record(pid, s)) for s in range(w.written(pid) + 1))
            lost += max(0, wrote - have[pid])
        out[name] = lost
    return out


FAULTS = ["kill", "stop-cont", "exit", "stop-start", "restart", "restart-web", "reload", "logrotate", "usr2",
          "unhealthy"] + (["deploy"] if HAS_DEPLOY else [])


def inject(w: World, fault: str, name: str, rng: random.Random, dpid: int, names: list[str]) -> None:
    """One fault of FAULTS on program `name` (or the web server, or the daemon dpid)."""
    assert w.ctl is not None
    pid = w.status()[name]["pid"]
    if fault == "kill" and pid:
        os.kill(pid, signal.SIGKILL)
    elif fault == "stop-cont" and pid:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(rng.uniform(0.1, 1.0))
        os.kill(pid, signal.SIGCONT)
    elif fault == "exit" and pid:
        (w.run.work / "cmd" / str(pid)).write_text(f"exit {rng.choice([0, 1, 2])}")
    elif fault == "stop-start":
        w.ctl.request("stop", {"names": [name]}, 120)
        w.check_gone([name])
        w.ctl.request("start", {"names": [name]}, 120)
    elif fault == "restart":
        w.ctl.request("restart", {"names": [name]}, 120)
    elif fault == "restart-web":
        w.ctl.request("restart", {"names": ["web"]}, 120)
    elif fault == "reload":
        old = w.specs[name]
        w.specs[name] = replace(old, umask=0o022 if old.umask != 0o022 else 0o027)
        w.write_config()
        reply = w.ctl.request("reload", {}, 120)
        assert reply["ok"], reply
    elif fault == "logrotate":
        w.ctl.request("logrotate", {"names": [name]}, 60)
    elif fault == "usr2":
        os.kill(dpid, signal.SIGUSR2)
    elif fault == "unhealthy":
        mark = w.run.work / f"unhealthy-{names[3] if len(names) > 3 else name}"
        mark.touch()
        time.sleep(rng.uniform(0.5, 2.0))
        mark.unlink()
    elif fault == "deploy":  # pragma: no cover - once the daemon has it
        w.ctl.request("deploy", {"names": ["web"]}, 300)


def run_soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    names = [f"r{i}" for i in range(args.programs)]
    specs = [Spec(n, worker=(i % 2 == 1), user="nobody" if i == 2 else "root", health=(i == 3),
                  umask=0o027 if i % 3 == 0 else 0o022) for i, n in enumerate(names)]
    w = World.create(specs)
    port = free_port()
    w.extra_names = frozenset({"web"})
    w.extra_toml = (
        f'[socket.web]\nbind = "tcp://127.0.0.1:{port}"\nbacklog = 1024\n\n'
        f'[program.web]\ncommand = {json.dumps([sys.executable, FDSERVER, "--dir", str(w.run.work), "--name", "web"])}\n'
        'sockets = ["web"]\ndrain_timeout = "10s"\nstartsecs = 0\n\n')
    w.write_config()
    t_start = time.monotonic()
    deadline = t_start + args.minutes * 60
    warmup_s = min(60.0, args.minutes * 60 * 0.1)
    faults: Counter[str] = Counter()
    violations: list[str] = []
    figures: dict[str, Any] = {}
    load = Load(port, interval_s=0.0, timeout_s=30.0, error_pause_s=0.05, keep_hits=False)
    stopped: set[str] = set()
    code = 0
    try:
        w.start()
        assert w.run.proc is not None and w.ctl is not None
        dpid = w.run.proc.pid
        load.start()
        last_check = time.monotonic()
        while time.monotonic() < deadline:
            if "start" not in figures and time.monotonic() - t_start >= warmup_s:
                figures["start"] = daemon_figures(dpid)
                print(f"soak: after {warmup_s:.0f} s of warm-up: {figures['start']}", flush=True)
            time.sleep(rng.uniform(1.0, 3.0))
            fault = rng.choice(FAULTS)
            name = rng.choice(names)
            faults[fault] += 1
            try:
                inject(w, fault, name, rng, dpid, names)
            except (ProcessLookupError, FileNotFoundError):
                pass
            except AssertionError as exc:
                violations.append(f"{fault} {name}: {exc}")
            for n in names:
                w.expect[n] = Expect(UP if n not in stopped else DOWN, "soak")
            if time.monotonic() - last_check > 10:
                last_check = time.monotonic()
                try:
                    w.check(timeout_s=60)
                except AssertionError as exc:
                    violations.append(str(exc))
                    print(f"soak: VIOLATION {exc}", flush=True)
        figures["end"] = daemon_figures(dpid)
    finally:
        load.stop()
        exit_code: int | None
        try:
            if w.ctl is not None:
                w.ctl.close()
                w.ctl = None
            exit_code = w.run.stop(timeout=120) if w.run.proc is not None else None
        except Exception as exc:  # noqa: BLE001
            exit_code = None
            violations.append(f"shutdown: {exc!r}")
        owners = w.owners()
        survivors = [p for ps in owners.values() for p in ps if _alive(p)]
        lost = lost_bytes(w)
        killed = w.cleanup()
    elapsed = time.monotonic() - t_start
    result = {
        "minutes": args.minutes, "elapsed_s": round(elapsed, 1), "load_avg_end": os.getloadavg(),
        "programs": args.programs + 1, "faults": dict(faults), "survivors": survivors, "cleanup_killed": killed,
        "lost_bytes": lost, "requests_ok": load.ok, "requests_failed": dict(load.errors),
        "violations": violations[:20], "violation_count": len(violations), "daemon_exit": exit_code,
        "daemon": figures, "processes_started": sum(len(v) for v in owners.values()),
    }
    print_soak(result, args)
    if survivors or sum(lost.values()) or violations or exit_code != 0:
        code = 1
    return code


def print_soak(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures as JSON, then one line (and the JSON into --json OUT)."""
    print(json.dumps(result, indent=2))
    start, end = result["daemon"].get("start"), result["daemon"].get("end")
    if start and end:
        print(f"soak: {args.minutes} min, {sum(result['faults'].values())} faults, {result['processes_started']} "
              f"processes started; requests {result['requests_ok']} ok, {sum(result['requests_failed'].values())} "
              f"failed of {result['requests_ok'] + sum(result['requests_failed'].values())}; lost bytes "
              f"{sum(result['lost_bytes'].values())}; survivors {len(result['survivors'])}; violations "
              f"{result['violation_count']}; daemon RSS {start['rss_kib']} -> {end['rss_kib']} KiB, fds "
              f"{start['fds']} -> {end['fds']}, threads {start['threads']} -> {end['threads']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
