"""The search engine's logic with a deterministic evaluator whose F1 is an analytic function of the config
(the product's accuracy is tested elsewhere; here only the search machinery)."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import numpy as np
import optuna
import pytest

from dtb_ext.config import LengthConfig
from dtb_ext.search.engine import run_search
from dtb_ext.search.evaluation import Evaluation
from dtb_ext.search.front import Front, load_front
from dtb_ext.search.pareto import pareto_indices
from dtb_ext.search.pick import pick
from dtb_ext.search.space import LengthSpace
from dtb_ext.search.strategies import EvolutionSettings
from repo_paths import REPO_ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = REPO_ROOT
SPACE = LengthSpace(num_layers=4, max_length=64, min_length=8)


class AnalyticEvaluator:
    """F1 falls smoothly as layers get shorter; MACs are the sum of lengths; records every call."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail_after = fail_after

    def __call__(self, config: tuple[int, ...]) -> Evaluation:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(config)
        f1 = 90.0 - sum((64 - length) ** 1.5 for length in config) / 100.0
        return Evaluation(f1=f1, exact_match=f1 - 6.0, macs=float(sum(config)), latency_ms=sum(config) / 10.0, n=50)


def _sha(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# --- Pareto front ----------------------------------------------------------------------------------------------


def test_pareto_front_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        f1 = rng.integers(0, 6, n).astype(float).tolist()  # few values: many ties
        cost = rng.integers(0, 6, n).astype(float).tolist()
        expected = {
            i for i in range(n)
            if not any(f1[j] >= f1[i] and cost[j] <= cost[i] and (f1[j] > f1[i] or cost[j] < cost[i]) for j in range(n))
        }
        got = pareto_indices(f1, cost)
        assert set(got) == expected
        assert [cost[i] for i in got] == sorted(cost[i] for i in got)


def test_pareto_front_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        pareto_indices([1.0, 2.0], [1.0])


# --- space and LAT operators -----------------------------------------------------------------------------------


def test_params_round_trip_exactly_for_every_config_of_a_small_space():
    space = LengthSpace(3, 12, 2)
    configs = [c for c in itertools.product(range(2, 13), repeat=3) if c[0] >= c[1] >= c[2]]
    for config in configs:
        assert space.config_from_params(space.params(config)) == config


def test_check_rejects_bad_configs_with_messages():
    with pytest.raises(ValueError, match="non-increasing"):
        SPACE.check((32, 40, 16, 8))
    with pytest.raises(ValueError, match=r"\[8, 64\]"):
        SPACE.check((64, 32, 16, 4))
    with pytest.raises(ValueError, match="4 entries"):
        SPACE.check((64, 32))


def test_mutation_keeps_genes_within_neighbour_bounds():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        parent = tuple(sorted(rng.integers(8, 65, 4).tolist(), reverse=True))
        child = SPACE.mutate(parent, 0.5, rng)
        SPACE.check(child)  # in range and non-increasing
        for i, gene in enumerate(child):
            upper = 64 if i == 0 else child[i - 1]
            lower = 8 if i == 3 else parent[i + 1]
            assert lower <= gene <= upper
    parent = (50, 40, 30, 20)
    assert SPACE.mutate(parent, 0.0, rng) == parent
    assert len({SPACE.mutate(parent, 1.0, rng) for _ in range(50)}) > 10


def test_crossover_is_rounded_up_mean():
    assert SPACE.crossover((64, 41, 30, 9), (50, 40, 21, 8)) == (57, 41, 26, 9)
    assert SPACE.crossover((10, 10, 9, 9), (9, 9, 9, 8)) == (10, 10, 9, 9)


def test_constant_ratio_population_spans_full_to_min_length():
    population = SPACE.constant_ratio_configs(10)
    assert population[0] == SPACE.full
    assert population[-1][-1] == SPACE.min_length
    for config in population:
        SPACE.check(config)
    assert len(set(population)) == len(population)


# --- engine: reproducibility, cache, resume, workers, storage checks -------------------------------------------


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "nsga2"])
def test_search_is_seeded_and_reproducible(strategy):
    runs = []
    for _ in range(2):
        evaluator = AnalyticEvaluator()
        front = run_search(evaluator, SPACE, n_evaluations=25, strategy=strategy, seed=7, progress=False)
        runs.append(evaluator.calls)
        assert len(front.points) == 25 and len(set(evaluator.calls)) == 25
        assert front.full_length.length_config.values == SPACE.full and front.full_length.speedup == 1.0
    assert runs[0] == runs[1]


