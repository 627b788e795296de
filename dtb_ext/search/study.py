"""The Optuna study behind a search: opening its storage safely, checking it belongs to this search, and the
trial objective that evaluates a configuration once and reuses the result for every later trial with it."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import sqlite3
import time
import warnings
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from dtb_ext.search.evaluation import Evaluator, compact_scores
from dtb_ext.search.space import Config, SearchSpace

IDENTITY_ATTR = "dtb_search_identity"
DIRECTIONS = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]  # F1 up, cost down
# A worker that dies without marking its trial failed stops beating; after the grace period any process
# touching the study marks that trial FAIL and re-enqueues its parameters once.
HEARTBEAT_INTERVAL_S = 20
HEARTBEAT_GRACE_S = 60
OPTUNA_TABLES = {"studies", "trials", "version_info"}
STORAGE_OPEN_ATTEMPTS = 4
SQLITE_BUSY_TIMEOUT_S = 60  # how long a SQLite writer waits for another process's lock


def storage_url(storage: str) -> str:
    """A plain file path means a SQLite file; anything with '://' is passed to Optuna as a storage URL."""
    if "://" in storage:
        return storage
    return "sqlite:///" + os.path.abspath(storage)


def _check_sqlite_file(url: str) -> None:
    """Refuse a SQLite file that is unreadable or is some other program's database, before Optuna writes to it."""
    path = url[len("sqlite:///"):]
    if not path or path == ":memory:" or not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        connection = sqlite3.connect(pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise ValueError(
            f"study storage {path} is not a readable SQLite database ({error}); nothing was changed"
        ) from error
    if not OPTUNA_TABLES <= tables:
        raise ValueError(
            f"study storage {path} is a SQLite database without Optuna's tables (found {sorted(tables)}); "
            "refusing to write into it; pick a new file"
        )


def _serialise_sqlite_transactions(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna hands a queued (WAITING) trial to a worker by reading its state and then marking it RUNNING, relying
    on SELECT ... FOR UPDATE, which SQLite ignores; with Python's default deferred transactions two processes can
    both take the same queued trial and one then crashes with "Cannot tell a COMPLETE trial". Immediate
    transactions make that read-then-write atomic. This is SQLAlchemy's documented recipe for SQLite."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections predate the listeners


def open_storage(storage: str | BaseStorage | None) -> BaseStorage:
    """None -> in-memory; a BaseStorage -> as is; a path or URL -> RDBStorage with heartbeats."""
    if storage is None:
        return optuna.storages.InMemoryStorage()
    if isinstance(storage, BaseStorage):
        return storage
    url = storage_url(storage)
    is_sqlite = url.startswith("sqlite:///")
    if is_sqlite:
        _check_sqlite_file(url)
    # Workers started together on a fresh database race to create Optuna's tables and one of them fails; by
    # the retry the tables exist, so a short back-off resolves it.
    for attempt in range(STORAGE_OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                # heartbeats are marked experimental; they are how Optuna recovers trials of dead workers
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                rdb = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if is_sqlite else None,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
            if is_sqlite:
                _serialise_sqlite_transactions(rdb.engine)
            return rdb
        except Exception as error:  # sqlalchemy/Optuna raise many kinds; the user needs one clear message
            if attempt + 1 == STORAGE_OPEN_ATTEMPTS:
                raise ValueError(f"cannot open study storage {url!r}: {error}") from error
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _canonical(identity: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, sort_keys=True))


def open_study(
    storage: BaseStorage,
    study_name: str,
    identity: dict[str, Any],
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Load the study named `study_name` or create it. An existing study must have been made by a search with
    the same identity (model, data, cost model, space); otherwise ValueError and nothing is written."""
    identity = _canonical(identity)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(
            storage=storage, sampler=sampler, study_name=study_name, directions=DIRECTIONS, load_if_exists=True
        )
    except Exception as error:
        raise ValueError(f"cannot read study {study_name!r} from its storage: {error}") from error
    if list(study.directions) != DIRECTIONS:
        raise ValueError(
            f"study {study_name!r} optimises {[d.name for d in study.directions]}, "
            f"not {[d.name for d in DIRECTIONS]} (F1, cost); use another study name or storage"
        )
    # Trials first, then the identity: a worker creating the study sets its identity before its first trial, so a
    # study seen with trials shows that identity when read afterwards (read the other way round, a concurrent
    # creator's first trial could land between the two reads and look like a foreign study).
    has_trials = bool(study.get_trials(deepcopy=False))
    stored = study.user_attrs.get(IDENTITY_ATTR)
    if stored is None:
        if has_trials:
            raise ValueError(
                f"study {study_name!r} has trials but no {IDENTITY_ATTR!r}: it was not made by this search; "
                "use another study name or storage"
            )
        study.set_user_attr(IDENTITY_ATTR, identity)
    elif stored != identity:
        differences = {
            key: {"study": stored.get(key), "this search": identity.get(key)}
            for key in sorted(set(stored) | set(identity))
            if stored.get(key) != identity.get(key)
        }
        raise ValueError(
            f"study {study_name!r} was made by a different search; differing fields: {json.dumps(differences)}. "
            "Use another study name or storage (nothing was changed)"
        )
    return study


def trial_config(trial: FrozenTrial, space: SearchSpace | None = None) -> Config | None:
    """The length config of a trial: recorded once it ran; for a trial still waiting in the queue, read from its
    enqueued parameters when `space` is given; None when unknown."""
    recorded = trial.user_attrs.get("length_config")
    if recorded is not None:
        return tuple(recorded)
    fixed = trial.system_attrs.get("fixed_params")
    if space is not None and fixed is not None and set(space.param_names()) <= set(fixed):
        return space.config_from_params(fixed)
    return None


# A trial's user attributes: "length_config" (written first: the claim) and "result", one dict written once
# (each attribute is a database transaction): f1, exact_match, macs, latency_ms, n, seconds, per_question_f1
# (rounded, see `compact_scores`; absent in studies made before paired scoring), evaluated (False when copied
# from trial `cached_from`) and worker (host:pid).
RESULT_ATTR = "result"
RECORD_KEYS = ("f1", "exact_match", "macs", "latency_ms", "n", "seconds", "per_question_f1")


def trial_result(trial: FrozenTrial) -> dict[str, Any] | None:
    return trial.user_attrs.get(RESULT_ATTR)


def completed_results(study: optuna.Study) -> list[tuple[Config, dict[str, Any]]]:
    """(config, record) of every completed trial, in trial order (a config may appear more than once)."""
    results = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        config, result = trial_config(trial), trial_result(trial)
        if config is not None and result is not None:
            results.append((config, {key: result.get(key) for key in RECORD_KEYS}))
    return results


def count_evaluations(study: optuna.Study) -> int:
    """Distinct configs that were actually evaluated (cache hits do not count)."""
    return len({
        trial_config(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (trial_result(t) or {}).get("evaluated")
    })


def make_objective(
    space: SearchSpace,
    evaluator: Evaluator,
    cost_model: str,
    poll_seconds: float = 0.2,
) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The Optuna objective: (F1, cost) of the trial's config, evaluated at most once per study.

    A trial first records its config (its claim), then settles with the other running trials that claim the
    same config which one evaluates (see `_settle_claim`); the others wait and copy its result. If a completed
    trial already has that config, its result is copied at once.
    """

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        params = {name: trial.suggest_float(name, 0.0, 1.0) for name in space.param_names()}
        config = space.config_from_params(params)
        trial.set_user_attr("length_config", list(config))
        source = _settle_claim(trial, config, poll_seconds)
        if source is not None:
            record = {key: trial_result(source).get(key) for key in RECORD_KEYS}
            record.update(evaluated=False, cached_from=source.number)
            values = (float(source.values[0]), float(source.values[1]))
        else:
            evaluation = evaluator(config)
            record = {
                "f1": float(evaluation.f1),
                "exact_match": float(evaluation.exact_match),
                "macs": evaluation.macs,
                "latency_ms": evaluation.latency_ms,
                "n": int(evaluation.n),
                "seconds": float(evaluation.seconds),
                "per_question_f1": compact_scores(evaluation.per_question_f1),
                "evaluated": True,
            }
            values = (float(evaluation.f1), evaluation.cost(cost_model))
        record["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr(RESULT_ATTR, record)
        return values

    return objective


# A claiming trial's published decision, in user attribute CLAIM_ATTR: absent or DECIDING while undecided.
CLAIM_ATTR = "claim"
DECIDING, DEFER, EVALUATE = "deciding", "defer", "evaluate"


def _settle_claim(trial: optuna.Trial, config: Config, poll_seconds: float) -> FrozenTrial | None:
    """Return a completed trial with this config to copy, or None once this trial is the one to evaluate it.

    Among the running trials that claim the same config, a trial defers (publishes DEFER and waits) when one of
    them is numbered lower or has published EVALUATE; it waits while a higher-numbered one is still undecided;
    otherwise it publishes EVALUATE and evaluates. Every trial writes its claim before reading the others', so
    of two claimants at least one sees the other: if the higher-numbered one does not see the lower, the lower
    sees it, waits for its decision and defers to its EVALUATE. Hence one evaluation per config, whatever the
    timing. A trial that deferred withdraws (DECIDING) and reads again before it may evaluate, so nobody acts
    on a stale DEFER; that happens when the trial it deferred to failed or its worker died (Optuna's heartbeat
    then marks it failed).
    """
    config_list = list(config)
    published = None
    while True:
        same_config = [
            other for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if other.number != trial.number and other.user_attrs.get("length_config") == config_list
        ]
        for other in same_config:
            if other.state == TrialState.COMPLETE and trial_result(other) is not None:
                return other
        running = [other for other in same_config if other.state == TrialState.RUNNING]
        decisions = {other.number: other.user_attrs.get(CLAIM_ATTR, DECIDING) for other in running}
        if EVALUATE in decisions.values() or any(number < trial.number for number in decisions):
            decision = DEFER
        elif any(number > trial.number and decided == DECIDING for number, decided in decisions.items()):
            decision = published
        elif published == DEFER:
            decision = DECIDING
        else:
            trial.set_user_attr(CLAIM_ATTR, EVALUATE)
            return None
        if decision != published:
            trial.set_user_attr(CLAIM_ATTR, decision)
            published = decision
        # a dead worker's trial stays RUNNING until its heartbeat goes stale; this marks it failed
        optuna.storages.fail_stale_trials(trial.study)
        time.sleep(poll_seconds)
