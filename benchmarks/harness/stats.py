"""Figures from samples: min / median / max, percentiles, and the rows the scripts print."""

import statistics
from typing import Any


def summary(values: list[float]) -> dict[str, float]:
    """n, min, median, p90 and max."""
    p90 = statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else values[0]
    return {"n": len(values), "min": min(values), "median": statistics.median(values), "p90": p90,
            "max": max(values)}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile_ms(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of durations in seconds, in ms; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] * 1e3


def fmt_row(label: str, values: list[float], unit: str, scale: float = 1.0, digits: int = 2, p90: bool = False,
            width: int = 46) -> str:
    """`  label  min X  median X (p90 X)  max X unit  (n=N)`, the values multiplied by scale."""
    s = summary(values)
    middle = f"  p90 {s['p90'] * scale:>8.{digits}f}" if p90 else ""
    return (f"  {label:<{width}} min {s['min'] * scale:>8.{digits}f}  median {s['median'] * scale:>8.{digits}f}"
            f"{middle}  max {s['max'] * scale:>8.{digits}f} {unit}  (n={s['n']})")


def med_max(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)} if values else {}


def summarize(rounds: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The rounds, and the median and max of each key over them."""
    return {"rounds": rounds} | {k: med_max([r[k] for r in rounds]) for k in keys}


def print_targets(rows: list[tuple[str, float, float | None, str]], survivors: tuple[str, int], what: str = "") -> None:
    """The summary every script ends with: each figure (label, value, target or None, note: its unit and any
    reference) beside its target, ratio and verdict; then the survivors' count (0 expected). Never fails."""
    print(f"summary{what} (figures only; nothing here fails the run):")
    print(f"  {'figure':<50} {'value':>10}  {'target':>8}  {'ratio':>5}  verdict  note")
    for label, value, target, note in rows:
        if target is None:
            print(f"  {label:<50} {value:>10.3f}  {'-':>8}  {'-':>5}  {'':<7}  {note}")
        else:
            verdict = "within" if value <= target else "OVER"
            print(f"  {label:<50} {value:>10.3f}  {'< ' + format(target, 'g'):>8}  {value / target:>5.2f}  "
                  f"{verdict:<7}  {note}")
    label, n = survivors
    print(f"  {label:<50} {n:>10}  {'= 0':>8}  {'':>5}  {'within' if n == 0 else 'OVER':<7}")
