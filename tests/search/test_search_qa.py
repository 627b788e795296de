"""A short real search: a tiny random BertForQuestionAnswering (2 layers, hidden 32) with the real tokenizer,
on 20 search-split questions, through the real QA evaluator and the dynamic encoder."""
from __future__ import annotations

import json
import os

import optuna
import pytest

from dtb_ext.macs import count_macs
from dtb_ext.search.qa_objective import (
    LatencySettings,
    QAEvaluator,
    model_fingerprint,
    questions_fingerprint,
    sample_questions,
)
from dtb_ext.search.qa_search import search_lengths
from tiny_qa import tiny_qa_model
from repo_paths import SHARED_SQUAD_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)
SQUAD = SHARED_SQUAD_DIR
TRAIN = os.path.join(SQUAD, "train-subset-v1.1.json")
DEV = os.path.join(SQUAD, "dev-a-v1.1.json")
pytestmark = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found")


def tiny_model(tokenizer, seed: int = 0):
    return tiny_qa_model(tokenizer.vocab_size, seed)


def test_short_real_search_writes_front_and_resumes(tmp_path, tokenizer):
    model = tiny_model(tokenizer)
    storage = str(tmp_path / "study.db")
    arguments = dict(data=TRAIN, questions=20, n_evaluations=4, strategy="tpe", storage=storage, space="absolute",
                     min_length=16, out_dir=str(tmp_path), protocol="held-out", reevaluate_on=DEV,
                     reevaluate_questions=10, progress=False)
    front = search_lengths(model, tokenizer, **arguments)
    assert len(front.points) == 4
    assert front.full_length.length_config.values == (384, 384) and front.full_length.speedup == 1.0
    assert all(p.macs < front.full_length.macs for p in front.points if p is not front.full_length)
    assert all(p.dev_f1 is not None for p in front.front) and front.full_length.dev_f1 is not None
    assert front.identity["questions"] == 20 and front.identity["split"] == "search"
    saved = json.loads((tmp_path / "front.json").read_text())
    assert saved["reevaluated_on"]["data_file"] == "dev-a-v1.1.json"
    assert (tmp_path / "front.csv").exists() and (tmp_path / "front.png").exists()

    trials_before = len(optuna.load_study(study_name="dtb-length-search", storage="sqlite:///" + storage).trials)
    again = search_lengths(model, tokenizer, **arguments)
    trials_after = len(optuna.load_study(study_name="dtb-length-search", storage="sqlite:///" + storage).trials)
    assert trials_after == trials_before and again == front

    other_model = tiny_model(tokenizer, seed=1)
    with pytest.raises(ValueError, match="model_sha256"):
        search_lengths(other_model, tokenizer, **arguments)


def test_certified_search_searches_every_held_out_question_and_decides_and_reports_on_dev_a(tmp_path, tokenizer):
    from dtb_ext.data_paths import DEV_SPLIT_FILE
    from dtb_ext.search.pick import describe_choice, pick
    from dtb_ext.search.split import DEV_PARTS, held_out_questions, read_split

    front = search_lengths(tiny_model(tokenizer), tokenizer, data=TRAIN, questions=20, n_evaluations=3,
                           strategy="tpe", space="ratios", min_ratio=0.3, precision="fp32", confirmation_questions=12,
                           reevaluate_questions=10, storage=str(tmp_path / "study.db"), progress=False)
    held_out = held_out_questions(TRAIN)
    assert len(held_out) == 1085
    assert front.identity["split"] == "held-out" and front.identity["questions"] == 20
    assert front.identity["questions_sha256"] == questions_fingerprint(sample_questions(held_out, 20, seed=0))
    dev_split = read_split(DEV_SPLIT_FILE, DEV_PARTS)["parts"]
    assert front.confirmed_on["split"] == "dev-a confirmation" and front.confirmed_on["questions"] == 12
    assert front.confirmed_on["articles"] == dev_split["confirmation"]["articles"]
    assert front.reevaluated_on["split"] == "dev-a report" and front.reevaluated_on["questions"] == 10
    assert front.reevaluated_on["articles"] == dev_split["report"]["articles"]
    assert all(p.confirmation is not None and p.dev_f1 is not None for p in front.front)
    choice = describe_choice(front, pick(front, max_f1_drop_percent=100.0))
    assert (choice["scores"], choice["split"], choice["questions"]) == ("confirmation", "dev-a confirmation", 12)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"protocol": "dev"}, "protocol must be one of"),
        ({"confirm": False}, "certified protocol confirms the front on dev-a"),
        ({"reevaluate_on": DEV}, "takes no report file"),
        ({"protocol": "held-out", "report": False}, "applies to the certified protocol"),
    ],
)
def test_protocol_options_that_would_be_ignored_are_refused(tokenizer, arguments, message):
    with pytest.raises(ValueError, match=message):
        search_lengths(tiny_model(tokenizer), tokenizer, data=TRAIN, n_evaluations=1, progress=False, **arguments)


def test_qa_evaluator_costs_and_latency(tokenizer):
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.data import search_split_articles

    model = tiny_model(tokenizer)
    examples = sample_questions(load_squad(TRAIN, articles=search_split_articles()), 8, seed=0)
    features = prepare_eval_features(examples, tokenizer)
    evaluator = QAEvaluator(model, features, "latency", batch_size=4, latency=LatencySettings(sample=3, repeats=2))
    expected_full = sum(count_macs(model.config, None, int(n)).total for n in features.lengths)
    assert evaluator.macs(None) == expected_full == evaluator.macs((384, 384))
    evaluation = evaluator((64, 32))
    assert evaluation.n == 8 and 0.0 <= evaluation.f1 <= 100.0
    assert evaluation.latency_ms is not None and evaluation.latency_ms > 0.0
    assert evaluation.macs < expected_full
    with pytest.raises(ValueError, match="latency sample"):
        QAEvaluator(model, features, "latency", latency=LatencySettings(sample=10_000))


def test_question_sample_is_fixed_and_checked(tokenizer):
    examples = list(range(100))
    assert sample_questions(examples, 10, seed=3) == sample_questions(examples, 10, seed=3)
    assert sample_questions(examples, 10, seed=3) != sample_questions(examples, 10, seed=4)
    assert sample_questions(examples, None, seed=0) == examples
    with pytest.raises(ValueError, match="between 1 and 100"):
        sample_questions(examples, 101, seed=0)
    assert model_fingerprint(tiny_model(tokenizer)) == model_fingerprint(tiny_model(tokenizer))
