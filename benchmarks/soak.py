"""A soak: a real daemon under HTTP load with random faults for N minutes (issue #20, item 4).

    python -m benchmarks soak --minutes N [--programs 6] [--seed 20] [--sample-s 60] [--warmup MIN] [--json OUT]

The daemon runs recorder programs (procguard/testing/recorder.py: checksummed, numbered records; some with
a worker, one as nobody, one with an exec health check) and a web server (tests/programs/fdserver.py)
on a socket procguard holds, with drain_timeout. Clients request the web server without pause. Every
1-3 s a random fault: SIGKILL or SIGSTOP/SIGCONT of a child, a chosen exit code, stop + start, restart
(of the web server too), a config reload that changes a program, logrotate, SIGUSR2 to the daemon, a
failing health check, and `deploy` when the daemon has that command. Every 10 s the invariants of
procguard/testing/world.py are checked against /proc, the files and the socket.

Reported: survivors after shutdown, lost bytes (records a child wrote that are not in its file),
failed requests, invariant violations, and the daemon's RSS, descriptors, threads and event-ring fill
every --sample-s (60) seconds: RSS at every 10-minute mark and, after --warmup minutes (default a third
of the run, at most 10), the RSS growth per 10 minutes (least squares over the samples) and the growth
of descriptors. The exit status is 1 if anything was lost or survived, or if, over 5 or more minutes
after the warm-up, RSS grew by more than 1 MiB per 10 minutes or descriptors grew (issue #20's bound).

The warm-up is long because the daemon's bounded buffers fill slowly under the soak: each stream's
tail (64 KiB, kept in memory once a rotation or close reads it back), the event ring (1000 events, about
0.3 KiB each) and the log ring (500 lines); together over 1 MiB, reached over the first minutes.
"""

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.load import Load  # noqa: E402
from procguard.testing import free_port  # noqa: E402
from benchmarks.harness.run import REPO  # noqa: E402
from procguard.testing.world import UP, Expect, Spec, World  # noqa: E402
from procguard.observe.events import RING_SIZE, STABLE_EVENTS  # noqa: E402
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
            wrote = sum(len(record(pid, s)) for s in range(w.written(name, pid) + 1))
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


@dataclass
class Soak:
    """One soak: its world (a real daemon on recorder programs and a web server), the load, what it saw."""

    args: argparse.Namespace
    rng: random.Random
    names: list[str]
    w: World
    load: Load
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)  # the daemon's figures, every --sample-s
    t0: float = field(default_factory=time.monotonic)


def build_soak(args: argparse.Namespace) -> Soak:
    """The recorder programs (some with a worker, one as nobody, one health-checked) and the web server."""
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
    load = Load(port, interval_s=0.0, timeout_s=30.0, error_pause_s=0.05, keep_hits=False)
    return Soak(args, random.Random(args.seed), names, w, load)


def take_sample(s: Soak, dpid: int) -> None:
    """The daemon's RSS, descriptors and threads now, and how full its event ring is (from its log)."""
    events = sum(1 for e in s.w.run.events() if e.get("event") in STABLE_EVENTS)
    row = {"minute": round((time.monotonic() - s.t0) / 60, 2), **daemon_figures(dpid),
           "event_ring": min(events, RING_SIZE)}
    s.samples.append(row)
    print(f"soak: minute {row['minute']:.1f}: RSS {row['rss_kib']} KiB, fds {row['fds']}, threads "
          f"{row['threads']}, event ring {row['event_ring']}/{RING_SIZE}, load {os.getloadavg()[0]:.1f}", flush=True)


def one_fault(s: Soak, dpid: int) -> None:
    """Wait 1-3 s, then inject a random fault into a random program."""
    time.sleep(s.rng.uniform(1.0, 3.0))
    fault, name = s.rng.choice(FAULTS), s.rng.choice(s.names)
    s.faults[fault] += 1
    try:
        inject(s.w, fault, name, s.rng, dpid, s.names)
    except (ProcessLookupError, FileNotFoundError):
        pass
    except AssertionError as exc:
        s.violations.append(f"{fault} {name}: {exc}")
    for n in s.names:
        s.w.expect[n] = Expect(UP, "soak")


def drive(s: Soak, dpid: int) -> None:
    """Faults until the deadline; the invariants every 10 s; the daemon's figures every --sample-s."""
    deadline = s.t0 + s.args.minutes * 60
    last_check = next_sample = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            take_sample(s, dpid)
            next_sample += s.args.sample_s
        one_fault(s, dpid)
        if time.monotonic() - last_check > 10:
            last_check = time.monotonic()
            try:
                s.w.check(timeout_s=60)
            except AssertionError as exc:
                s.violations.append(str(exc))
                print(f"soak: VIOLATION {exc}", flush=True)
    take_sample(s, dpid)


