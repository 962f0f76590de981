"""Shared timing helper for the benchmarks: medians of interleaved repeats."""

from __future__ import annotations

import statistics
import time
import typing as t


def compare(fns: dict[str, t.Callable[[], object]], repeats: int = 7,
            min_seconds: float = 0.05) -> dict[str, float]:
    """Median seconds per call of each function, run in turns so noise hits all alike."""
    loops = {}
    for name, fn in fns.items():
        fn()  # warm up
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        loops[name] = max(1, int(min_seconds / max(elapsed, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / loops[name])
    return {name: statistics.median(values) for name, values in samples.items()}
