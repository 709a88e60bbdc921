"""Output-capture benchmark: one child writes 1 GiB to stdout; procguard and supervisord capture it to a file.

    .venv/bin/python benchmarks/bench_output.py [--quick] [--json OUT]
    (also `python -m benchmarks --only output`, which runs it beside the other workloads)

Issue #4, "Done when": throughput (MiB/s) and daemon CPU seconds per GiB for ONE child writing 1 GiB
(--quick: 200 MiB) to stdout, captured to a file by (a) procguard without timestamps, (b) procguard with
`stdout_logfile_timestamps = true`, (c) supervisord 4.x (PyPI `supervisor`, the `bench` extra, run as
`supervisord -n -c CONF` from the venv), plus (d) a reference with no daemon: the same child with its
stdout opened on the file by this script (the machine's ceiling for this child and file system), and
(e) circus (PyPI `circus`, the `bench` extra, `circusd CONF`; skipped if it is not installed). The
aim stated by the issue is at least 1.5x supervisord's throughput at half its CPU per GiB. Every
figure comes from real daemons and a real child; the script prints min / median / max and the ratios
procguard / supervisord; it never asserts speed (DESIGN.md, "Tests"). It exits non-zero only when the
harness itself fails (a daemon that does not start, a control command that fails, a child that never
writes, a capture that stops growing while the child still runs). Lost bytes are printed, not fatal.
The pieces live in benchmarks/output/ (stream: the child and the check; sides; run: one timed run).

The child (CHILD_SOURCE, written into the temp dir, run as `python -S child.py N SIDE FIFO`, the same
program and argv shape on every side) first builds its N bytes in memory: lines of exactly 100
printable bytes `SSSSSS:TTTTT <filler>\\n` (S: block number, T: line in the block), blocks of 16384
lines = 25 writes of 64 KiB, the last byte of the stream forced to a newline. Every line of the
stream is distinct, so loss, duplication and reordering all show in the comparison. It then blocks
reading one byte from a FIFO; this script takes the daemon's CPU times and writes that byte, so
neither the child's interpreter start-up nor the control command is inside any figure. The child
appends `start PID T0` (time.monotonic(), system-wide) to SIDE, writes the stream to fd 1 in 64 KiB
os.write calls, appends `done T1 N`, and exits 0.

What is measured, and how, per run:

- Throughput: N / (time from the child's T0 until the capture file reaches its full size). The size
  is polled every POLL_S = 2 ms with os.stat (a coarser poll than bench_engine's 0.5 ms: on 2 cores
  the child and the daemon each want one; the poll error is <= 2 ms of runs of >= 0.2 s). Full size
  is N, or with timestamps N + lines x len(prefix), the prefix being procguard's
  `datetime.now().astimezone().isoformat(timespec="milliseconds") + " "` (30 bytes for +HH:MM).
- Daemon CPU: psutil cpu_times (user + system, the daemon process only, all its threads, not its
  children) from just before the FIFO byte until the file is full, scaled to seconds per GiB.
  procguard moves untimestamped bytes pipe -> file with splice(2): that copy is kernel work, counted
  in the daemon's system time; supervisord's read(2) + write(2) copies are also system time. So is
  allocating the page-cache pages of the file, which the writer (the daemon; the child in (d)) pays.
  psutil's times tick at 1/SC_CLK_TCK (10 ms: +-10 % of a --quick figure), so the sum of the daemon's
  threads' /proc schedstat (ns) over the same window is shown as a cross-check. User and system apart.
- Also recorded: the child's own write rate (N / (T1 - T0)), how long after the child's last write
  the file was full, the daemon's RSS at that moment.
- Zero bytes lost: after the child has exited, the file is read back and compared with the stream the
  child wrote (the same generator, run again here). With timestamps every line's prefix is checked
  against the ISO pattern and stripped, then the rest is compared. Bytes lost = N - bytes recovered;
  also reported: the offset of the first mismatch, bytes in excess, lines without a valid prefix.

Order and state: one daemon per side (two procguards, one per config, one supervisord, one circus;
harness/peers.py renders their configs), each started once and idle (autostart = false) until its
control interface answers a status request, before the first round; each run starts the child with
the daemon's own control interface (`procguardctl -s ENDPOINT start writer`; `supervisorctl -c CONF
start writer`; `circusctl --endpoint E start writer`), which answer once the process is RUNNING
(startsecs = 0) or, for circus, spawned, and only then is the FIFO byte written. circus keeps its
watcher "active" after a respawn = false child exits, so after each run it gets `circusctl stop
writer`; and it opens its FileStream once, at start, and keeps it open, so its capture is truncated
in place between runs rather than deleted. Rounds are interleaved a, b, c, d, a, b, c, d, ... (3 rounds, --quick: 2). Between runs the
child is awaited (gone from /proc), the capture and side files are deleted. Daemon start-up is
therefore outside every figure; the daemons stay resident between runs, so round 1 may carry cold
effects (Python caches, the first runs of each code path), which the min / median / max show.

Prefault (on unless --no-prefault): after the control command, while the child builds its stream,
this script touches and frees 1.5 x the file's size of anonymous memory. In a VM whose balloon does
free-page reporting (virtio-balloon F_REPORTING, as on the Firecracker box this was written on), memory
freed for more than ~2 s is handed back to the host, and the next first touch of each page is a host
fault: page-cache allocation then costs the writer several times more system time, at random (direct
writes ranged 390-4160 MiB/s over six identical runs without prefault, 3190-4230 with). Touching the
memory just before the run makes the page-cache pages host-backed for every side alike; on bare metal
it costs ~0.3 s per run and changes nothing. Files are deleted seconds after they are written, far
below vm.dirty_background_ratio of a large box, so the figures are of the page cache, not the disk
(the vm.dirty_* settings are in the JSON).

procguard and procguardctl are imported from the checkout holding this script (the daemon runs with
cwd = that checkout, procguardctl with PYTHONPATH = it), so a snapshot such as `git archive HEAD`
unpacked elsewhere, with this file copied in, measures that snapshot with the venv's interpreter.

Config choices, and which side each could favour:

- Same child, argv, 64 KiB writes, FIFO start, file system (the temp dir's), and autorestart = false,
  startsecs = 0 on both daemons; stderr to NONE on both (each still creates a stderr pipe).
- No rotation: stdout_logfile_maxbytes = 0 on both. For supervisord this also selects its plain
  FileHandler rather than RotatingFileHandler (its "optimization": no size check per write).
- supervisord: stdout_capture_maxbytes = 0 (its default: no capture-mode scanning for
  <!--XSUPERVISOR:BEGIN--> tokens), stdout_events_enabled = false, stdout_syslog = false,
  strip_ansi = false (defaults), loglevel = info so child output is not copied to its main log (it
  is at debug/trace). These are supervisord's cheapest settings; they favour supervisord.
- supervisord's loop is poll(2) with a 1 s timeout and handles readable pipes as they come, so the 1 s
  tick does not delay output; but it reads at most 128 KiB per wake-up (options.readfd) from a pipe of
  the kernel's default 64 KiB, appends to a bytes buffer and writes through a buffered file object
  opened 'ab' and flushed per write. procguard (by design, not by config) raises its pipes to 1 MiB
  (F_SETPIPE_SZ), splices up to 1 MiB per call and 4 MiB per wake-up, and reads back the last
  stdout_tail_maxbytes (64 KiB default, kept) of each splice into its tail buffer. Pipe and chunk
  sizes thus favour procguard; they are what each ships.
- procguard's timestamps stamp each line with the time its chunk (up to 1 MiB) was read, not the time
  the line was written; supervisord has no timestamp option, so (b) has no like-for-like opponent and
  is compared with (c) as the issue asks.
- circus: `stdout_stream.class = FileStream`, `max_bytes = 0` (no rotation), no time_format,
  close_child_stderr = true (stderr to /dev/null: it has no NONE stream), respawn = false. Its
  Redirector reads at most 1024 bytes per wake-up (circus/stream/redirector.py, `buffer=1024`, not a
  config key) and FileStream decodes each read to str (utf-8) and writes it through a text file
  flushed per read: that, not the config, is why it is an order of magnitude slower here.
- The daemons log at info: procguard JSON to a file (--log-format json), supervisord to its logfile,
  circus to its logoutput file.
- supervisord runs as whoever runs this script (as root it logs a CRIT warning about running as root);
  it is the venv's Python, the same interpreter as procguard's.

Cleanup: every daemon (procguard and supervisord) is recorded in the harness's Bench (benchmarks/harness/run.py); in `finally`
(also on Ctrl-C or SIGTERM) each gets SIGTERM, then SIGKILL, every recorded child still running the
child's argv is killed, and the temp directory is removed. The script then checks that no process
started from its child script survives, and prints how many did (0 expected).
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]  # run as a script: the repo's packages
from benchmarks.harness.peers import CIRCUSD, peer_missing, version_of  # noqa: E402
from benchmarks.harness.procs import naming  # noqa: E402
from benchmarks.harness.run import CHILD_PYTHON, Bench, bench_main, machine  # noqa: E402
from benchmarks.harness.stats import fmt_row, median  # noqa: E402
from benchmarks.output.run import GIB, MIB, one_run  # noqa: E402
from benchmarks.output.sides import DaemonSide, Side, prepare_sides  # noqa: E402
from benchmarks.output.stream import n_lines  # noqa: E402

TARGETS = {"throughput_ratio_min": 1.5, "cpu_per_gib_ratio_max": 0.5}


# -------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, bench: Bench) -> dict[str, Any]:
    keys = "abcde" if os.path.exists(CIRCUSD) else "abcd"
    return run_sides(bench, 200 * MIB if args.quick else GIB, 2 if args.quick else 3, keys,
                     prefault_on=not args.no_prefault, mode="quick" if args.quick else "full")


def run_sides(bench: Bench, n: int, rounds: int, keys: str, prefault_on: bool = True,
              mode: str = "full") -> dict[str, Any]:
    """`rounds` interleaved rounds of n bytes on the sides named by `keys` (SIDES); prints and returns figures.

    Also the entry point of `python -m benchmarks` (its "output" workload).
    """
    sides = prepare_sides(bench, n, keys)
    sup_version = version_of("supervisord")
    results: dict[str, Any] = {
        "mode": mode, "bytes_per_run": n, "rounds": rounds,
        "machine": machine() | {"supervisord": sup_version, "fs": fs_type(bench.root), "vm_dirty": vm_dirty(),
                                "prefault": prefault_on},
        "targets": TARGETS, "runs": {s.key: [] for s in sides},
    }
    print(f"procguard output benchmark ({results['mode']}): {n / MIB:.0f} MiB per run, {rounds} rounds "
          f"interleaved {','.join(s.key for s in sides)}; {os.cpu_count()} CPUs, Python "
          f"{results['machine']['python']}, kernel {results['machine']['kernel']}, supervisord {sup_version}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"child: {CHILD_PYTHON} -S child.py (64 KiB writes, 100-byte lines); temp dir {bench.root} "
          f"({results['machine']['fs']}); prefault {'on' if prefault_on else 'off'}\n")
    for r in range(1, rounds + 1):
        for side in sides:
            res = one_run(bench, side, n, r, do_prefault=prefault_on)
            results["runs"][side.key].append(res)
            mibs = f"{res['mib_per_s']:8.1f} MiB/s" if res["mib_per_s"] else "  incomplete"
            cpu = (f"{res['daemon_cpu_s_per_gib']:6.2f} CPU s/GiB (user {res['daemon_user_s']:.2f} s, "
                   f"sys {res['daemon_system_s']:.2f} s)" if res["daemon_cpu_s_per_gib"] is not None else "")
            print(f"  round {r} ({side.key}) {side.label:<28} {mibs}  {cpu}  lost {res['bytes_lost']} B"
                  f"{'' if res['content_ok'] else '  CONTENT DIFFERS at ' + str(res['first_mismatch_at'])}")
    print()
    for side in sides:
        results.setdefault("daemon_warnings", {})[side.key] = print_side(side, results["runs"][side.key], n)
    print_summary(results, sides)
    return results


def print_side(side: Side, runs: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The side's rows; returns procguard's log events above info (log_write_failed and the like)."""
    print(f"({side.key}) {side.label}:")
    tp = [x["mib_per_s"] for x in runs if x["mib_per_s"] is not None]
    if tp:
        print(fmt_row("throughput, child's first write -> file full", tp, "MiB/s", digits=1))
    if side.daemon_pid() is not None:
        print(fmt_row("daemon CPU (user+system) per GiB", [x["daemon_cpu_s_per_gib"] for x in runs], "s"))
        print(fmt_row("  of which system", [x["daemon_system_s"] * GIB / n for x in runs], "s"))
        print(fmt_row("  cross-check: schedstat (ns resolution)", [x["daemon_schedstat_s_per_gib"] for x in runs],
                      "s"))
        print(fmt_row("daemon RSS when the file was full", [x["daemon_rss_mib"] for x in runs], "MiB", digits=1))
    print(fmt_row("child's own write rate (into its stdout)", [x["child_write_mib_per_s"] for x in runs],
                  "MiB/s", digits=1))
    lag = [x["full_after_child_done_ms"] for x in runs if x["full_after_child_done_ms"] is not None]
    if lag:
        print(fmt_row("file full after the child's last write", lag, "ms", digits=1))
    lost = [x["bytes_lost"] for x in runs]
    extra = sum(x["bytes_extra"] for x in runs)
    bad = [x for x in runs if not x["content_ok"]]
    print(f"  {'bytes lost (all runs)':<46} {sum(lost)}  (per run {lost}); extra {extra}; content "
          f"{'identical in every run' if not bad else 'DIFFERS in rounds ' + str([x['round'] for x in bad])}")
    if side.stamped:
        print(f"  {'lines stamped / expected, bad prefixes':<46} "
              f"{[x['lines'] for x in runs]} / {n_lines(n)}, {sum(x['lines_bad_prefix'] for x in runs)}")
    complaints: list[dict[str, Any]] = []
    if isinstance(side, DaemonSide) and side.kind == "procguard":
        side.system.daemon.poll_log()
        complaints = [e for e in side.system.daemon.tail.events if e.get("level") not in ("info", "debug")]
        print(f"  {'procguard log events above info':<46} {len(complaints)}"
              f"{': ' + ', '.join(sorted({str(e.get('event')) for e in complaints})) if complaints else ''}")
    held = [x["round"] for x in runs if x["daemon_holds_file_after_exit"]]
    if held and side.daemon_pid() is not None:
        when = "after the child's exit" if side.keeps_file_open else "2 s after exit"
        print(f"  {'daemon still had the file open ' + when:<46} rounds {held}")
    print()
    return complaints


