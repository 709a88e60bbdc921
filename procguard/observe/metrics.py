"""Prometheus metrics (`[procguard] metrics`): the families, collected at scrape time (served by metrics_server).

Nothing runs between scrapes: no timer, no thread, no sampling. A scrape snapshots the engine on the
loop (cheap), then reads /proc and renders the text exposition format with the official client
library (prometheus_client) in the loop's default executor, so a thousand processes never stall the
loop. Families whose values did not change since the last scrape (state, restarts, exits, ...) reuse
their rendered text: prometheus_client spends ~6 us per sample, and a thousand processes have
~17000 samples (benchmarks/bench_metrics.py).

This module is imported only when metrics are configured (the daemon without them never loads
prometheus_client).
"""

import asyncio
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple


class _NoTLS(types.ModuleType):
    """Stands in for ssl while prometheus_client is imported: every attribute is None."""

    def __getattr__(self, name: str) -> None:
        return None


# prometheus_client.exposition imports ssl at the top, for its own HTTPS server and push-gateway client,
# which the daemon never uses; procguard/__main__.py keeps ssl (OpenSSL: 6 MiB of RSS) out of the daemon.
# A stand-in answers that one import, then ssl is blocked again for everyone else.
_ssl_blocked = "ssl" in sys.modules and sys.modules["ssl"] is None
if _ssl_blocked:
    sys.modules["ssl"] = _NoTLS("ssl")
try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
finally:
    if _ssl_blocked:
        sys.modules["ssl"] = None  # type: ignore[assignment]

from procguard.log import get_logger
from procguard.runtime import procfs
from procguard.io.output import Output
from procguard.engine.states import ExitReason, Health, ProcessState
from procguard.protocol import VERSION
from procguard.engine.supervisor import Supervisor

log = get_logger()

PROCESS_LABELS = ("program", "process")
STREAMS = ("stdout", "stderr")


class Row(NamedTuple):
    """One process as the engine sees it, copied on the loop at scrape time (a tuple: 1000 are built per
    scrape, and a frozen dataclass's __init__ costs several times more)."""

    program: str
    process: str
    state: ProcessState
    pid: int | None
    started_at: float | None  # wall clock
    healthy: float | None  # 1 healthy, 0 unhealthy, None: no check or no verdict yet
    health_check_s: float | None
    restarts: int
    exits: tuple[int, ...]  # by ExitReason, in enum order
    output: tuple[tuple[str, int, int], ...]  # (stream, bytes, dropped bytes)


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    cpu_s: float
    rss_bytes: int
    threads: int
    loop_lag_s: float
    started_at: float
    requests: tuple[tuple[tuple[str, str], int], ...]  # ((command, outcome), count)
    last_scrape_s: float | None


# The states in which records.snapshot() reports an uptime and a health.
_UP = frozenset({ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING})
_CHECKED = frozenset({ProcessState.STARTING, ProcessState.RUNNING})


def snapshot(sup: Supervisor, output: Output | None) -> list[Row]:
    """Copy what the metrics need out of every Process; runs on the loop (no I/O).

    Reads the attributes records.snapshot() reports, without building a status per process (its frozen
    dataclass made this a third of a scrape at 1000 processes).
    """
    now_m, now_w = time.monotonic(), time.time()
    rows = []
    for p in sup.processes():
        streams: list[tuple[str, int, int]] = []
        if output is not None:
            for name in STREAMS:
                s = output.stream(p.name, name)
                if s is not None:
                    streams.append((name, s.offset, s.dropped))
        health = p.health if p.state in _CHECKED else None
        rows.append(Row(
            program=p.program.name, process=p.name, state=p.state, pid=p.live_pid,
            started_at=now_w - (now_m - p.spawned_at) if p.state in _UP and p.spawned_at else None,
            healthy=None if health not in (Health.HEALTHY, Health.UNHEALTHY) else float(health == Health.HEALTHY),
            health_check_s=p.health_check_s if p.program.healthcheck is not None else None,
            restarts=p.restarts, exits=tuple(p.exits[r] for r in ExitReason), output=tuple(streams),
        ))
    return rows


Family = GaugeMetricFamily | CounterMetricFamily


Samples = tuple[tuple[tuple[str, ...], float], ...]  # (labels after program and process, value)


@dataclass(frozen=True, slots=True)
class Spec:
    """One per-process family: a cheap key per process (the cache compares them) and its samples from that key."""

    name: str
    kind: type[Family]
    doc: str
    extra: tuple[str, ...]  # label names after program and process
    key: Callable[[Row, dict[int, procfs.TreeUsage]], Any]
    samples: Callable[[Any], Samples]


def _one(value: float | None) -> Samples:
    return () if value is None else (((), value),)


def _tree(r: Row, usage: dict[int, procfs.TreeUsage]) -> procfs.TreeUsage | None:
    return usage.get(r.pid) if r.pid is not None else None


