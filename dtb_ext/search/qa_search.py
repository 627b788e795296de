"""The length search of a span-QA model on SQuAD: `search_lengths` takes the questions of its protocol (split.py),
builds the QA-backed evaluator, runs the engine on the search questions, confirms the front on the confirmation
questions (where `pick` decides), re-scores it on the report questions, and writes the front files.

Protocols:
- "certified" (default): search on all 1,085 held-out training questions, confirm on dev-a's confirmation part
  (2,574 questions, 10 whole articles), report on dev-a's report part (2,387 questions, 14 articles);
- "held-out": search on the held-out split's search part (547), confirm on its confirmation part (538), and
  report on `reevaluate_on` when given.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from typing import Any, Sequence

import optuna
import torch

from dtb_ext.data_paths import DEFAULT_MODEL_DIR, DEV_FILE, DEV_SPLIT_FILE, training_file
from dtb_ext.models.patching import ensure_patched
from dtb_ext.precision import prepare_for_precision, resolve_precision
from dtb_ext.qa.data import load_squad
from dtb_ext.qa.features import prepare_eval_features
from dtb_ext.qa.model import load_qa_model
from dtb_ext.search.engine import run_search
from dtb_ext.search.evaluation import compact_scores
from dtb_ext.search.front import Front
from dtb_ext.search.paired import BootstrapSettings
from dtb_ext.search.qa_objective import (
    LatencySettings,
    QAEvaluator,
    model_fingerprint,
    questions_fingerprint,
    sample_questions,
)
from dtb_ext.search.space import SPACE_KINDS, Config, LengthSpace, RatioSpace, SearchSpace
from dtb_ext.search.split import (
    DEV_PARTS,
    SPLIT_FILE,
    dev_split_part,
    held_out_questions,
    read_split,
    read_split_part,
)
from dtb_ext.search.strategies import EvolutionSettings
from dtb_ext.search.study import open_storage

# Dynamic-TinyBERT searched lengths in [91, 384]. Features average ~180 real tokens, so a floor of 91 caps the
# achievable MACs speedup near 2x; 32 leaves room for the aggressive end of the front.
DEFAULT_MIN_LENGTH = 32
# The ratio space's floor. LengthDrop's smallest trained sub-model keeps 0.8^6 = 0.26 at the last layer; the
# search may go below it (cheap configs the model was not trained on, which the front shows for what they are).
DEFAULT_MIN_RATIO = 0.1
DEFAULT_SPACE = "ratios"
PROTOCOLS: tuple[str, ...] = ("certified", "held-out")
DEFAULT_PROTOCOL = "certified"


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_identity(path: str, examples: Sequence[Any], max_seq_length: int, doc_stride: int,
                   max_query_length: int) -> dict[str, Any]:
    return {
        "data_file": os.path.basename(path),
        "data_sha256": _file_sha256(path),
        "questions": len(examples),
        "questions_sha256": questions_fingerprint(examples),
        "max_seq_length": max_seq_length,
        "doc_stride": doc_stride,
        "max_query_length": max_query_length,
    }


def _file_examples(path: str) -> list[Any]:
    if not os.path.isfile(path):
        raise ValueError(f"SQuAD file not found: {path}")
    return load_squad(path)


def _evaluator_for(
    model, tokenizer, path: str, examples: Sequence[Any], space: str, cost_model: str, max_seq_length: int,
    doc_stride: int, max_query_length: int, batch_size: int, latency: LatencySettings,
) -> tuple[QAEvaluator, dict[str, Any]]:
    """The evaluator on `examples` (questions of the file `path`) and the identity of that data."""
    features = prepare_eval_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    evaluator = QAEvaluator(model, features, cost_model, batch_size=batch_size, latency=latency, space=space)
    return evaluator, _data_identity(path, examples, max_seq_length, doc_stride, max_query_length)


ScoreTable = dict[Config, tuple[float, float, "list[float] | None"]]


def _score_configs(configs: Sequence[Config], evaluator: QAEvaluator, cache_prefix: str,
                   description: dict[str, Any], study: optuna.Study | None, label: str,
                   progress: bool) -> ScoreTable:
    """(f1, exact_match, per-question F1) of each config under `evaluator`. With `study`, each result is cached
    in its user attributes, keyed by the data's description and the config, so an interrupted run resumes
    (caches written before per-question scores were kept hold two numbers; they give None there)."""
    from tqdm.auto import tqdm

    key_prefix = cache_prefix + hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    scores: ScoreTable = {}
    for config in tqdm(configs, desc=label, unit="config", disable=not progress):
        key = f"{key_prefix}/{','.join(map(str, config))}"
        cached = study.user_attrs.get(key) if study is not None else None
        if cached is None:
            evaluation = evaluator(config)
            cached = [evaluation.f1, evaluation.exact_match, compact_scores(evaluation.per_question_f1)]
            if study is not None:
                study.set_user_attr(key, cached)
        scores[config] = (float(cached[0]), float(cached[1]), cached[2] if len(cached) > 2 else None)
    return scores


def _front_and_full(front: Front) -> list[Config]:
    full = front.full_length.length_config
    return [full.values] + [p.length_config.values for p in front.front if p.length_config != full]


def reevaluate_front(front: Front, evaluator: QAEvaluator, description: dict[str, Any],
                     study: optuna.Study | None = None, progress: bool = True) -> Front:
    """Score every front config and the full-length config with `evaluator` (a report set such as dev-a:
    reported as dev_f1/dev_exact_match, never used for choosing). With `study`, results are cached in it."""
    scores = _score_configs(_front_and_full(front), evaluator, "reevaluation/", description, study,
                            "re-evaluate front", progress)
    return front.with_dev_scores({c: (f1, em) for c, (f1, em, _) in scores.items()}, description)


def confirm_front(front: Front, evaluator: QAEvaluator, description: dict[str, Any],
                  study: optuna.Study | None = None, progress: bool = True) -> Front:
    """Score the front's candidates (`Front.confirmation_candidates`: full length, the front, the front of the
    drop's upper bound) on the confirmation part (`evaluator`), with paired drop intervals against full length
    there; `pick` then decides on these scores. Cached in `study` like `reevaluate_front`."""
    scores = _score_configs(front.confirmation_candidates(), evaluator, "confirmation/", description, study,
                            "confirm front", progress)
    return front.with_confirmation(scores, description)


def make_space(kind: str, num_layers: int, max_seq_length: int, min_length: int | None,
               min_ratio: float | None) -> SearchSpace:
    """The search space of `kind` ("absolute" or "ratios"); a floor given for the other kind is a ValueError."""
    if kind not in SPACE_KINDS:
        raise ValueError(f"space must be one of {SPACE_KINDS}, got {kind!r}")
    if kind == "absolute":
        if min_ratio is not None:
            raise ValueError("min_ratio applies to the ratio space; the absolute space takes min_length")
        return LengthSpace(num_layers, max_seq_length, DEFAULT_MIN_LENGTH if min_length is None else min_length)
    if min_length is not None:
        raise ValueError("min_length applies to the absolute space; the ratio space takes min_ratio")
    return RatioSpace(num_layers, DEFAULT_MIN_RATIO if min_ratio is None else min_ratio)


def prepare_search_model(model: Any, loaded_here: bool, precision: str) -> tuple[Any, str, str]:
    """(model to evaluate, the fingerprint of its fp32 weights, the concrete precision). The model is patched
    (full-length outputs unchanged); a caller's model is converted on a copy, so it stays as it was given."""
    resolved = resolve_precision(precision, next(model.parameters()).device)
    ensure_patched(model)
    fingerprint = model_fingerprint(model)
    if resolved != "fp32" or any(p.dtype != torch.float32 for p in model.parameters()):
        model = prepare_for_precision(model if loaded_here else copy.deepcopy(model), resolved)
    return model, fingerprint, resolved


