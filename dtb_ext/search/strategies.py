"""Search strategies, all run as Optuna samplers on one study: LAT's evolutionary search (generations enqueued
into the study), multi-objective TPE, and NSGA-II."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from dtb_ext.search.pareto import pareto_indices
from dtb_ext.search.space import Config, SearchSpace
from dtb_ext.search.study import trial_config

STRATEGIES: tuple[str, ...] = ("evolution", "tpe", "nsga2")
# the states whose config counts as taken: evaluated, being evaluated, or queued
TAKEN_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class EvolutionSettings:
    """LAT's evolutionary search. population_size constant-ratio configs start it; each generation then adds
    `mutation_size` mutants (per-gene probability `mutation_prob`) and `crossover_size` crossovers of parents
    drawn from the current Pareto front. `max_attempts` bounds the redraws made to find a config not yet in the
    study."""

    population_size: int = 10
    mutation_size: int = 30
    crossover_size: int = 30
    mutation_prob: float = 0.5
    max_attempts: int = 50

    def __post_init__(self) -> None:
        for name in ("population_size", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mutation_size", "crossover_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mutation_size + self.crossover_size == 0:
            raise ValueError("mutation_size + crossover_size must be >= 1, got 0")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"mutation_prob must lie in [0, 1], got {self.mutation_prob}")


def search_space(space: SearchSpace) -> dict[str, BaseDistribution]:
    return {name: FloatDistribution(0.0, 1.0) for name in space.param_names()}


def taken_configs(study: optuna.Study, space: SearchSpace) -> set[Config]:
    configs = {trial_config(t, space) for t in study.get_trials(deepcopy=False, states=TAKEN_STATES)}
    configs.discard(None)
    return configs


def front_configs(study: optuna.Study) -> list[Config]:
    """Configs of the current Pareto front of completed trials (F1 up, cost down), deduplicated."""
    best: dict[Config, tuple[float, float]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        config = trial_config(trial)
        if config is not None and trial.values is not None:
            best.setdefault(config, (trial.values[0], trial.values[1]))
    configs = list(best)
    indices = pareto_indices([best[c][0] for c in configs], [best[c][1] for c in configs])
    return [configs[i] for i in indices]


def _offspring(
    space: SearchSpace, parents: list[Config], operation: str, settings: EvolutionSettings,
    rng: np.random.Generator, taken: set[Config],
) -> Config | None:
    """One new config (not in `taken`) by mutation or crossover of `parents`; None after max_attempts."""
    for _ in range(settings.max_attempts):
        if operation == "mutation":
            child = space.mutate(parents[int(rng.integers(len(parents)))], settings.mutation_prob, rng)
        else:
            first, second = rng.choice(len(parents), size=2, replace=False)
            child = space.crossover(parents[int(first)], parents[int(second)])
        if child not in taken:
            return child
    return None


def enqueue_generation(study: optuna.Study, space: SearchSpace, settings: EvolutionSettings, seed: int) -> int:
    """Enqueue the next generation into the study and return how many configs were enqueued.

    Generation 0 is the constant-ratio population (the full-length config first). Generation g >= 1 is drawn from
    the front of the completed trials with a generator seeded by (seed, g), so a resumed search draws the same
    generations. Configs already evaluated, running or queued are skipped.
    """
    generations = [t.user_attrs.get("generation") for t in study.get_trials(deepcopy=False)]
    generation = 1 + max((g for g in generations if g is not None), default=-1)
    taken = taken_configs(study, space)
    planned: list[tuple[Config, str]] = []
    if generation == 0:
        planned = [(c, "initial") for c in space.constant_ratio_configs(settings.population_size) if c not in taken]
        if not planned:
            generation = 1  # the study already holds the initial population (e.g. from another strategy)
    if generation >= 1:
        rng = np.random.default_rng([seed, generation])
        parents = front_configs(study)
        if len(parents) < 2:
            # crossover needs two parents: fall back on every completed config
            completed = (trial_config(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            parents = sorted({c for c in completed if c is not None}, reverse=True)
        if not parents:
            return 0  # nothing completed to breed from (every evaluation so far failed)
        operations = ["mutation"] * settings.mutation_size
        if len(parents) >= 2:
            operations += ["crossover"] * settings.crossover_size
        for operation in operations:
            child = _offspring(space, parents, operation, settings, rng, taken)
            if child is not None:
                taken.add(child)
                planned.append((child, operation))
    for config, origin in planned:
        study.enqueue_trial(space.params(config), user_attrs={"generation": generation, "origin": origin})
    return len(planned)


class EvolutionSampler(optuna.samplers.BaseSampler):
    """Samples a trial that did not come from the queue (another worker emptied it first) as one LAT offspring
    of the current front, drawn with a generator seeded by (seed, trial number); if every offspring drawn is
    already in the study, the trial falls back to a seeded random config. Queued trials keep their enqueued
    parameters."""

    def __init__(self, space: SearchSpace, settings: EvolutionSettings, seed: int) -> None:
        self._space = space
        self._settings = settings
        self._seed = seed
        self._fallback = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return search_space(self._space)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if "fixed_params" in trial.system_attrs:
            return {}
        rng = np.random.default_rng([self._seed, 1_000_003, trial.number])
        parents = front_configs(study) or [self._space.full]
        operation = "crossover" if len(parents) >= 2 and rng.random() < 0.5 else "mutation"
        child = _offspring(self._space, parents, operation, self._settings, rng, taken_configs(study, self._space))
        return {} if child is None else self._space.params(child)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(
    strategy: str, space: SearchSpace, seed: int, evolution: EvolutionSettings, tpe_startup_trials: int = 10
) -> optuna.samplers.BaseSampler:
    """The sampler for `strategy`, seeded (each parallel worker should pass its own seed)."""
    if strategy == "evolution":
        return EvolutionSampler(space, evolution, seed)
    if strategy == "tpe":
        with warnings.catch_warnings():
            # multivariate TPE is marked experimental; it is what makes TPE model the layers jointly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, constant_liar=True, n_startup_trials=tpe_startup_trials
            )
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=evolution.population_size)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