_REASONS = tuple(str(reason) for reason in ExitReason)
PROCESS_FAMILIES = (
    Spec("procguard_process_state", GaugeMetricFamily, "The process's state (supervisor's names): 1 for its "
         "current state.", ("state",), lambda r, u: r.state, lambda k: (((str(k),), 1.0),)),
    Spec("procguard_process_up", GaugeMetricFamily, "1 while the process is RUNNING (ready), else 0.", (),
         lambda r, u: r.state == ProcessState.RUNNING, lambda k: _one(float(k))),
    Spec("procguard_process_healthy", GaugeMetricFamily, "1 healthy, 0 unhealthy (processes with a health "
         "check that has a verdict).", (), lambda r, u: r.healthy, _one),
    Spec("procguard_process_health_check_seconds", GaugeMetricFamily, "How long the last health check took.", (),
         lambda r, u: r.health_check_s, _one),
    Spec("procguard_process_restarts", CounterMetricFamily, "Starts procguard began by itself: after an exit "
         "(each BACKOFF retry), unhealthy, max_age, max_memory; not an operator's start or restart.", (),
         lambda r, u: r.restarts, _one),
    Spec("procguard_process_exits", CounterMetricFamily, "Exits of the process's leader, by how it ended.",
         ("reason",), lambda r, u: r.exits, lambda k: tuple(((reason,), n) for reason, n in zip(_REASONS, k))),
    Spec("procguard_process_pid", GaugeMetricFamily, "The leader's pid while it runs.", (),
         lambda r, u: r.pid, _one),
    Spec("procguard_process_start_time_seconds", GaugeMetricFamily, "When the running leader was spawned, "
         "seconds since the epoch (uptime: time() - this).", (),
         lambda r, u: None if r.pid is None or r.started_at is None else round(r.started_at, 3), _one),
    Spec("procguard_process_output_bytes", CounterMetricFamily, "Bytes the process wrote to the stream.",
         ("stream",), lambda r, u: r.output, lambda k: tuple(((name,), written) for name, written, _ in k)),
    Spec("procguard_process_output_dropped_bytes", CounterMetricFamily, "Output bytes lost (log file not "
         "writable, daemon's stdout too slow).", ("stream",), lambda r, u: r.output,
         lambda k: tuple(((name,), lost) for name, _, lost in k)),
    Spec("procguard_process_cpu_seconds", CounterMetricFamily, "CPU time of the process tree (user + system, "
         "with the children it reaped); starts again from 0 with each spawn.", (),
         lambda r, u: t.cpu_s if (t := _tree(r, u)) else None, _one),
    Spec("procguard_process_resident_memory_bytes", GaugeMetricFamily, "RSS summed over the process tree.", (),
         lambda r, u: t.rss_bytes if (t := _tree(r, u)) else None, _one),
    Spec("procguard_process_open_fds", GaugeMetricFamily, "Open file descriptors summed over the process tree.",
         (), lambda r, u: t.fds if (t := _tree(r, u)) else None, _one),
)