def test_evolution_generations_follow_lat():
    evaluator = AnalyticEvaluator()
    settings = EvolutionSettings(population_size=5, mutation_size=6, crossover_size=4)
    storage = optuna.storages.InMemoryStorage()
    run_search(evaluator, SPACE, n_evaluations=15, strategy="evolution", evolution=settings, storage=storage,
               progress=False)
    trials = optuna.load_study(study_name="dtb-length-search", storage=storage).get_trials()
    assert evaluator.calls[:5] == SPACE.constant_ratio_configs(5)
    origins = [(t.user_attrs.get("generation"), t.user_attrs["origin"]) for t in trials]
    assert origins == [(None, "full_length")] + [(0, "initial")] * 4 + [(1, "mutation")] * 6 + [(1, "crossover")] * 4


def test_cached_configs_are_never_evaluated_again():
    tiny = LengthSpace(num_layers=2, max_length=4, min_length=3)  # only (3,3), (4,3), (4,4)
    evaluator = AnalyticEvaluator()
    front = run_search(evaluator, tiny, n_evaluations=3, strategy="tpe", tpe_startup_trials=50, progress=False,
                       seed=3)
    assert sorted(evaluator.calls) == [(3, 3), (4, 3), (4, 4)]
    assert len(front.points) == 3
    # a budget larger than the space ends at the trial cap, still with one evaluation per config
    evaluator = AnalyticEvaluator()
    storage = optuna.storages.InMemoryStorage()
    run_search(evaluator, tiny, n_evaluations=10, strategy="tpe", max_trials=30, storage=storage, progress=False)
    trials = optuna.load_study(study_name="dtb-length-search", storage=storage).get_trials()
    assert len(evaluator.calls) == 3 and len(trials) == 30
    cached = [t for t in trials if t.user_attrs["result"]["evaluated"] is False]
    assert cached and all(t.values == trials[t.user_attrs["result"]["cached_from"]].values for t in cached)


@pytest.mark.parametrize("strategy", ["evolution", "tpe"])
def test_resume_after_interruption_redoes_nothing(tmp_path, strategy):
    storage = str(tmp_path / "study.db")
    # the interruption lands inside generation 1 for evolution (population 10), in the TPE phase for tpe
    first = AnalyticEvaluator(fail_after=12)
    with pytest.raises(KeyboardInterrupt):
        run_search(first, SPACE, n_evaluations=16, strategy=strategy, storage=storage, progress=False)
    assert len(first.calls) == 12
    second = AnalyticEvaluator()
    front = run_search(second, SPACE, n_evaluations=16, strategy=strategy, storage=storage, progress=False)
    assert len(second.calls) == 4 and not set(first.calls) & set(second.calls)
    assert len(front.points) == 16
    third = AnalyticEvaluator()
    run_search(third, SPACE, n_evaluations=16, strategy=strategy, storage=storage, progress=False)
    assert third.calls == []


