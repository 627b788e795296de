"""`Interleaved`: several variants timed on the same items, all of them within every round, so that a machine whose
speed drifts (other processes, thermal limits) slows every variant alike instead of skewing their ratios. The demo
and the benchmarks (bench/conftest.py) time with it."""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from tqdm.auto import tqdm


class Interleaved:
    """Times several variants on the same items, all of them within every round: item by item, each variant runs
    once on the item, in an order drawn afresh for every item of every round (a seeded shuffle). A host whose speed
    drifts then slows every variant alike, where timing one variant after another would put the drift into the
    ratios. The order is shuffled, not rotated, because a variant's time can depend on what ran just before it
    (caches, oneDNN's and OpenVINO's per-shape state, the allocator; up to 5 % for an int8 model right after a bf16
    one), and under a rotation every variant always follows the same one. `run_round` times one round; `summary`
    gives the medians.

    variants: name -> function of one item (for example one batch of model inputs); a function that runs on a GPU
        must synchronise before it returns, so that its time is the GPU's.
    items: the inputs, the same for every variant.
    clock: seconds, time.perf_counter (wall) by default.
    seed: seed of the orders, so that a rerun runs the same sequence.
    """

    def __init__(self, variants: dict[Hashable, Callable[[Any], Any]], items: Sequence[Any],
                 clock: Callable[[], float] = time.perf_counter, seed: int = 0) -> None:
        if not variants or not items:
            raise ValueError(f"Interleaved needs variants and items, got {len(variants)} and {len(items)}")
        self.variants = variants
        self.items = items
        self.clock = clock
        self._orders = random.Random(seed)
        # variant -> one list per finished round of per-item seconds
        self.times: dict[Hashable, list[list[float]]] = {name: [] for name in variants}

    def warm_up(self, progress: bool = False) -> None:
        """One untimed call of every variant on every item: oneDNN compiles a kernel per matmul shape on first use
        (and token dropping makes new shapes at every layer), besides allocator, thread pool and lazy set-up."""
        for item in tqdm(self.items, desc="warm-up", unit="item", disable=not progress):
            for function in self.variants.values():
                function(item)

    def run_round(self, progress: bool = False) -> None:
        """One timed call of every variant on every item."""
        names = list(self.variants)
        current: dict[Hashable, list[float]] = {name: [] for name in names}
        for item in tqdm(self.items, desc="timing", unit="item", disable=not progress):
            for name in self._orders.sample(names, len(names)):
                started = self.clock()
                self.variants[name](item)
                current[name].append(self.clock() - started)
        for name in names:
            self.times[name].append(current[name])

    def summary(self) -> dict[Hashable, dict[str, float]]:
        """Per variant: `median_ms` (median over rounds and items of one call), `round_ms` (median over rounds of
        the time for all items) and `min_round_ms`."""
        out = {}
        for name, rounds in self.times.items():
            totals = [sum(per_item) for per_item in rounds]
            out[name] = {
                "median_ms": 1e3 * statistics.median(t for per_item in rounds for t in per_item),
                "round_ms": 1e3 * statistics.median(totals),
                "min_round_ms": 1e3 * min(totals),
            }
        return out
