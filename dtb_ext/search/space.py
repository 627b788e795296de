"""The spaces of length configurations and LAT's evolutionary operators on them.

`LengthSpace` (absolute): one integer per layer, non-increasing, each in [min_length, max_length]: layer i keeps
at most `config[i]` tokens. `RatioSpace` (ratios): one fraction per layer, non-increasing, each a multiple of
1/grid in [min_ratio, 1]: layer i keeps `ceil(config[i] * n)` of an example's n input tokens, the kind of config
LengthDrop trains. Optuna samples either through one fixed parameter per layer (see `LengthSpace.params`), so
every sampler (TPE, NSGA-II, the evolutionary one) sees the same, fixed search space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence, Union

import numpy as np

from dtb_ext.config import LengthConfig

# A config of either space: ints (absolute lengths) or floats (ratios of the input length).
Config = tuple[Union[int, float], ...]
SPACE_KINDS: tuple[str, ...] = ("absolute", "ratios")


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

    kind = "absolute"

    @property
    def full(self) -> Config:
        """The full-length configuration: every layer keeps every token."""
        return (self.max_length,) * self.num_layers

    def identity(self) -> dict[str, Any]:
        """What a study's configs mean: stored in the study and checked when it is reopened."""
        return {"num_layers": self.num_layers, "max_length": self.max_length, "min_length": self.min_length}

    def length_spec(self, config: Sequence[int]) -> LengthConfig:
        """The config as the `LengthConfig` the model runs."""
        return LengthConfig.absolute(self.check(config))

    def check(self, config: Sequence[int]) -> Config:
        """Return `config` as a tuple after checking it belongs to the space (ValueError otherwise)."""
        config = tuple(int(v) for v in config)
        if len(config) != self.num_layers:
            raise ValueError(
                f"length config needs {self.num_layers} entries (one per layer), got {len(config)}: {config}"
            )
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


# Ratios are searched on a grid of 1/100: fine enough that neighbouring ratios differ by about one token on a
# typical 180-token feature, coarse enough that the search does not spend evaluations on near-duplicates and a
# cached config is found again exactly.
DEFAULT_RATIO_GRID = 100


@dataclass(frozen=True)
class RatioSpace:
    """Non-increasing ratio configurations `1 >= r_0 >= ... >= r_{n-1} >= min_ratio`, each a multiple of 1/grid.

    Every operation runs on the integer steps `round(r_i * grid)` through a `LengthSpace` over
    [ceil(min_ratio * grid), grid], so mutation, crossover and the Optuna parametrisation keep monotonicity
    exactly as in the absolute space; configs are handed out as floats `steps / grid`.
    """

    num_layers: int
    min_ratio: float
    grid: int = DEFAULT_RATIO_GRID

    kind = "ratios"

    def __post_init__(self) -> None:
        if not isinstance(self.grid, int) or self.grid < 2:
            raise ValueError(f"the ratio grid must be an integer >= 2, got {self.grid!r}")
        if not 0.0 < self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in (0, 1], got {self.min_ratio}")
        LengthSpace(self.num_layers, self.grid, self.min_steps)  # validates num_layers

    @property
    def min_steps(self) -> int:
        return math.ceil(Fraction(repr(float(self.min_ratio))) * self.grid)

    @property
    def steps(self) -> LengthSpace:
        """The same space in integer steps of 1/grid."""
        return LengthSpace(self.num_layers, self.grid, self.min_steps)

    @property
    def full(self) -> Config:
        return self._ratios(self.steps.full)

    def identity(self) -> dict[str, Any]:
        return {"space": self.kind, "num_layers": self.num_layers, "ratio_grid": self.grid, "min_ratio": self.min_ratio}

    def _ratios(self, steps: Sequence[int]) -> Config:
        return tuple(step / self.grid for step in steps)

    def _steps(self, config: Sequence[float]) -> tuple[int, ...]:
        steps = []
        for value in config:
            step = round(float(value) * self.grid)
            if isinstance(value, bool) or abs(step / self.grid - float(value)) > 1e-12:
                raise ValueError(f"ratio configs in this space are multiples of 1/{self.grid}, got {list(config)}")
            steps.append(step)
        return tuple(steps)

    def check(self, config: Sequence[float]) -> Config:
        """Return `config` as a tuple of floats after checking it belongs to the space (ValueError otherwise)."""
        if len(config) != self.num_layers:
            raise ValueError(
                f"ratio config needs {self.num_layers} entries (one per layer), got {len(config)}: {config}"
            )
        steps = self._steps(config)
        if any(not self.min_steps <= step <= self.grid for step in steps):
            raise ValueError(f"ratio config entries must lie in [{self.min_steps / self.grid}, 1], got {list(config)}")
        return self._ratios(self.steps.check(steps))

    def length_spec(self, config: Sequence[float]) -> LengthConfig:
        return LengthConfig.ratios(self.check(config))

    def param_names(self) -> list[str]:
        return self.steps.param_names()

    def config_from_params(self, params: dict[str, float]) -> Config:
        return self._ratios(self.steps.config_from_params(params))

    def params(self, config: Sequence[float]) -> dict[str, float]:
        return self.steps.params(self._steps(self.check(config)))

    def constant_ratio_configs(self, count: int) -> list[Config]:
        """LAT's initial population on the ratio grid: r_i = ceil(grid * (1 - r) ** (i + 1)) / grid."""
        return [self._ratios(steps) for steps in self.steps.constant_ratio_configs(count)]

    def mutate(self, config: Sequence[float], probability: float, rng: np.random.Generator) -> Config:
        return self._ratios(self.steps.mutate(self._steps(self.check(config)), probability, rng))

    def crossover(self, first: Sequence[float], second: Sequence[float]) -> Config:
        """The element-wise mean of the two configs' steps, rounded up to the grid."""
        return self._ratios(self.steps.crossover(self._steps(self.check(first)), self._steps(self.check(second))))


SearchSpace = Union[LengthSpace, RatioSpace]