def search_lengths(
    model: str | Any | None = None,
    tokenizer: Any | None = None,
    *,
    data: str | None = None,
    questions: int | None = None,
    sample_seed: int = 0,
    space: str = DEFAULT_SPACE,
    min_length: int | None = None,
    min_ratio: float | None = None,
    precision: str = "auto",
    cost_model: str = "macs",
    strategy: str = "evolution",
    n_evaluations: int = 100,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str = "dtb-length-search",
    seed: int = 0,
    worker: int = 0,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    batch_size: int = 32,
    latency: LatencySettings | None = None,
    evolution: EvolutionSettings | None = None,
    bootstrap: BootstrapSettings | None = None,
    seed_configs: Sequence[Sequence[float]] = (),
    protocol: str = DEFAULT_PROTOCOL,
    confirm: bool = True,
    confirmation_questions: int | None = None,
    report: bool = True,
    reevaluate_on: str | None = None,
    reevaluate_questions: int | None = None,
    out_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Front:
    """Search the length configurations of a span-QA model for the F1/cost Pareto front.

    model: a saved model directory, a loaded *ForQuestionAnswering model (then pass `tokenizer`; it is patched
        in place, and converted for `precision` on a copy), or None for the bundled default model.
    data: the SQuAD training file holding the held-out split (None: the training subset beside a repository
        checkout; where it is absent, ValueError says what to pass). The search scores every config on the
        protocol's search questions (`questions` of them, fixed by `sample_seed`; None: all, the default), on
        the same questions for every config, keeping each question's F1.
    protocol: "certified" (search on every held-out question, confirm and report on the two parts of dev-a's
        split) or "held-out" (search and confirm on the two parts of the held-out split); see the module
        docstring.
    space: "ratios" (fractions of each input's length, on a 1/100 grid in [min_ratio, 1]; default, what
        LengthDrop trains) or "absolute" (tokens per layer in [min_length, max_seq_length]).
    precision: "auto", "fp32", "bf16" or "int8" (see dtb_ext.precision): every evaluation and latency runs in it.
    cost_model: "macs" (count_macs at every feature's real length, summed) or "latency" (LatencySettings).
    strategy, n_evaluations, storage, study_name, seed, worker, evolution: see `run_search`.
    bootstrap: confidence, resamples and seed of the paired drop intervals (the pick rule); default 90 %.
    seed_configs: configs evaluated first, in the space's own terms (see `run_search`).
    confirm: re-score the front and full length on the confirmation questions (`confirmation_questions` of
        them; None: all), which `pick` then decides on (the certified protocol always confirms).
    report: (certified protocol) also score the front on dev-a's report part (`reevaluate_questions` of it), as
        `dev_f1`, never used for choosing.
    reevaluate_on: (held-out protocol) a SQuAD file (e.g. dev-a) on which the final front is also scored, as a
        report (`dev_f1`); `reevaluate_questions` limits it to a fixed sample.
    out_dir: where front.json, front.csv and front.png are written (None: not written).
    device: where a model loaded from a directory runs (a loaded model stays where it is).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "certified" and not confirm:
        raise ValueError("the certified protocol confirms the front on dev-a, where pick decides; skipping the "
                         "confirmation needs protocol 'held-out' (--protocol held-out --no-confirmation)")
    if protocol == "certified" and reevaluate_on is not None:
        raise ValueError("the certified protocol reports on dev-a's report part (the articles no choice was made "
                         f"on), so it takes no report file; got reevaluate_on={reevaluate_on!r} (it applies to "
                         "protocol 'held-out')")
    if protocol == "held-out" and not report:
        raise ValueError("report=False (--no-report) applies to the certified protocol; the held-out protocol "
                         "reports only when given reevaluate_on")
    data = training_file(data, "the search split's articles (dtb_ext/data/search_articles.json)", "--data")
    if progress:
        print(f"data: {data}", file=sys.stderr)
    loaded_here = isinstance(model, str) or model is None
    if loaded_here:
        model, tokenizer = load_qa_model(model or DEFAULT_MODEL_DIR, device)
    elif tokenizer is None:
        raise ValueError("a loaded model needs its tokenizer: pass tokenizer=...")
    search_space = make_space(space, model.config.num_hidden_layers, max_seq_length, min_length, min_ratio)
    model, fingerprint, precision = prepare_search_model(model, loaded_here, precision)
    latency = latency or LatencySettings()

    def evaluator_on(path: str, examples: Sequence[Any], cost: str) -> tuple[QAEvaluator, dict[str, Any]]:
        return _evaluator_for(model, tokenizer, path, examples, space, cost, max_seq_length, doc_stride,
                              max_query_length, batch_size, latency)

    def dev_evaluator(part: str, sample: int | None) -> tuple[QAEvaluator, dict[str, Any]]:
        """The evaluator on (a fixed sample of) dev-a's `part` and the description of that data."""
        examples = sample_questions(dev_split_part(DEV_FILE, part), sample, sample_seed)
        part_evaluator, description = evaluator_on(DEV_FILE, examples, "macs")
        description.update(split=f"dev-a {part}", split_sha256=_file_sha256(DEV_SPLIT_FILE),
                           articles=read_split(DEV_SPLIT_FILE, DEV_PARTS)["parts"][part]["articles"])
        return part_evaluator, description

    certified = protocol == "certified"
    search_pool = held_out_questions(data) if certified else read_split_part(data, "search")
    search_examples = sample_questions(search_pool, questions, sample_seed)
    evaluator, data_identity = evaluator_on(data, search_examples, cost_model)
    split_sha256 = _file_sha256(SPLIT_FILE)
    identity = {
        "model_sha256": fingerprint,
        "split": "held-out" if certified else "search",
        "split_sha256": split_sha256,
        "precision": precision,
        **data_identity,
    }
    if cost_model == "latency":
        identity["latency"] = {
            "batch_size": latency.batch_size, "sample": latency.sample, "warmup": latency.warmup,
            "repeats": latency.repeats,
        }
    storage = open_storage(storage)
    front = run_search(
        evaluator, search_space, n_evaluations=n_evaluations, strategy=strategy, cost_model=cost_model,
        storage=storage, study_name=study_name, identity=identity, seed=seed, worker=worker, evolution=evolution,
        bootstrap=bootstrap, seed_configs=seed_configs, progress=progress,
    )
    study = optuna.load_study(study_name=study_name, storage=storage)
    if certified:
        front = confirm_front(front, *dev_evaluator("confirmation", confirmation_questions), study, progress)
        if report:
            front = reevaluate_front(front, *dev_evaluator("report", reevaluate_questions), study, progress)
    elif confirm:
        examples = sample_questions(read_split_part(data, "confirmation"), confirmation_questions, sample_seed)
        confirm_evaluator, description = evaluator_on(data, examples, "macs")
        description.update(split="confirmation", split_sha256=split_sha256,
                           articles=read_split()["articles"])
        front = confirm_front(front, confirm_evaluator, description, study, progress)
    if reevaluate_on is not None:
        examples = sample_questions(_file_examples(reevaluate_on), reevaluate_questions, sample_seed)
        dev_evaluator, dev_identity = evaluator_on(reevaluate_on, examples, "macs")
        front = reevaluate_front(front, dev_evaluator, dev_identity, study, progress)
    if out_dir is not None:
        front.save(out_dir)
    return front
