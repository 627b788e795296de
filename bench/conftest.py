"""Benchmark session setup: `time_interleaved` (several variants timed item by item within each round with
dtb_ext.timing.Interleaved, for the model and QA levels) and, at the end, one table with each ops case's median
and minimum time next to its baselines (`fused / baseline` ratios), grouped as in pytest-benchmark's own report.
On a shared machine the minimum is the steadier figure: other processes only ever add time. (The repository's
conftest.py skips `cuda` cases without a GPU.)"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from dtb_ext.timing import Interleaved

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


def _interleaved_clock() -> Callable[[], float]:
    """DTB_BENCH_CLOCK: "wall" (default, time.perf_counter) or "thread" (time.thread_time: the calling thread's CPU
    time, which other processes on a loaded machine disturb far less; meaningful with DTB_BENCH_THREADS=1 only,
    since the other threads' work is not counted)."""
    choice = os.environ.get("DTB_BENCH_CLOCK", "wall")
    clocks = {"wall": time.perf_counter, "thread": time.thread_time}
    if choice not in clocks:
        raise ValueError(f"DTB_BENCH_CLOCK must be one of {', '.join(clocks)}, got {choice!r}")
    return clocks[choice]


@pytest.fixture
def time_interleaved(benchmark):
    """A function (variants, items, rounds, extra=None) that times `rounds` rounds of `Interleaved(variants,
    items)` as this one pytest-benchmark case (its own stats: a whole round, every variant) and stores the
    per-variant summary, merged with `extra` (variant -> more fields, e.g. F1), as extra_info["variants"];
    returns that summary."""

    def run(variants: dict[str, Callable[[Any], Any]], items: Sequence[Any], rounds: int,
            extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        timer = Interleaved(variants, items, _interleaved_clock())
        timer.warm_up()
        benchmark.pedantic(timer.run_round, rounds=rounds, iterations=1, warmup_rounds=0)
        summary: dict[str, dict[str, Any]] = timer.summary()
        for name, fields in (extra or {}).items():
            summary[name].update(fields)
        benchmark.extra_info["variants"] = summary
        benchmark.extra_info["interleaved_items"] = len(items)
        benchmark.extra_info["clock"] = os.environ.get("DTB_BENCH_CLOCK", "wall")
        return summary

    return run


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
