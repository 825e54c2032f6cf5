"""Timing helper of the benchmarks: variants run alternately in one process, so machine noise hits them alike."""

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_times(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Run each variant once untimed (warm-up), then ``repeats`` timed rounds, alternating between variants.

    Returns:
        For each variant, its median wall time in seconds and what its last run returned.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    last: dict[str, Any] = {}
    for round_ in range(repeats + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            last[name] = run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), last[name]) for name in variants}


def print_ratio(results: dict[str, tuple[float, Any]], candidate: str, baseline: str) -> None:
    """Print each variant's median time and the ratio candidate / baseline (below 1: the candidate is faster)."""
    for name, (seconds, _) in results.items():
        print(f"{name:17s} median {seconds:6.2f} s")
    print(f"ratio {candidate} / {baseline}: {results[candidate][0] / results[baseline][0]:.2f}")
