"""The suite's model: its sizes per mode (Params), its figures and their samples (Results), and the
context every workload runs in (Ctx); `cell` is the boundary of one system's share of a workload."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from benchmarks.harness.run import Bench, BenchError

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Params:
    respawn_samples: int
    fleet_rounds: int  # start-up / shutdown rounds at N = 100 (idle is measured in the last)
    big_n: int
    big_rounds: int
    time_big_shutdown: bool  # else the big fleets stop together, untimed (supervisord's can take 10 s)
    idle_s: float
    settle_s: float
    cli_runs: int
    server_samples: int
    output_bytes: int
    output_rounds: int
    output_sides: str
    restart_rounds: int
    load_pre_s: float
    load_post_s: float


QUICK = Params(respawn_samples=3, fleet_rounds=1, big_n=200, big_rounds=1, time_big_shutdown=False, idle_s=3.0,
               settle_s=1.0, cli_runs=3, server_samples=10, output_bytes=100 << 20, output_rounds=2,
               output_sides="ace", restart_rounds=1, load_pre_s=0.3, load_post_s=0.3)
FULL = Params(respawn_samples=12, fleet_rounds=5, big_n=1000, big_rounds=3, time_big_shutdown=True, idle_s=30.0,
              settle_s=2.0, cli_runs=10, server_samples=30, output_bytes=1 << 30, output_rounds=3,
              output_sides="abcde", restart_rounds=5, load_pre_s=1.0, load_post_s=1.0)
# The test suite's smoke run: every workload on every system, at sizes too small for the figures to mean much.
SMOKE = Params(respawn_samples=1, fleet_rounds=1, big_n=50, big_rounds=1, time_big_shutdown=False, idle_s=1.0,
               settle_s=0.5, cli_runs=1, server_samples=3, output_bytes=8 << 20, output_rounds=1,
               output_sides="ace", restart_rounds=1, load_pre_s=0.1, load_post_s=0.1)
MODES = {"quick": QUICK, "full": FULL, "smoke": SMOKE}


# ------------------------------------------------------------------------------------------ results


@dataclass
class Figure:
    key: str
    workload: str
    label: str
    unit: str
    higher_is_better: bool = False
    headline: bool = True  # in the summary table (others are printed with their workload only)
    values: dict[str, list[float]] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)
    seq: int = 0  # declaration order, within its workload


@dataclass
class Results:
    systems: list[str]  # those that can run here
    missing: dict[str, str]  # system -> why it cannot
    figures: dict[str, Figure] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    lost_bytes: dict[str, int] = field(default_factory=dict)
    survivors: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def figure(self, key: str, workload: str, label: str, unit: str, **kw: Any) -> Figure:
        if key not in self.figures:
            f = self.figures[key] = Figure(key, workload, label, unit, seq=len(self.figures), **kw)
            f.na.update(self.missing)
        return self.figures[key]

    def ordered(self) -> list[Figure]:
        """Figures in workload order (WORKLOAD_PHASES), then in the order they were declared."""
        order = list(WORKLOAD_PHASES)
        return sorted(self.figures.values(), key=lambda f: (order.index(f.workload), f.seq))

    def add(self, key: str, system: str, value: float) -> None:
        self.figures[key].values.setdefault(system, []).append(float(value))

    def count_survivors(self, system: str, n: int) -> None:
        self.survivors[system] = self.survivors.get(system, 0) + n

    def count_lost(self, system: str, n: int) -> None:
        self.lost_bytes[system] = self.lost_bytes.get(system, 0) + n

    def fail(self, workload: str, system: str, error: str) -> None:
        self.failures.append({"workload": workload, "system": system, "error": error})
        print(f"  !! {workload} on {system} failed: {error}", flush=True)
        for f in self.figures.values():
            if f.workload == workload and system not in f.values:
                f.na.setdefault(system, "failed: " + error.splitlines()[0][:200])


@dataclass
class Ctx:
    bench: Bench
    params: Params
    res: Results
    mode: str = "full"  # a key of MODES

    @property
    def systems(self) -> list[str]:
        return self.res.systems


@contextmanager
def cell(ctx: Ctx, workload: str, system: str, broken: set[str], tag: str | None = None) -> Iterator[None]:
    """Run one system's share of a workload; a failure is recorded and `tag` (default: the system) is
    added to `broken`, which the workload skips from then on."""
    try:
        yield
    except BenchError as exc:
        broken.add(tag or system)
        ctx.res.fail(workload, system, str(exc))
    except Exception as exc:  # the harness's boundary: record, skip this system, go on with the others
        broken.add(tag or system)
        ctx.res.fail(workload, system, f"{type(exc).__name__}: {exc}")


def rotated(items: list[T], i: int) -> list[T]:
    if not items:
        return items
    i %= len(items)
    return items[i:] + items[:i]


# --only takes a workload's name; some workloads share a phase (their daemons).
WORKLOAD_PHASES = {
    "respawn": ("respawn",),
    "status": ("status",),
    "startup": ("fleet", "status"),
    "idle": ("fleet",),
    "shutdown": ("fleet", "status"),  # 1000 children: the status phase's big fleets (--full)
    "output": ("output",),
    "restart": ("restart",),
}
