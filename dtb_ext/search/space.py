"""The space of length configurations and LAT's evolutionary operators on it.

A length configuration is one integer per layer, non-increasing, each in [min_length, max_length]: layer i keeps
at most `config[i]` tokens. Optuna samples it through one fixed parameter per layer (see `LengthSpace.params`), so
every sampler (TPE, NSGA-II, the evolutionary one) sees the same, fixed search space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

Config = tuple[int, ...]


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


@dataclass(frozen=True)
class LengthSpace:
    """Non-increasing integer configurations `max_length >= l_0 >= l_1 >= ... >= l_{n-1} >= min_length`."""

    num_layers: int
    max_length: int
    min_length: int

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError(
                f"need 1 <= min_length <= max_length, got min_length={self.min_length}, max_length={self.max_length}"
            )

    @property
    def full(self) -> Config:
        """The full-length configuration: every layer keeps every token."""
        return (self.max_length,) * self.num_layers

    def check(self, config: Sequence[int]) -> Config:
        """Return `config` as a tuple after checking it belongs to the space (ValueError otherwise)."""
        config = tuple(int(v) for v in config)
        if len(config) != self.num_layers:
            raise ValueError(f"length config needs {self.num_layers} entries (one per layer), got {len(config)}: {config}")
        if any(not self.min_length <= v <= self.max_length for v in config):
            raise ValueError(f"length config entries must lie in [{self.min_length}, {self.max_length}], got {config}")
        if any(b > a for a, b in zip(config, config[1:])):
            raise ValueError(f"length config must be non-increasing, got {config}")
        return config

    # --- Optuna parametrisation -------------------------------------------------------------------------------
    # Parameter `keep_i` in [0, 1] is the fraction of the room above min_length that layer i keeps from layer
    # i-1: l_i = min_length + round(keep_i * (l_{i-1} - min_length)), with l_{-1} = max_length. Every value of
    # the parameters gives a non-increasing config and every config has exact parameters (`params`), so samplers
    # work on a fixed box (NSGA-II's crossover and multivariate TPE need one) and the evolutionary strategy can
    # enqueue the exact configs it wants. A uniform keep_i is the same prior as sampling l_0 uniformly in
    # [min_length, max_length] and then each l_i uniformly in [min_length, l_{i-1}] (up to rounding).

    def param_names(self) -> list[str]:
        return [f"keep_{i}" for i in range(self.num_layers)]

    def config_from_params(self, params: dict[str, float]) -> Config:
        previous = self.max_length
        config = []
        for name in self.param_names():
            keep = float(params[name])
            if not 0.0 <= keep <= 1.0:
                raise ValueError(f"parameter {name} must lie in [0, 1], got {keep}")
            length = self.min_length + _round_half_up(keep * (previous - self.min_length))
            config.append(length)
            previous = length
        return tuple(config)

    def params(self, config: Sequence[int]) -> dict[str, float]:
        """The parameters that `config_from_params` maps back to exactly `config`."""
        config = self.check(config)
        params = {}
        previous = self.max_length
        for name, length in zip(self.param_names(), config):
            room = previous - self.min_length
            params[name] = 0.0 if room == 0 else (length - self.min_length) / room
            previous = length
        return params

    # --- LAT's evolutionary operators -----------------------------------------------------------------------

    def constant_ratio_configs(self, count: int) -> list[Config]:
        """LAT's initial population: `count` configs, each dropping a constant fraction r of the tokens per layer
        (l_i = ceil(max_length * (1 - r) ** (i + 1)), floored at min_length), r spread evenly from 0 (the
        full-length config) to the ratio that reaches min_length exactly at the last layer."""
        if count < 1:
            raise ValueError(f"initial population size must be >= 1, got {count}")
        last_ratio = 1.0 - (self.min_length / self.max_length) ** (1.0 / self.num_layers)
        configs: list[Config] = []
        for ratio in np.linspace(0.0, last_ratio, count) if count > 1 else [0.0]:
            # the closed form (not compounding ceil per layer) lets the last ratio land on min_length exactly
            config = [
                max(self.min_length, math.ceil(self.max_length * (1.0 - ratio) ** (i + 1) - 1e-9))
                for i in range(self.num_layers)
            ]
            if tuple(config) not in configs:
                configs.append(tuple(config))
        return configs

    def mutate(self, config: Sequence[int], probability: float, rng: np.random.Generator) -> Config:
        """LAT's mutation: each gene, with `probability`, is resampled uniformly between its neighbours (the
        already-mutated previous gene above, the next original gene below), so the result stays non-increasing."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"mutation probability must lie in [0, 1], got {probability}")
        original = self.check(config)
        child = list(original)
        for i in range(self.num_layers):
            if rng.random() < probability:
                upper = self.max_length if i == 0 else child[i - 1]
                lower = self.min_length if i == self.num_layers - 1 else original[i + 1]
                child[i] = int(rng.integers(lower, upper + 1))
        return tuple(child)

    def crossover(self, first: Sequence[int], second: Sequence[int]) -> Config:
        """LAT's crossover: the element-wise mean rounded up, (g0 + g1 + 1) // 2 (non-increasing when both are)."""
        first, second = self.check(first), self.check(second)
        return tuple((a + b + 1) // 2 for a, b in zip(first, second))