def shut_down(s: Soak) -> dict[str, Any]:
    """Stop the load and the daemon; what survived, what was lost, what cleanup had to kill."""
    s.load.stop()
    w = s.w
    try:
        if w.ctl is not None:
            w.ctl.close()
            w.ctl = None
        exit_code = w.run.stop(timeout=120) if w.run.proc is not None else None
    except Exception as exc:  # noqa: BLE001
        exit_code = None
        s.violations.append(f"shutdown: {exc!r}")
    owners = w.owners()
    survivors = [p for ps in owners.values() for p in ps if w.alive(p)]  # never a reused pid
    lost = lost_bytes(w)
    return {"survivors": survivors, "lost_bytes": lost, "cleanup_killed": w.cleanup(), "daemon_exit": exit_code,
            "processes_started": sum(len(v) for v in owners.values())}


def growth(samples: list[dict[str, Any]], warmup_min: float) -> dict[str, Any]:
    """RSS at every 10-minute mark, and after the warm-up: RSS growth per 10 min (least squares) and fds growth."""
    marks = {f"{m}": min(samples, key=lambda r: abs(r["minute"] - m))["rss_kib"]
             for m in range(0, int(samples[-1]["minute"]) + 1, 10)} if samples else {}
    after = [r for r in samples if r["minute"] >= warmup_min]
    out: dict[str, Any] = {"warmup_min": warmup_min, "rss_kib_at_minute": marks, "samples_after_warmup": len(after)}
    if len(after) >= 3:
        xs, ys = [r["minute"] for r in after], [r["rss_kib"] for r in after]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        out.update(span_min=round(xs[-1] - xs[0], 1), rss_kib_per_10_min=round(slope * 10),
                   rss_kib_after_warmup=(ys[0], ys[-1]),
                   fds_growth=min(r["fds"] for r in after[-3:]) - min(r["fds"] for r in after[:3]),
                   event_ring_after_warmup=(after[0]["event_ring"], after[-1]["event_ring"]))
    return out


def run_soak(args: argparse.Namespace) -> int:
    s = build_soak(args)
    violations = s.violations
    try:
        s.w.start()
        assert s.w.run.proc is not None and s.w.ctl is not None
        s.load.start()
        drive(s, s.w.run.proc.pid)
    finally:
        ended = shut_down(s)
    warmup_min = args.warmup if args.warmup is not None else min(10.0, args.minutes / 3)
    result = {
        "minutes": args.minutes, "elapsed_s": round(time.monotonic() - s.t0, 1), "load_avg_end": os.getloadavg(),
        "programs": args.programs + 1, "faults": dict(s.faults), **ended, "requests_ok": s.load.ok,
        "requests_failed": dict(s.load.errors), "violations": violations[:20], "violation_count": len(violations),
        "daemon": {"start": next((r for r in s.samples if r["minute"] >= warmup_min), None),  # after the warm-up
                   "end": s.samples[-1] if s.samples else None},
        "samples": s.samples, "growth": growth(s.samples, warmup_min),
    }
    print_soak(result, args)
    return 1 if ended["survivors"] or sum(ended["lost_bytes"].values()) or violations or ended["daemon_exit"] != 0 \
        or grew(result["growth"]) else 0


def grew(g: dict[str, Any]) -> bool:
    """Did RSS or descriptors grow after the warm-up past issue #20's bound (1 MiB per 10 min, 0 fds)?

    Judged only over at least 5 minutes after the warm-up: a shorter span only prints its figures.
    """
    if g.get("span_min", 0) < 5:
        return False
    return bool(g["rss_kib_per_10_min"] > 1024 or g["fds_growth"] > 0)


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
    g = result["growth"]
    marks = ", ".join(f"{m} min {kib}" for m, kib in g["rss_kib_at_minute"].items())
    print(f"soak: daemon RSS (KiB) at {marks}")
    if "rss_kib_per_10_min" in g:
        print(f"soak: after {g['warmup_min']:.1f} min of warm-up, over {g['span_min']} min: RSS "
              f"{g['rss_kib_after_warmup'][0]} -> {g['rss_kib_after_warmup'][1]} KiB, {g['rss_kib_per_10_min']:+d} KiB "
              f"per 10 min (bound 1024 over 5+ min), fds {g['fds_growth']:+d}, event ring "
              f"{g['event_ring_after_warmup'][0]} -> {g['event_ring_after_warmup'][1]} of {RING_SIZE}"
              + ("  GREW" if grew(g) else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
