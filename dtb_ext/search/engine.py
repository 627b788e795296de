"""The search loop: runs a strategy on an Optuna study until a number of distinct configs has been evaluated.

Everything lives in the study: each evaluation is a completed trial whose user attributes hold the config and
its scores, so a rerun of the same search continues where it stopped, and several processes (or machines) that
open the same storage share one search (Optuna's own distributed optimisation).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dtb_ext.search.evaluation import COST_MODELS, Evaluator
from dtb_ext.search.front import Front
from dtb_ext.search.pareto import pareto_indices
from dtb_ext.search.paired import BootstrapSettings
from dtb_ext.search.space import SearchSpace
from dtb_ext.search.strategies import (
    STRATEGIES,
    EvolutionSettings,
    enqueue_generation,
    make_sampler,
    taken_configs,
)
from dtb_ext.search.study import completed_results, count_evaluations, make_objective, open_storage, open_study

STARTED_STATES = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED)


def worker_seed(seed: int, worker: int) -> int:
    """Worker 0 uses `seed` itself; other workers get distinct seeds derived from (seed, worker), so parallel
    processes do not propose the same configs."""
    if worker == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0])


class _Progress:
    """Optuna callback: a tqdm bar counting evaluated configs, showing the best F1 and the front size; asks the
    study to stop once the evaluation budget or the trial cap is reached."""

    def __init__(self, n_evaluations: int, max_trials: int, show: bool) -> None:
        self.n_evaluations = n_evaluations
        self.max_trials = max_trials
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_evaluations, desc="length search", unit="eval")

    def done(self, study: optuna.Study) -> bool:
        return count_evaluations(study) >= self.n_evaluations or _trials_started(study) >= self.max_trials

    def refresh(self, study: optuna.Study) -> None:
        if self.bar is None:
            return
        self.bar.n = min(count_evaluations(study), self.n_evaluations)
        scores = {config: values for config, values in _completed_values(study)}
        if scores:
            f1 = [f for f, _ in scores.values()]
            front_size = len(pareto_indices(f1, [c for _, c in scores.values()]))
            self.bar.set_postfix(best_f1=f"{max(f1):.2f}", front=front_size, refresh=False)
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.refresh(study)
        if self.done(study):
            study.stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _trials_started(study: optuna.Study) -> int:
    """Trials that ran or are running (queued ones not yet started do not count against the cap)."""
    return len(study.get_trials(deepcopy=False, states=STARTED_STATES))


def _completed_values(study: optuna.Study) -> list[tuple[tuple[int, ...], tuple[float, float]]]:
    return [
        (tuple(t.user_attrs["length_config"]), (t.values[0], t.values[1]))
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "length_config" in t.user_attrs
    ]


def run_search(
    evaluator: Evaluator,
    space: SearchSpace,
    *,
    n_evaluations: int = 100,
    strategy: str = "evolution",
    cost_model: str = "macs",
    storage: str | BaseStorage | None = None,
    study_name: str = "dtb-length-search",
    identity: dict[str, Any] | None = None,
    seed: int = 0,
    worker: int = 0,
    evolution: EvolutionSettings | None = None,
    tpe_startup_trials: int = 10,
    max_trials: int | None = None,
    bootstrap: BootstrapSettings | None = None,
    seed_configs: Sequence[Sequence[float]] = (),
    progress: bool = True,
) -> Front:
    """Search length configs maximising F1 and minimising cost; return the front of every evaluated config.

    evaluator: config -> Evaluation; it runs the model at that config (see `qa_objective.QAEvaluator`).
    n_evaluations: stop once this many distinct configs have been evaluated in the study (counting those of
        earlier runs and of other workers; trials that reuse a cached result do not count).
    strategy: "evolution" (LAT), "tpe" (multi-objective TPE) or "nsga2".
    cost_model: "macs" or "latency": which Evaluation field is minimised.
    storage: None (in memory), an Optuna storage URL, a SQLite file path, or a storage object. Reusing a
        storage resumes the search; several processes on one storage share it.
    identity: what the evaluations depend on (model, data...); stored in the study and checked on reopening,
        together with the space and cost model.
    seed, worker: the sampler's seed is derived from both, so give each parallel process its own worker index.
    max_trials: cap on started trials (cache hits and failures included) so that a search whose space is
        exhausted ends; default 10 * n_evaluations + 100.
    bootstrap: how the front's drop intervals are computed from per-question F1 (when the evaluator gives them).
    seed_configs: configs of `space` evaluated right after full length, before the strategy's own (those not yet
        in the study; they count toward n_evaluations), e.g. shapes its initial population never proposes: LAT's
        population drops from the first layer on, and keeping the first layers whole and dropping late is cheap.
    """
    if n_evaluations < 1:
        raise ValueError(f"n_evaluations must be >= 1, got {n_evaluations}")
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost model must be one of {COST_MODELS}, got {cost_model!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if worker < 0:
        raise ValueError(f"worker must be >= 0, got {worker}")
    seeds = [space.check(config) for config in seed_configs]  # ValueError names a config outside the space
    evolution = evolution or EvolutionSettings()
    max_trials = max_trials if max_trials is not None else 10 * n_evaluations + 100
    full_identity = {**(identity or {}), "cost_model": cost_model, **space.identity()}
    sampler_seed = worker_seed(seed, worker)
    sampler = make_sampler(strategy, space, sampler_seed, evolution, tpe_startup_trials)
    study = open_study(open_storage(storage), study_name, full_identity, sampler)
    objective = make_objective(space, evaluator, cost_model)
    monitor = _Progress(n_evaluations, max_trials, progress)
    try:
        monitor.refresh(study)
        # The full-length point anchors speedups and the F1-drop budget: first in (again if it failed), then the
        # seeds, each once.
        queue = {space.full: "full_length", **{config: "seed" for config in seeds if config != space.full}}
        taken = taken_configs(study, space)
        for config, origin in queue.items():
            if config not in taken:
                study.enqueue_trial(space.params(config), user_attrs={"origin": origin})
        if strategy == "evolution":
            _run_evolution(study, space, objective, monitor, evolution, seed)
        else:
            while not monitor.done(study):
                study.optimize(objective, n_trials=_remaining(study, monitor), callbacks=[monitor])
    finally:
        monitor.close()
    return Front.build(cost_model, completed_results(study), space.full, full_identity, space=space.kind,
                       bootstrap=bootstrap)


def _remaining(study: optuna.Study, monitor: _Progress) -> int:
    left_evaluations = monitor.n_evaluations - count_evaluations(study)
    left_trials = monitor.max_trials - _trials_started(study)
    return max(1, min(left_evaluations, left_trials))


def _run_evolution(study, space, objective, monitor: _Progress, settings: EvolutionSettings, seed: int) -> None:
    """Evaluate the queued generation, enqueue the next from the front, repeat until the budget is spent."""
    while not monitor.done(study):
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if waiting == 0:
            waiting = enqueue_generation(study, space, settings, seed)
            if waiting == 0:
                # every offspring drawn was already evaluated: the front has converged for these operators
                return
        study.optimize(objective, n_trials=min(waiting, _remaining(study, monitor)), callbacks=[monitor])

