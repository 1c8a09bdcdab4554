"""One figure of a benchmark: a value, the baseline measured in the same run, their ratio.

Every bench_*.py exposes `figures() -> dict[str, dict]` built with `figure(...)`;
bench/run_all.py collects them into bench/results.json and prints one table. A figure
whose baseline is not a real measurement (zero, negative, not finite) is refused here
rather than printed as a meaningless ratio.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


class BadBaseline(ValueError):
    pass


def figure(value: float, baseline: float, unit: str, how: str,
           better: str = "higher") -> dict[str, object]:
    """`better` says which way is good for `value` ("higher" or "lower"); `ratio` is always
    value / baseline, so a reader compares it with 1 in that direction."""
    if better not in ("higher", "lower"):
        raise ValueError(f"better: {better!r} is neither 'higher' nor 'lower'")
    for name, x in (("value", value), ("baseline", baseline)):
        if not math.isfinite(x) or x <= 0:
            raise BadBaseline(f"{name} {x!r} {unit} is not a positive measurement ({how})")
    return {"value": value, "baseline": baseline, "ratio": value / baseline, "unit": unit,
            "better": better, "how": how}


def interleaved(rounds: int, **runs: Callable[[], float]) -> dict[str, float]:
    """Run each callable once per round, alternating, and return each one's median result.

    Interleaving spreads a machine's slow moments over every contender alike."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def print_table(figures: dict[str, dict]) -> None:
    width = max((len(n) for n in figures), default=10)
    for name, f in figures.items():
        arrow = "↑" if f["better"] == "higher" else "↓"
        print(f"  {name:<{width}}  {f['value']:>12.4g} {f['unit']:<12} "
              f"baseline {f['baseline']:>12.4g}  ratio {f['ratio']:>8.3g}x {arrow}")
