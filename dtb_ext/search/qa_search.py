"""The length search of a span-QA model on SQuAD: `search_lengths` picks the search questions, builds the
QA-backed evaluator, runs the engine, re-evaluates the front on a held-out file, and writes the front files."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

import optuna

from dtb_ext.data_paths import DEFAULT_MODEL_DIR, training_file
from dtb_ext.search.engine import run_search
from dtb_ext.search.front import Front
from dtb_ext.search.qa_objective import (
    LatencySettings,
    QAEvaluator,
    model_fingerprint,
    questions_fingerprint,
    sample_questions,
)
from dtb_ext.search.space import Config, LengthSpace
from dtb_ext.search.strategies import EvolutionSettings
from dtb_ext.search.study import open_storage

# 400 questions (about 410 features) keep one evaluation of MiniLM-L6 near 10 s on 2 CPU cores, so a
# 100-evaluation search fits well inside an hour; the F1 standard error on 400 questions is about 2 points,
# comparable configs are scored on the same questions, so their differences are much less noisy than that.
DEFAULT_QUESTIONS = 400
# Dynamic-TinyBERT searched lengths in [91, 384]. Features average ~180 real tokens, so a floor of 91 caps the
# achievable MACs speedup near 2x; 32 leaves room for the aggressive end of the front.
DEFAULT_MIN_LENGTH = 32


def load_qa_model(path: str | None, device: str = "cpu") -> tuple[Any, Any]:
    """(model in float32 on `device`, tokenizer) from a saved model directory; None: the bundled default model."""
    path = path or DEFAULT_MODEL_DIR
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(
            f"no model directory with a config.json at {path!r}"
            + (" (the default model has not been shipped yet); pass --model DIR" if path == DEFAULT_MODEL_DIR else "")
        )
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch.float32).to(device)
    return model, AutoTokenizer.from_pretrained(path)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _evaluator_for(
    model, tokenizer, path: str, articles, questions: int | None, sample_seed: int, cost_model: str,
    max_seq_length: int, doc_stride: int, max_query_length: int, batch_size: int, latency: LatencySettings,
) -> tuple[QAEvaluator, dict[str, Any]]:
    """The evaluator on a fixed question sample of `path` and the identity of that data."""
    from dtb_ext.qa import load_squad, prepare_eval_features

    if not os.path.isfile(path):
        raise ValueError(f"SQuAD file not found: {path}")
    examples = sample_questions(load_squad(path, articles=articles), questions, sample_seed)
    features = prepare_eval_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    evaluator = QAEvaluator(model, features, cost_model, batch_size=batch_size, latency=latency)
    identity = {
        "data_file": os.path.basename(path),
        "data_sha256": _file_sha256(path),
        "questions": len(examples),
        "questions_sha256": questions_fingerprint(examples),
        "max_seq_length": max_seq_length,
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
    }
    return evaluator, identity


def reevaluate_front(front: Front, evaluator: QAEvaluator, description: dict[str, Any],
                     study: optuna.Study | None = None, progress: bool = True) -> Front:
    """Score every front config and the full-length config with `evaluator` (a held-out set: reported, never
    used for choosing). With `study`, results are cached in its user attributes, keyed by the held-out data's
    fingerprint and the config, so an interrupted re-evaluation resumes."""
    from tqdm.auto import tqdm

    key_prefix = "reevaluation/" + hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    configs: list[Config] = [front.full_length.length_config] + [
        p.length_config for p in front.front if p.length_config != front.full_length.length_config
    ]
    scores: dict[Config, tuple[float, float]] = {}
    for config in tqdm(configs, desc="re-evaluate front", unit="config", disable=not progress):
        key = f"{key_prefix}/{','.join(map(str, config))}"
        cached = study.user_attrs.get(key) if study is not None else None
        if cached is None:
            evaluation = evaluator(config)
            cached = [evaluation.f1, evaluation.exact_match]
            if study is not None:
                study.set_user_attr(key, cached)
        scores[config] = (float(cached[0]), float(cached[1]))
    return front.with_dev_scores(scores, description)


def search_lengths(
    model: str | Any | None = None,
    tokenizer: Any | None = None,
    *,
    data: str | None = None,
    questions: int | None = DEFAULT_QUESTIONS,
    sample_seed: int = 0,
    cost_model: str = "macs",
    strategy: str = "evolution",
    n_evaluations: int = 100,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "dtb-length-search",
    seed: int = 0,
    worker: int = 0,
    min_length: int = DEFAULT_MIN_LENGTH,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    batch_size: int = 32,
    latency: LatencySettings | None = None,
    evolution: EvolutionSettings | None = None,
    reevaluate_on: str | None = None,
    reevaluate_questions: int | None = None,
    out_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Front:
    """Search the length configurations of a span-QA model for the F1/cost Pareto front.

    model: a saved model directory, a loaded *ForQuestionAnswering model (then pass `tokenizer`), or None for
        the bundled default model (dtb_ext/default_model).
    data: SQuAD training file holding the held-out search articles (None: the training subset beside a repository
        checkout; where it is absent, ValueError says what to pass);
        `questions` of them (fixed by `sample_seed`; None: all) are evaluated for every config.
    cost_model: "macs" (count_macs at every feature's real length, summed) or "latency" (LatencySettings).
    strategy, n_evaluations, storage, study_name, seed, worker, evolution: see `run_search`.
    min_length: the shortest length any layer may keep; the longest is max_seq_length.
    reevaluate_on: a SQuAD file (e.g. dev-a) on which the final front is scored again; both scores are kept
        (`f1` search split, `dev_f1` this file). `reevaluate_questions` limits it to a fixed sample.
    out_dir: where front.json, front.csv and front.png are written (None: not written).
    device: where a model loaded from a directory runs (a loaded model stays where it is).
    """
    from dtb_ext.qa.data import search_split_articles

    data = training_file(data, "the search split's articles (dtb_ext/data/search_articles.json)", "--data")
    if progress:
        print(f"data: {data}", file=sys.stderr)
    if isinstance(model, str) or model is None:
        model, tokenizer = load_qa_model(model, device)
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: pass tokenizer=...")
    latency = latency or LatencySettings()
    evaluator, data_identity = _evaluator_for(
        model, tokenizer, data, search_split_articles(), questions, sample_seed, cost_model,
        max_seq_length, doc_stride, max_query_length, batch_size, latency,
    )
    identity = {
        "model_sha256": model_fingerprint(model),
        "split": "search",
        **data_identity,
    }
    if cost_model == "latency":
        identity["latency"] = {
            "batch_size": latency.batch_size, "sample": latency.sample, "warmup": latency.warmup,
            "repeats": latency.repeats,
        }
    space = LengthSpace(model.config.num_hidden_layers, max_seq_length, min_length)
    storage = open_storage(storage)
    front = run_search(
        evaluator, space, n_evaluations=n_evaluations, strategy=strategy, cost_model=cost_model, storage=storage,
        study_name=study_name, identity=identity, seed=seed, worker=worker, evolution=evolution, progress=progress,
    )
    if reevaluate_on is not None:
        dev_evaluator, dev_identity = _evaluator_for(
            model, tokenizer, reevaluate_on, None, reevaluate_questions, sample_seed, "macs",
            max_seq_length, doc_stride, max_query_length, batch_size, latency,
        )
        study = optuna.load_study(study_name=study_name, storage=storage)
        front = reevaluate_front(front, dev_evaluator, dev_identity, study, progress)
    if out_dir is not None:
        front.save(out_dir)
    return front