WORKER = textwrap.dedent(
    """
    import os, sys, time, optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from dtb_ext.search.engine import run_search
    from dtb_ext.search.evaluation import Evaluation
    from dtb_ext.search.space import LengthSpace

    # start together, so that both workers take part however slowly each process starts
    open(sys.argv[1] + ".ready" + sys.argv[3], "w").close()
    deadline = time.time() + 60
    while not all(os.path.exists(sys.argv[1] + ".ready" + str(i)) for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)

    def evaluate(config):
        time.sleep(0.1)
        f1 = 90.0 - sum((64 - length) ** 1.5 for length in config) / 100.0
        return Evaluation(f1=f1, exact_match=f1, macs=float(sum(config)))

    run_search(evaluate, LengthSpace(4, 64, 8), n_evaluations=16, strategy=sys.argv[2], storage=sys.argv[1],
               worker=int(sys.argv[3]), progress=False, identity={"test": "two workers"})
    """
)


@pytest.mark.parametrize("strategy", ["tpe", "evolution"])
def test_two_processes_share_one_sqlite_study(tmp_path, strategy):
    storage = str(tmp_path / "shared.db")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    workers = [
        subprocess.Popen([sys.executable, str(script), storage, strategy, str(i)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    trials = optuna.load_study(study_name="dtb-length-search", storage="sqlite:///" + storage).get_trials()
    evaluated = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["result"]["evaluated"]]
    configs = [tuple(t.user_attrs["length_config"]) for t in evaluated]
    assert len(set(configs)) >= 16
    assert len(configs) == len(set(configs)), "a config was evaluated twice"
    assert len({t.user_attrs["result"]["worker"] for t in evaluated}) == 2, "both workers should contribute evaluations"


class _GatedEvaluator:
    """Evaluates like AnalyticEvaluator, but each call signals `started` and blocks until `release` is set;
    `fail` makes the call raise instead, to stand for a worker whose evaluation failed."""

    def __init__(self, fail: bool = False) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.inner, self.fail = AnalyticEvaluator(), fail

    def __call__(self, config: tuple[int, ...]) -> Evaluation:
        self.started.set()
        assert self.release.wait(timeout=30), "the test never released the evaluation"
        if self.fail:
            raise RuntimeError("simulated failed evaluation")
        return self.inner(config)


def _run_trial(study: optuna.Study, trial: optuna.Trial, objective) -> threading.Thread:
    """Run `objective` on an asked trial in a thread and tell the study its outcome, as Optuna's loop would."""

    def body() -> None:
        try:
            study.tell(trial, objective(trial))
        except RuntimeError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def _two_claimants():
    """A study with two running trials (numbers 0 and 1) on the same config, as two workers would hold them."""
    from dtb_ext.search.study import DIRECTIONS

    study = optuna.create_study(directions=DIRECTIONS)
    params = SPACE.params((48, 40, 32, 24))
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    return study, study.ask(), study.ask()


def test_lower_trial_that_claims_second_defers_to_the_higher_one_evaluating():
    """The interleaving that used to evaluate twice: trial 1 claims and checks before trial 0 has claimed,
    so trial 1 evaluates; trial 0 then sees trial 1 evaluating and must copy its result, not evaluate too."""
    from dtb_ext.search.study import make_objective

    study, lower, higher = _two_claimants()
    first, second = _GatedEvaluator(), _GatedEvaluator()
    higher_thread = _run_trial(study, higher, make_objective(SPACE, first, "macs", poll_seconds=0.01))
    assert first.started.wait(timeout=30)
    lower_thread = _run_trial(study, lower, make_objective(SPACE, second, "macs", poll_seconds=0.01))
    lower_thread.join(timeout=0.5)
    assert lower_thread.is_alive(), "trial 0 should be waiting for trial 1's result"
    first.release.set()
    second.release.set()
    for thread in (higher_thread, lower_thread):
        thread.join(timeout=30)
    results = {t.number: t.user_attrs["result"] for t in study.get_trials()}
    assert not second.started.is_set() and first.inner.calls == [(48, 40, 32, 24)]
    assert results[0]["evaluated"] is False and results[0]["cached_from"] == 1 and results[1]["evaluated"] is True
    assert study.get_trials()[0].values == study.get_trials()[1].values


def test_waiting_trial_evaluates_itself_when_the_evaluating_one_fails():
    from dtb_ext.search.study import make_objective

    study, lower, higher = _two_claimants()
    failing, second = _GatedEvaluator(fail=True), _GatedEvaluator()
    lower_thread = _run_trial(study, lower, make_objective(SPACE, failing, "macs", poll_seconds=0.01))
    assert failing.started.wait(timeout=30)
    higher_thread = _run_trial(study, higher, make_objective(SPACE, second, "macs", poll_seconds=0.01))
    higher_thread.join(timeout=0.5)
    assert higher_thread.is_alive() and not second.started.is_set(), "trial 1 should wait for trial 0"
    second.release.set()
    failing.release.set()
    for thread in (lower_thread, higher_thread):
        thread.join(timeout=30)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "COMPLETE"] and second.inner.calls == [(48, 40, 32, 24)]
    assert study.get_trials()[1].user_attrs["result"]["evaluated"] is True


def test_mismatched_study_is_refused_and_left_untouched(tmp_path):
    storage = str(tmp_path / "study.db")
    run_search(AnalyticEvaluator(), SPACE, n_evaluations=3, strategy="tpe", storage=storage, progress=False,
               identity={"model_sha256": "aaa", "split": "search"})
    before = _sha(storage)
    with pytest.raises(ValueError, match="model_sha256"):
        run_search(AnalyticEvaluator(), SPACE, n_evaluations=5, strategy="tpe", storage=storage, progress=False,
                   identity={"model_sha256": "bbb", "split": "search"})
    with pytest.raises(ValueError, match="max_length"):
        run_search(AnalyticEvaluator(), LengthSpace(4, 128, 8), n_evaluations=5, storage=storage, progress=False,
                   identity={"model_sha256": "aaa", "split": "search"})
    with pytest.raises(ValueError, match="cost_model"):
        run_search(AnalyticEvaluator(), SPACE, n_evaluations=5, cost_model="latency", storage=storage,
                   progress=False, identity={"model_sha256": "aaa", "split": "search"})
    assert _sha(storage) == before


def test_unreadable_or_foreign_sqlite_is_refused_and_left_untouched(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    foreign = tmp_path / "foreign.db"
    connection = sqlite3.connect(foreign)
    connection.execute("CREATE TABLE notes (text TEXT)")
    connection.commit()
    connection.close()
    for path, message in ((garbage, "not a readable SQLite"), (foreign, "without Optuna's tables")):
        before = _sha(str(path))
        with pytest.raises(ValueError, match=message):
            run_search(AnalyticEvaluator(), SPACE, n_evaluations=3, storage=str(path), progress=False)
        assert _sha(str(path)) == before


# --- front files and picking -----------------------------------------------------------------------------------


def _front() -> Front:
    records = {
        (64, 64, 64, 64): dict(f1=80.0, exact_match=70.0, macs=256.0, latency_ms=20.0),
        (64, 64, 48, 32): dict(f1=80.5, exact_match=71.0, macs=208.0, latency_ms=17.0),
        (64, 48, 32, 16): dict(f1=79.2, exact_match=69.0, macs=160.0, latency_ms=13.0),
        (48, 32, 16, 8): dict(f1=76.0, exact_match=65.0, macs=104.0, latency_ms=9.0),
        (48, 48, 48, 48): dict(f1=75.0, exact_match=64.0, macs=192.0, latency_ms=16.0),  # dominated
    }
    return Front.build("macs", list(records.items()), (64, 64, 64, 64), {"model": "test"})


def test_front_keeps_full_length_reference_even_when_dominated():
    front = _front()
    assert front.full_length.length_config.values == (64, 64, 64, 64)
    assert [p.length_config.values for p in front.front] == [(48, 32, 16, 8), (64, 48, 32, 16), (64, 64, 48, 32)]
    assert front.full_length not in front.front
    assert front.front[0].speedup == pytest.approx(256 / 104)


def test_front_points_carry_length_configs_of_their_space():
    absolute = pick(_front(), max_f1_drop=1.0)
    assert absolute.length_config == LengthConfig.absolute([64, 48, 32, 16]) and absolute.space == "absolute"
    ratios = Front.build("macs", [((1.0, 1.0), dict(f1=80.0, exact_match=70.0, macs=4.0)),
                                  ((1.0, 0.5), dict(f1=79.9, exact_match=70.0, macs=3.0))], (1.0, 1.0),
                         space="ratios")
    chosen = pick(ratios, max_f1_drop=1.0)
    assert chosen.length_config == LengthConfig.ratios([1.0, 0.5]) and chosen.space == "ratios"
    assert Front.from_json(ratios.to_json()).front == ratios.front


def test_pick_constraints():
    front = _front()
    assert pick(front, max_f1_drop=1.0).length_config.values == (64, 48, 32, 16)  # 79.2 >= 80 - 1
    assert pick(front, max_f1_drop=0.5).length_config.values == (64, 64, 48, 32)
    assert pick(front, max_f1_drop=4.0).length_config.values == (48, 32, 16, 8)
    assert pick(front, max_f1_drop_percent=1.0).length_config.values == (64, 48, 32, 16)  # 1 % of 80 = 0.8
    assert pick(front, max_f1_drop_percent=0.5).length_config.values == (64, 64, 48, 32)
    assert pick(front, min_speedup=1.5).length_config.values == (64, 48, 32, 16)
    assert pick(front, min_speedup=1.0).length_config.values == (64, 64, 48, 32)
    assert pick(front, latency_budget_ms=16.5).length_config.values == (64, 48, 32, 16)
    assert pick(front, latency_budget_ms=100).length_config.values == (64, 64, 48, 32)


def test_pick_errors_name_the_best_achievable_value():
    front = _front()
    with pytest.raises(ValueError, match=r"highest speedup is 2\.462x"):
        pick(front, min_speedup=3.0)
    with pytest.raises(ValueError, match=r"lowest latency is 9\.000 ms"):
        pick(front, latency_budget_ms=5.0)
    with pytest.raises(ValueError, match="exactly one constraint"):
        pick(front, max_f1_drop=1.0, min_speedup=2.0)
    with pytest.raises(ValueError, match="exactly one constraint"):
        pick(front)
    with pytest.raises(ValueError, match="must be >= 0"):
        pick(front, max_f1_drop=-1.0)
    for name in ("max_f1_drop", "max_f1_drop_percent", "latency_budget_ms", "min_speedup"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"{name} must be a finite number, got {value}"):
                pick(front, **{name: value})
    no_latency = Front.build("macs", [((64, 64, 64, 64), dict(f1=1.0, exact_match=1.0, macs=1.0))], (64,) * 4)
    with pytest.raises(ValueError, match="no latency measurements"):
        pick(no_latency, latency_budget_ms=10.0)


def test_pick_reports_a_missing_front_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        pick(str(tmp_path / "missing.json"), max_f1_drop=1.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a dtb_ext search front"):
        pick(str(bad), max_f1_drop=1.0)


def test_front_files_are_written(tmp_path):
    front = _front().with_dev_scores({(64, 48, 32, 16): (78.0, 68.0)}, {"path": "dev.json"})
    paths = front.save(str(tmp_path))
    assert load_front(paths["json"]) == front
    rows = (tmp_path / "front.csv").read_text().strip().splitlines()
    assert rows[0] == "length_config,f1,exact_match,macs,latency_ms,speedup,dev_f1,dev_exact_match"
    assert len(rows) == 1 + len(front.front) and rows[2].startswith("64 48 32 16,79.2,69.0,160.0,13.0,")
    assert rows[2].endswith(",78.0,68.0")
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_evolution_sampler_breeds_from_the_front_when_the_queue_is_empty():
    """What a worker does when another one emptied the queue: one new LAT offspring of the front."""
    from dtb_ext.search.strategies import EvolutionSampler, front_configs
    from dtb_ext.search.study import make_objective

    storage = optuna.storages.InMemoryStorage()
    evaluator = AnalyticEvaluator()
    settings = EvolutionSettings(population_size=6)
    run_search(evaluator, SPACE, n_evaluations=6, evolution=settings, storage=storage, progress=False)
    study = optuna.load_study(study_name="dtb-length-search", storage=storage,
                              sampler=EvolutionSampler(SPACE, settings, seed=5))
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    parents = front_configs(study)
    study.optimize(make_objective(SPACE, evaluator, "macs"), n_trials=1)
    child = evaluator.calls[-1]
    assert len(evaluator.calls) == 7 and child not in evaluator.calls[:-1]
    SPACE.check(child)
    crossover_children = {SPACE.crossover(a, b) for a in parents for b in parents if a != b}
    # a mutant of parent p keeps each gene at or above p's next gene
    mutant_of_some_parent = any(all(child[i] >= p[i + 1] for i in range(3)) for p in parents)
    assert child in crossover_children or mutant_of_some_parent


@pytest.mark.parametrize("strategy", ["evolution", "nsga2"])
def test_full_length_point_is_retried_after_it_failed(strategy):
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(KeyboardInterrupt):
        run_search(AnalyticEvaluator(fail_after=0), SPACE, n_evaluations=5, strategy=strategy, storage=storage,
                   progress=False)
    evaluator = AnalyticEvaluator()
    front = run_search(evaluator, SPACE, n_evaluations=5, strategy=strategy, storage=storage, progress=False)
    assert evaluator.calls[0] == SPACE.full and front.full_length.length_config.values == SPACE.full


def test_evolution_continues_a_study_started_by_another_strategy():
    storage = optuna.storages.InMemoryStorage()
    run_search(AnalyticEvaluator(), SPACE, n_evaluations=6, strategy="tpe", storage=storage, progress=False)
    settings = EvolutionSettings(population_size=1, mutation_size=4, crossover_size=2)  # population: full only
    evaluator = AnalyticEvaluator()
    front = run_search(evaluator, SPACE, n_evaluations=12, evolution=settings, storage=storage, progress=False)
    assert len(evaluator.calls) == 6 and len(front.points) == 12


def test_seed_configs_are_evaluated_right_after_full_length_once_each(tmp_path):
    seeds = [(64, 64, 32, 16), (64, 64, 64, 8), (64, 64, 32, 16)]
    evaluator = AnalyticEvaluator()
    storage = str(tmp_path / "study.db")
    front = run_search(evaluator, SPACE, n_evaluations=8, strategy="evolution", storage=storage, progress=False,
                       seed_configs=seeds)
    assert evaluator.calls[:3] == [SPACE.full, (64, 64, 32, 16), (64, 64, 64, 8)]
    assert evaluator.calls.count((64, 64, 32, 16)) == 1
    trials = optuna.load_study(study_name="dtb-length-search", storage=f"sqlite:///{storage}").get_trials()
    assert [t.user_attrs.get("origin") for t in trials[:3]] == ["full_length", "seed", "seed"]
    assert {(64, 64, 32, 16), (64, 64, 64, 8)} <= {point.length_config.values for point in front.points}
    # resuming with the same seeds evaluates none of them again
    again = AnalyticEvaluator()
    run_search(again, SPACE, n_evaluations=10, strategy="evolution", storage=storage, progress=False,
               seed_configs=seeds)
    assert not set(again.calls) & set(seeds)


def test_a_seed_config_outside_the_space_is_refused():
    with pytest.raises(ValueError, match="one per layer"):
        run_search(AnalyticEvaluator(), SPACE, n_evaluations=3, progress=False, seed_configs=[(64, 64, 32)])
