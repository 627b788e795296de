"""Benchmark session setup: skips `cuda` cases without a GPU, and prints one table at the end with each case's
median time next to its baseline (`fused / baseline` ratios), grouped as in pytest-benchmark's own report."""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch

# group -> implementation name -> median seconds; filled by the benchmarks through `record_median`.
MEDIANS: dict[str, dict[str, float]] = defaultdict(dict)


def record_median(group: str, implementation: str, benchmark) -> None:
    """Remember the median of a finished pytest-benchmark run for the summary table."""
    if benchmark.stats is not None:
        MEDIANS[group][implementation] = benchmark.stats.stats.median


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not MEDIANS:
        return
    terminalreporter.section("dtb ops: median per case and ratio to the baselines")
    for group in sorted(MEDIANS):
        times = MEDIANS[group]
        fused = times.get("fused")
        cells = [f"{name} {seconds * 1e3:.3f} ms" for name, seconds in sorted(times.items())]
        ratios = [f"fused/{name} {fused / seconds:.2f}" for name, seconds in sorted(times.items()) if fused and name != "fused"]
        terminalreporter.write_line(f"{group}: " + ", ".join(cells + ratios))
