"""HTTP load on a loopback port: client threads, every request recorded, and what a transition cost them."""

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass

from benchmarks.harness.stats import percentile_ms


@dataclass(frozen=True, slots=True)
class Hit:
    """One request: monotonic send and completion times, and how it ended."""

    sent: float
    done: float
    ok: bool
    error: str  # "" when ok; "HTTP 502" or the exception's class name otherwise


def get_once(port: int, timeout_s: float, host: str | None = None, body_prefix: bytes = b"") -> Hit:
    """GET / on a new connection; ok means 200 and a body starting with body_prefix. Never raises."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        r = conn.getresponse()
        body = r.read()
        ok = r.status == 200 and body.startswith(body_prefix)
        err = "" if ok else f"HTTP {r.status}"
    except Exception as exc:  # any failure of a request is a data point, not an error of the harness
        ok, err = False, type(exc).__name__
    finally:
        conn.close()
    return Hit(t0, time.monotonic(), ok, err)


class Load:
    """`threads` client threads, each a GET / on a new connection every `interval_s` (start to start; at once
    after a slower request), until the `with` block ends. `error_pause_s`: the wait after a failure when
    interval_s is 0 (no pause), so a refused port is not hammered. keep_hits=False (a soak of hours): only
    the counts `ok` and `errors` are kept."""

    def __init__(self, port: int, threads: int = 4, interval_s: float = 0.010, timeout_s: float = 5.0,
                 host: str | None = None, body_prefix: bytes = b"", error_pause_s: float = 0.0,
                 keep_hits: bool = True) -> None:
        self.port, self.interval_s, self.timeout_s = port, interval_s, timeout_s
        self.host, self.body_prefix, self.error_pause_s = host, body_prefix, error_pause_s
        self.started = 0.0
        self.hits: list[Hit] = []  # list.append is atomic under the GIL
        self.keep_hits = keep_hits
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"load-{i}") for i in range(threads)]

    def start(self) -> "Load":
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(self.timeout_s + 5)

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            hit = get_once(self.port, self.timeout_s, self.host, self.body_prefix)
            if self.keep_hits:
                self.hits.append(hit)
            if hit.ok:
                self.ok += 1
            else:
                self.errors[hit.error] += 1
            pause = self.interval_s if hit.ok else max(self.interval_s, self.error_pause_s)
            self._stop.wait(max(0.0, hit.sent + pause - time.monotonic()))

    def ok_done_after(self, t: float) -> int:
        return sum(1 for h in list(self.hits) if h.ok and h.done >= t)


def longest_gap_ms(hits: list[Hit], t_from: float, t_to: float) -> float:
    """Longest time between two successive 200s received, from the last one at or before t_from to the
    first one at or after t_to (t_from or t_to themselves when there is none)."""
    done = sorted(h.done for h in hits if h.ok)
    start_at = max((t for t in done if t <= t_from), default=t_from)
    end_at = min((t for t in done if t >= t_to), default=t_to)
    points = [start_at, *(t for t in done if start_at < t < end_at), end_at]
    return max((b - a for a, b in zip(points, points[1:])), default=0.0) * 1e3


def steady_gap_ms(hits: list[Hit], t0: float) -> float:
    """The control for longest_gap_ms: the longest time between two successive 200s received before t0
    (the steady load before the action; on a busy machine, scheduling alone makes gaps)."""
    done = sorted(h.done for h in hits if h.ok and h.done < t0)
    return max((b - a for a, b in zip(done, done[1:])), default=0.0) * 1e3


def recovered_at(hits: list[Hit], t_from: float) -> float:
    """When the 200 that ended the longest time without one (from t_from on) was received."""
    done = sorted(h.done for h in hits if h.ok and h.done >= t_from)
    points = [t_from, *done]
    return max(zip(points, points[1:]), key=lambda ab: ab[1] - ab[0])[1]


def error_counts(hits: list[Hit]) -> dict[str, int]:
    out: dict[str, int] = {}
    for h in hits:
        if not h.ok:
            out[h.error] = out.get(h.error, 0) + 1
    return out


def transition(hits: list[Hit], t0: float, t_cli: float, t_done: float) -> dict[str, float | int | dict[str, int]]:
    """The figures of one action under load: the command ran t0 .. t_cli, the transition ended at t_done.

    Latencies: p50/p99 steady (requests completed before t0) and across (sent from t0 to t_done, answered
    or not)."""
    steady = [h.done - h.sent for h in hits if h.done < t0]
    across = [h.done - h.sent for h in hits if t0 <= h.sent <= t_done]
    return {"failed": sum(1 for h in hits if not h.ok), "requests": len(hits), "errors": error_counts(hits),
            "cli_ms": (t_cli - t0) * 1e3, "transition_ms": (t_done - t0) * 1e3,
            "gap_ms": longest_gap_ms(hits, t0, t_done), "steady_gap_ms": steady_gap_ms(hits, t0),
            "slowest_request_ms": max(h.done - h.sent for h in hits) * 1e3,
            "steady_p50_ms": percentile_ms(steady, 50), "steady_p99_ms": percentile_ms(steady, 99),
            "across_p50_ms": percentile_ms(across, 50), "across_p99_ms": percentile_ms(across, 99),
            "across_requests": len(across)}
