"""Benchmark session setup: prints one table at the end with each case's median and minimum time next to its
baselines (`fused / baseline` ratios), grouped as in pytest-benchmark's own report. On a shared machine the minimum
is the steadier figure: other processes only ever add time. (The repository's conftest.py skips `cuda` cases
without a GPU.)"""
from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

# group -> implementation name -> (median, minimum) seconds; filled by the benchmarks through `record_times`.
TIMES: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)


@pytest.fixture
def record_times():
    """A function (group, implementation, benchmark) that keeps a finished run's median and minimum for the
    summary table."""

    def record(group: str, implementation: str, benchmark) -> None:
        if benchmark.stats is not None:
            TIMES[group][implementation] = (benchmark.stats.stats.median, benchmark.stats.stats.min)

    return record


def pytest_configure(config: pytest.Config) -> None:
    # DTB_BENCH_THREADS pins the CPU thread count: on a shared machine, one thread timed with
    # `--benchmark-timer=time.process_time` is the measurement that other processes disturb least.
    threads = os.environ.get("DTB_BENCH_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"DTB_BENCH_THREADS must be a positive integer, got {threads!r}")
        torch.set_num_threads(int(threads))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not TIMES:
        return
    terminalreporter.section("dtb ops: median / min per case, and fused / baseline ratios of both")
    for group in sorted(TIMES):
        times = TIMES[group]
        cells = [f"{name} {median * 1e3:.3f} / {least * 1e3:.3f} ms" for name, (median, least) in sorted(times.items())]
        if "fused" in times:
            fused_median, fused_min = times["fused"]
            cells += [
                f"fused/{name} {fused_median / median:.2f} / {fused_min / least:.2f}"
                for name, (median, least) in sorted(times.items())
                if name != "fused"
            ]
        terminalreporter.write_line(f"{group}: " + ", ".join(cells))
