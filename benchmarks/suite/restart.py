"""Workload restart: gunicorn restarted under HTTP load, held socket or own bind, on each system."""

import time
from dataclasses import dataclass
from typing import Any

import psutil

from benchmarks.harness.load import Load, transition
from benchmarks.harness.peers import HELD_FD, VENV_BIN, Program, System, make
from benchmarks.harness.run import REPO, poll_until
from benchmarks.suite.fleet import shutdown_all
from benchmarks.suite.model import Ctx, Results, cell, rotated
from procguard.testing import free_port

GUNICORN = str(VENV_BIN / "gunicorn")
WSGI_DIR = str(REPO / "tests" / "servers")


# ------------------------------------------------------------------------------------------ restart


@dataclass
class Web:
    label: str
    kind: str
    held: bool
    port: int
    system: System | None = None


def gunicorn_master(s: System) -> int | None:
    for c in s.children():
        try:
            if GUNICORN in c.cmdline():
                return c.pid
        except psutil.Error:
            pass
    return None


def phase_restart(ctx: Ctx) -> None:
    p, res = ctx.params, ctx.res
    declare_restart_figures(res)
    webs = [Web(f"{kind} ({'held socket' if held else 'gunicorn binds'})", kind, held, free_port())
            for kind, held in (("procguard", True), ("procguard", False), ("supervisord", False), ("circus", True),
                               ("circus", False))
            if kind in ctx.systems]
    broken: set[str] = set()
    raw: dict[str, list[dict[str, Any]]] = {w.label: [] for w in webs}
    ctx.res.raw["restart"] = raw
    for w in webs:
        with cell(ctx, "restart", w.kind, broken, w.label):
            bind = f"fd://{HELD_FD}" if w.held else f"127.0.0.1:{w.port}"
            work = ctx.bench.root / f"web-{w.kind}-{'held' if w.held else 'bind'}"
            work.mkdir()
            argv = (GUNICORN, "--bind", bind, "--workers", "2", "--graceful-timeout", "5", "--chdir", WSGI_DIR,
                    "--no-control-socket", "--worker-tmp-dir", str(work), "wsgi_app:application")
            prog = Program(name="web", argv=argv, held_socket="web" if w.held else None, server="gunicorn",
                           stopwaitsecs=10.0)
            w.system = make(w.kind, ctx.bench, f"web-{'held' if w.held else 'bind'}", [prog],
                            {"web": w.port} if w.held else None)
            w.system.start()
    for w in webs:
        if w.label in broken or w.system is None:
            continue
        with cell(ctx, "restart", w.kind, broken, w.label):
            s = w.system
            poll_until(lambda: s.serving(w.port), 120, f"{w.label}: gunicorn answering", interval_s=0.05)
            s.wait_control()
            s.record_cmdlines()
    suffix = {True: "held", False: "bind"}
    for r in range(p.restart_rounds):
        for w in rotated(webs, r):
            if w.label in broken or w.system is None:
                continue
            with cell(ctx, "restart", w.kind, broken, w.label):
                one = restart_once(ctx, w)
                raw[w.label].append(one)
                res.add(f"restart.failed_{suffix[w.held]}", w.kind, one["failed"])
                res.add(f"restart.cli_{suffix[w.held]}", w.kind, one["cli_ms"])
                res.add(f"restart.maxlat_{suffix[w.held]}", w.kind, one["slowest_request_ms"])
                print(f"  restart {r + 1} {w.label:<30} failed {one['failed']:>4} of {one['requests']:>5} "
                      f"({', '.join(f'{k} {v}' for k, v in one['errors'].items()) or 'no errors'}); "
                      f"command {one['cli_ms']:.0f} ms; slowest request {one['slowest_request_ms']:.0f} ms", flush=True)
    shutdown_all(ctx, {w.label: w.system for w in webs if w.system is not None}, "restart", broken,
                 figure="restart.survivors")


def declare_restart_figures(res: Results) -> None:
    res.figure("restart.failed_held", "restart", "restart under load: failed requests, held socket", "requests")
    res.figure("restart.failed_bind", "restart", "restart under load: failed requests, gunicorn binds the port",
               "requests")
    res.figure("restart.cli_held", "restart", "restart command wall time, held socket", "ms", headline=False)
    res.figure("restart.cli_bind", "restart", "restart command wall time, gunicorn binds", "ms", headline=False)
    res.figure("restart.maxlat_held", "restart", "slowest request across a restart, held socket", "ms",
               headline=False)
    res.figure("restart.maxlat_bind", "restart", "slowest request across a restart, gunicorn binds", "ms",
               headline=False)
    res.figure("restart.survivors", "restart", "gunicorn processes alive 1 s after the daemon exited", "",
               headline=False)
    no_held = "supervisord has no held socket for a [program] ([fcgi-program] closes it when its last process stops)"
    res.figures["restart.failed_held"].na.setdefault("supervisord", no_held)
    res.figures["restart.cli_held"].na.setdefault("supervisord", no_held)
    res.figures["restart.maxlat_held"].na.setdefault("supervisord", no_held)


def restart_once(ctx: Ctx, w: Web) -> dict[str, Any]:
    p = ctx.params
    s = w.system
    assert s is not None
    old = gunicorn_master(s)
    with Load(w.port, body_prefix=b"worker ") as load:
        poll_until(lambda: load.ok_done_after(load.started) >= 5 and time.monotonic() - load.started >= p.load_pre_s,
                   30, f"{w.label}: requests before the restart", interval_s=0.01)
        t0 = time.monotonic()
        s.run_ctl("restart", "web")
        t_cli = time.monotonic()
        new = poll_until(lambda: (lambda m: m if m is not None and m != old else None)(gunicorn_master(s)), 60,
                         f"{w.label}: a new gunicorn master", interval_s=0.01)
        s.record_cmdlines()
        poll_until(lambda: load.ok_done_after(t_cli) >= 5 and time.monotonic() - t_cli >= p.load_post_s, 60,
                   f"{w.label}: requests after the restart", interval_s=0.01)
    fails = [h.sent for h in load.hits if not h.ok]
    return transition(load.hits, t0, t_cli, t_cli) | {
        "old_master": old, "new_master": new, "failing_window_ms": (max(fails) - min(fails)) * 1e3 if fails else 0.0}
