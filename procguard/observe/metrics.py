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
from collections.abc import Callable, Iterator, Mapping
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
    from prometheus_client.utils import floatToGoString as _untyped_float_to_go
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
_HEALTHY: dict[Health | None, float] = {Health.HEALTHY: 1.0, Health.UNHEALTHY: 0.0}
_REASON_ORDER = tuple(ExitReason)


def snapshot(sup: Supervisor, output: Output | None, last: Mapping[str, Row] | None = None) -> list[Row]:
    """Copy what the metrics need out of every Process; runs on the loop (no I/O).

    Reads the attributes records.snapshot() reports, without building a status per process (its frozen
    dataclass made this a third of a scrape at 1000 processes). A start time is rounded to the
    millisecond, so an unchanged process gives an equal Row scrape after scrape; then the Row of `last`
    (the previous scrape's, by process name) is returned, the new one freed at once: thousands of new
    objects per scrape would keep the garbage collector busy on the loop.
    """
    epoch = time.time() - time.monotonic()  # monotonic -> wall clock
    stream = output.stream if output is not None else None
    previous = (last or {}).get
    rows: list[Row] = []
    for p in sup.processes():
        name, state, spawned_at, program = p.config.name, p.state, p.spawned_at, p.program
        streams: tuple[tuple[str, int, int], ...] = ()
        if stream is not None:
            out, err = stream(name, "stdout"), stream(name, "stderr")
            if out is not None:
                streams = (("stdout", out.offset, out.dropped),)
            if err is not None:
                streams = (*streams, ("stderr", err.offset, err.dropped))
        row = _new_row(Row, (  # positional, without NamedTuple's __new__: a third of the time
            program.name, name, state, p.live_pid,
            round(epoch + spawned_at, 3) if state in _UP and spawned_at else None,
            _HEALTHY.get(p.health) if state in _CHECKED else None,
            p.health_check_s if program.healthcheck is not None else None,
            p.restarts, tuple(map(p.exits.__getitem__, _REASON_ORDER)), streams,
        ))
        prev = previous(name)
        rows.append(prev if prev == row else row)
    return rows


_new_row = tuple.__new__


Family = GaugeMetricFamily | CounterMetricFamily


Samples = tuple[tuple[tuple[str, ...], float], ...]  # (labels after program and process, value)


@dataclass(frozen=True, slots=True)
class Spec:
    """One per-process family: a cheap key per process (the cache compares them) and its samples from that key."""

    name: str
    kind: type[Family]
    doc: str
    extra: tuple[str, ...]  # label names after program and process
    key: Callable[[Row, procfs.TreeUsage | None], Any]  # (the row, its tree's usage: None when not read)
    samples: Callable[[Any], Samples]
    of_tree: bool = False  # the key reads only the tree's usage (not the row)


def _one(value: float | None) -> Samples:
    return () if value is None else (((), value),)