class _One:
    """A Collector yielding given families (generate_latest renders any object with collect())."""

    def __init__(self, families: list[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Family]:
        return iter(self._families)


def render(families: list[Family]) -> bytes:
    """The text exposition format of these families, by prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = _One(families)
    registry.register(collector)
    return generate_latest(registry)


class ProcessCollector:
    """The per-process families, rendered by prometheus_client, with each process's lines kept between scrapes.

    Building and rendering cost ~6 us a sample, and a thousand processes have ~17000. So a family is
    rendered only for the processes whose value changed since the previous scrape (one family object
    with just those, rendered in one call and cut back into each process's lines: one line per
    sample, labels escaped by the library so a line never holds a newline); the others reuse their
    lines. The family's HELP and TYPE lines are the library's too (an empty family renders just them).
    """

    def __init__(self) -> None:
        self._headers = {spec.name: render([_family(spec)]) for spec in PROCESS_FAMILIES}
        # family -> (program, process) -> (key, that process's sample lines)
        self._lines: dict[str, dict[tuple[str, str], tuple[Any, bytes]]] = {}
        # family -> (names, keys, whole text) of the previous scrape: a family where nothing changed
        # costs one list comparison
        self._last: dict[str, tuple[list[tuple[str, str]], list[Any], bytes]] = {}

    def __call__(self, rows: list[Row], usage: dict[int, procfs.TreeUsage]) -> list[bytes]:
        names = [(r.program, r.process) for r in rows]
        parts = []
        for spec in PROCESS_FAMILIES:
            keys = [spec.key(r, usage) for r in rows]
            last = self._last.get(spec.name)
            if last is not None and last[0] == names and last[1] == keys:
                parts.append(last[2])
                continue
            old = self._lines.get(spec.name, {})
            stale = [(n, k) for n, k in zip(names, keys) if (c := old.get(n)) is None or c[0] != k]
            fresh = self._render(spec, stale)
            lines = self._lines[spec.name] = {n: fresh.get(n) or old[n] for n in names}  # removed ones go
            text = b"".join([self._headers[spec.name], *(lines[n][1] for n in names)])
            self._last[spec.name] = (names, keys, text)
            parts.append(text)
        return parts

    @staticmethod
    def _render(spec: Spec, stale: list[tuple[tuple[str, str], Any]]) -> dict[tuple[str, str], tuple[Any, bytes]]:
        """Render the stale processes' samples in one family; cut the text back into each one's lines."""
        if not stale:
            return {}
        fam = _family(spec)
        counts = []
        for (program, process), key in stale:
            samples = spec.samples(key)
            counts.append(len(samples))
            for extra, value in samples:
                fam.add_metric([program, process, *extra], value)
        lines = render([fam]).split(b"\n")[2:]  # after HELP and TYPE
        out = {}
        pos = 0
        for (name, key), n in zip(stale, counts):
            out[name] = (key, b"".join(line + b"\n" for line in lines[pos:pos + n]))
            pos += n
        return out


def _family(spec: Spec) -> Family:
    return spec.kind(spec.name, spec.doc, labels=[*PROCESS_LABELS, *spec.extra])


def daemon_families(rows: list[Row], facts: DaemonFacts) -> Iterator[Family]:
    """The daemon's own families (a handful of samples: rendered every scrape)."""
    info = GaugeMetricFamily("procguard_daemon_info", "The daemon's version (value 1).", labels=["version"])
    info.add_metric([VERSION], 1)
    started = GaugeMetricFamily("procguard_daemon_start_time_seconds", "When the daemon started, seconds since "
                                "the epoch.", value=round(facts.started_at, 3))
    cpu = CounterMetricFamily("procguard_daemon_cpu_seconds", "The daemon's own CPU time (all its threads).",
                              value=facts.cpu_s)
    rss = GaugeMetricFamily("procguard_daemon_resident_memory_bytes", "The daemon's own RSS.", value=facts.rss_bytes)
    threads = GaugeMetricFamily("procguard_daemon_threads", "The daemon's threads.", value=facts.threads)
    lag = GaugeMetricFamily("procguard_daemon_event_loop_lag_seconds", "How long a callback queued at the start "
                            "of this scrape waited for the event loop.", value=facts.loop_lag_s)
    requests = CounterMetricFamily("procguard_daemon_control_requests", "Control socket requests, by command and "
                                   "outcome (ok, or the error code).", labels=["command", "outcome"])
    for (command, outcome), count in facts.requests:
        requests.add_metric([command, outcome], count)
    scrape = GaugeMetricFamily("procguard_metrics_scrape_seconds", "How long the previous scrape took in the "
                               "daemon, from its request to its last byte.")
    if facts.last_scrape_s is not None:
        scrape.add_metric([], facts.last_scrape_s)
    counts = GaugeMetricFamily("procguard_processes", "Processes in each state.", labels=["state"])
    by_state = dict.fromkeys(ProcessState, 0)
    for r in rows:
        by_state[r.state] += 1
    for s, n in by_state.items():
        counts.add_metric([str(s)], n)
    yield from (info, started, cpu, rss, threads, lag, requests, scrape, counts)


class Scraper:
    """One scrape: snapshot the engine on the loop, then read /proc and render in the executor."""

    def __init__(self, supervisor: Supervisor, output: Output | None,
                 requests: Callable[[], dict[tuple[str, str], int]]) -> None:
        self._sup = supervisor
        self._output = output
        self._requests = requests
        self._processes = ProcessCollector()
        self._scraping = asyncio.Lock()
        self._started_at = time.time()
        self.last_scrape_s: float | None = None  # the previous scrape, from its request to its last byte

    async def scrape(self) -> bytes:
        """Collect every metric now; one scrape at a time (a second scraper waits for the first)."""
        async with self._scraping:
            loop = asyncio.get_running_loop()
            t0 = time.monotonic()
            queued: asyncio.Future[float] = loop.create_future()
            loop.call_soon(lambda: queued.set_result(time.monotonic()) if not queued.done() else None)
            lag = await queued - t0
            rows = snapshot(self._sup, self._output)
            requests = tuple(sorted(self._requests().items()))
            return await asyncio.to_thread(self._collect, rows, lag, requests)

    def _collect(self, rows: list[Row], lag: float, requests: tuple[tuple[tuple[str, str], int], ...]) -> bytes:
        """Read /proc and render (in the executor): the loop keeps serving meanwhile."""
        usage = procfs.tree_usage(r.pid for r in rows if r.pid is not None)
        cpu_s, rss, threads = procfs.self_usage()
        facts = DaemonFacts(cpu_s=cpu_s, rss_bytes=rss, threads=threads, loop_lag_s=lag,
                            started_at=self._started_at, requests=requests, last_scrape_s=self.last_scrape_s)
        parts = [*self._processes(rows, usage), render(list(daemon_families(rows, facts)))]
        return b"".join(parts)