def vm_dirty() -> dict[str, int]:
    out = {}
    for name in ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes",
                 "dirty_expire_centisecs"):
        try:
            out[name] = int(Path(f"/proc/sys/vm/{name}").read_text())
        except (OSError, ValueError):
            pass
    return out


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    for p in psutil.disk_partitions(all=True):
        if str(path).startswith(p.mountpoint) and len(p.mountpoint) > len(best):
            best, kind = p.mountpoint, p.fstype
    return f"{kind} on {best}"


def print_summary(res: dict[str, Any], sides: list[Side]) -> None:
    runs = res["runs"]

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        return median([r[key] for r in runs if r.get(key) is not None])

    sup_tp, sup_cpu = med(runs.get("c", []), "mib_per_s"), med(runs.get("c", []), "daemon_cpu_s_per_gib")
    res["ratios"] = {}
    print("summary, medians (figures only; nothing here fails the run):")
    print(f"  {'side':<30} {'MiB/s':>8} {'CPU s/GiB':>10}  {'tp / sup':>8} {'aim':>6}  {'CPU / sup':>9} {'aim':>6}"
          f"  lost B")
    for side in sides:
        tp, cpu = med(runs[side.key], "mib_per_s"), med(runs[side.key], "daemon_cpu_s_per_gib")
        lost = sum(x["bytes_lost"] for x in runs[side.key])
        tp_s = f"{tp:8.1f}" if tp is not None else f"{'-':>8}"
        cpu_s_ = f"{cpu:10.3f}" if cpu is not None else f"{'-':>10}"
        ratio_tp = tp / sup_tp if tp is not None and sup_tp else None
        ratio_cpu = cpu / sup_cpu if cpu is not None and sup_cpu else None
        aim_tp = aim_cpu = ""
        if side.key in ("a", "b"):
            res["ratios"][side.key] = {"throughput": ratio_tp, "cpu_per_gib": ratio_cpu}
            if ratio_tp is not None:
                aim_tp = "meets" if ratio_tp >= TARGETS["throughput_ratio_min"] else "MISSES"
            if ratio_cpu is not None:
                aim_cpu = "meets" if ratio_cpu <= TARGETS["cpu_per_gib_ratio_max"] else "MISSES"
        rt = f"{ratio_tp:8.2f}" if ratio_tp is not None else f"{'-':>8}"
        rc = f"{ratio_cpu:9.2f}" if ratio_cpu is not None else f"{'-':>9}"
        print(f"  ({side.key}) {side.label:<26} {tp_s} {cpu_s_}  {rt} {aim_tp:>6}  {rc} {aim_cpu:>6}  {lost}")
    print(f"  aims (issue #4): throughput >= {TARGETS['throughput_ratio_min']:g}x supervisord's, "
          f"CPU per GiB <= {TARGETS['cpu_per_gib_ratio_max']:g}x supervisord's; 0 bytes lost")


def main(argv: list[str] | None = None) -> int:
    missing = peer_missing("supervisord")
    if missing is not None:
        print(f"bench_output: {missing}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--no-prefault", action="store_true",
                    help="do not touch and free memory before each run (see the docstring: noisy in some VMs)")

    def check_survivors(bench: Bench, results: dict[str, Any]) -> None:
        results["children_surviving"] = left = [p.pid for p in naming(str(bench.root / "child.py"), bench.started_wall)]
        print(f"children surviving cleanup: {len(left)}" + (f": {left}" if left else ""))

    return bench_main("bench_output", "Benchmark procguard's output capture against supervisord's.",
                      "200 MiB per run, 2 rounds instead of 1 GiB, 3 rounds", run, argv, ap, check_survivors)


if __name__ == "__main__":
    sys.exit(main())