_REASONS = tuple(str(reason) for reason in ExitReason)
PROCESS_FAMILIES = (
    Spec("procguard_process_state", GaugeMetricFamily, "The process's state (supervisor's names): 1 for its "
         "current state.", ("state",), lambda r, t: r.state, lambda k: (((str(k),), 1.0),)),
    Spec("procguard_process_up", GaugeMetricFamily, "1 while the process is RUNNING (ready), else 0.", (),
         lambda r, t: r.state == ProcessState.RUNNING, lambda k: _one(float(k))),
    Spec("procguard_process_healthy", GaugeMetricFamily, "1 healthy, 0 unhealthy (processes with a health "
         "check that has a verdict).", (), lambda r, t: r.healthy, _one),
    Spec("procguard_process_health_check_seconds", GaugeMetricFamily, "How long the last health check took.", (),
         lambda r, t: r.health_check_s, _one),
    Spec("procguard_process_restarts", CounterMetricFamily, "Starts procguard began by itself: after an exit "
         "(each BACKOFF retry), unhealthy, max_age, max_memory; not an operator's start or restart.", (),
         lambda r, t: r.restarts, _one),
    Spec("procguard_process_exits", CounterMetricFamily, "Exits of the process's leader, by how it ended.",
         ("reason",), lambda r, t: r.exits, lambda k: tuple(((reason,), n) for reason, n in zip(_REASONS, k))),
    Spec("procguard_process_pid", GaugeMetricFamily, "The leader's pid while it runs.", (),
         lambda r, t: r.pid, _one),
    Spec("procguard_process_start_time_seconds", GaugeMetricFamily, "When the running leader was spawned, "
         "seconds since the epoch (uptime: time() - this).", (),
         lambda r, t: None if r.pid is None or r.started_at is None else round(r.started_at, 3), _one),
    Spec("procguard_process_output_bytes", CounterMetricFamily, "Bytes the process wrote to the stream.",
         ("stream",), lambda r, t: r.output, lambda k: tuple(((name,), written) for name, written, _ in k)),
    Spec("procguard_process_output_dropped_bytes", CounterMetricFamily, "Output bytes lost (log file not "
         "writable, daemon's stdout too slow).", ("stream",), lambda r, t: r.output,
         lambda k: tuple(((name,), lost) for name, _, lost in k)),
    Spec("procguard_process_cpu_seconds", CounterMetricFamily, "CPU time of the process tree (user + system, "
         "with the children it reaped); starts again from 0 with each spawn.", (),
         lambda r, t: t.cpu_s if t else None, _one, of_tree=True),
    Spec("procguard_process_resident_memory_bytes", GaugeMetricFamily, "RSS summed over the process tree.", (),
         lambda r, t: t.rss_bytes if t else None, _one, of_tree=True),
    Spec("procguard_process_open_fds", GaugeMetricFamily, "Open file descriptors summed over the process tree.",
         (), lambda r, t: t.fds if t else None, _one, of_tree=True),
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


# Processes rendered in one family object. The first scrape renders every sample; one batch of all 1000
# processes keeps ~10000 of the library's objects alive at once for the garbage collector to promote
# and traverse (a cold render of 1000 in a 100k-object heap: 66 -> 38 collections; its CPU time
# differed by less than the noise of a loaded machine).
RENDER_BATCH = 100


class _Entry:
    """One process at the last scrape: its row and tree usage, each family's key, each family's lines."""

    __slots__ = ("row", "tree", "keys", "lines")

    def __init__(self, row: Row, tree: procfs.TreeUsage | None, keys: tuple[Any, ...], lines: list[bytes]) -> None:
        self.row = row
        self.tree = tree
        self.keys = keys
        self.lines = lines


class ProcessCollector:
    """The per-process families, rendered by prometheus_client, with each process's lines kept between scrapes.

    Building and rendering cost ~6 us a sample, and a thousand processes have ~17000. So a family is
    rendered only for the processes whose value changed since the previous scrape (one family object
    with just those, rendered in one call and cut back into each process's lines: one line per
    sample, labels escaped by the library so a line never holds a newline); the others reuse their
    lines. A process whose row and tree usage equal the last scrape's costs one comparison; a family
    where no line changed reuses its whole text. The family's HELP and TYPE lines are the library's
    too (an empty family renders just them).
    """

    def __init__(self) -> None:
        self._headers = [render([_family(spec)]) for spec in PROCESS_FAMILIES]
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._names: list[tuple[str, str]] = []
        self._parts: list[bytes] = []

    def __call__(self, rows: list[Row], usage: dict[int, procfs.TreeUsage]) -> list[bytes]:
        entries: dict[tuple[str, str], _Entry] = {}
        order: list[_Entry] = []
        stale: list[list[tuple[_Entry, Any]]] = [[] for _ in PROCESS_FAMILIES]  # per family: (entry, new key)
        touched = [False] * len(PROCESS_FAMILIES)  # per family: a line changed
        for r in rows:
            name = (r.program, r.process)
            tree = usage.get(r.pid) if r.pid is not None else None
            e = self._entries.get(name)
            if e is None or e.row != r or e.tree != tree:
                e = self._changed(e, r, tree, stale, touched)
            entries[name] = e
            order.append(e)
        names = list(entries)
        same = len(names) == len(rows) and names == self._names
        for i, (spec, to_render) in enumerate(zip(PROCESS_FAMILIES, stale)):
            for start in range(0, len(to_render), RENDER_BATCH):
                for e, text in self._render(spec, to_render[start:start + RENDER_BATCH]):
                    e.lines[i] = text
            if not same or touched[i]:
                text = b"".join([self._headers[i], *(e.lines[i] for e in order)])
                if i < len(self._parts):
                    self._parts[i] = text
                else:
                    self._parts.append(text)
        self._entries, self._names = entries, names
        return list(self._parts)

    @staticmethod
    def _changed(old: _Entry | None, row: Row, tree: procfs.TreeUsage | None,
                 stale: list[list[tuple[_Entry, Any]]], touched: list[bool]) -> _Entry:
        """A new entry for a process whose row or usage changed. A family whose key changed is touched: its
        lines get the new values when only values changed (_revalue), else it is stale (to render)."""
        if old is not None and old.row is row:  # only the tree's usage changed (CPU, RSS, fds)
            keys = tuple(spec.key(row, tree) if spec.of_tree else key for spec, key in zip(PROCESS_FAMILIES, old.keys))
        else:
            keys = tuple(spec.key(row, tree) for spec in PROCESS_FAMILIES)
        e = _Entry(row, tree, keys, [b""] * len(keys) if old is None else list(old.lines))
        for i, key in enumerate(keys):
            if old is None or old.keys[i] != key:
                touched[i] = True
                text = None if old is None else _revalue(PROCESS_FAMILIES[i], old.keys[i], key, old.lines[i])
                if text is None:
                    stale[i].append((e, key))
                else:
                    e.lines[i] = text
        return e

    @staticmethod
    def _render(spec: Spec, stale: list[tuple[_Entry, Any]]) -> list[tuple[_Entry, bytes]]:
        """Render the stale processes' samples in one family; cut the text back into each one's lines."""
        if not stale:
            return []
        fam = _family(spec)
        counts = []
        for e, key in stale:
            samples = spec.samples(key)
            counts.append(len(samples))
            for extra, value in samples:
                fam.add_metric([e.row.program, e.row.process, *extra], value)
        lines = render([fam]).split(b"\n")[2:]  # after HELP and TYPE
        out = []
        pos = 0
        for (e, _), n in zip(stale, counts):
            out.append((e, b"".join(line + b"\n" for line in lines[pos:pos + n])))
            pos += n
        return out


_float_to_go: Callable[[float], str] = _untyped_float_to_go  # what generate_latest writes a value with


def _revalue(spec: Spec, old_key: Any, key: Any, old_text: bytes) -> bytes | None:
    """A process's lines of a family with new values, when only values changed (the same samples, labels
    and order); else None. Each line keeps the library's rendering up to its value, and the value is
    written by the library's own floatToGoString, as generate_latest writes it (`name{labels} value`,
    no timestamp): a few us a sample instead of ~20 (busy processes change CPU and RSS every scrape)."""
    samples, old = spec.samples(key), spec.samples(old_key)
    if len(samples) == 1 == len(old) and samples[0][0] == old[0][0]:  # most families: one line, no split
        return old_text[:old_text.rfind(b" ") + 1] + _float_to_go(samples[0][1]).encode() + b"\n"
    if len(samples) != len(old) or any(a[0] != b[0] for a, b in zip(samples, old)):
        return None
    lines = old_text.split(b"\n")
    if len(lines) != len(samples) + 1:  # one line a sample, and what follows the last newline
        return None
    return b"".join([line[:line.rfind(b" ") + 1] + _float_to_go(value).encode() + b"\n"
                     for line, (_, value) in zip(lines, samples)])


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
        self._rows: dict[str, Row] = {}  # the last scrape's, by process name
        self._trees = procfs.TreeReader()
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
            rows = snapshot(self._sup, self._output, self._rows)
            self._rows = {r.process: r for r in rows}
            requests = tuple(sorted(self._requests().items()))
            return await asyncio.to_thread(self._collect, rows, lag, requests)

    async def close(self) -> None:
        """Close the /proc files held between scrapes (waits for a scrape's /proc pass, off the loop)."""
        await asyncio.to_thread(self._trees.close)

    def _collect(self, rows: list[Row], lag: float, requests: tuple[tuple[tuple[str, str], int], ...]) -> bytes:
        """Read /proc and render (in the executor): the loop keeps serving meanwhile."""
        usage = self._trees.usage(r.pid for r in rows if r.pid is not None)
        cpu_s, rss, threads = procfs.self_usage()
        facts = DaemonFacts(cpu_s=cpu_s, rss_bytes=rss, threads=threads, loop_lag_s=lag,
                            started_at=self._started_at, requests=requests, last_scrape_s=self.last_scrape_s)
        parts = [*self._processes(rows, usage), render(list(daemon_families(rows, facts)))]
        return b"".join(parts)
