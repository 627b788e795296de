"""The official SQuAD 1.1 metric: both published rows of the shared README, normalisation, missing answers."""
import json
import os

import pytest

from dtb_ext.qa.data import default_squad_file
from dtb_ext.qa.metric import exact_match_score, f1_score, normalize_answer, squad_metrics

DEV_A = default_squad_file("dev-a-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found at ../shared/data/squad")


def _predictions(name):
    with open(default_squad_file(name), encoding="utf-8") as handle:
        return json.load(handle)


@needs_data
@pytest.mark.parametrize(
    "predictions, exact_match, f1, n_predicted",
    [
        ("dev-a-predictions-bert-ensemble.json", 86.595, 91.928, 4961),
        ("dev-a-predictions-logistic-regression.json", 40.939, 50.888, 4954),
    ],
)
def test_reproduces_the_published_scores(predictions, exact_match, f1, n_predicted):
    answers = _predictions(predictions)
    assert len(answers) == n_predicted
    result = squad_metrics(DEV_A, answers)
    assert result["n"] == 4961
    assert round(result["exact_match"], 3) == exact_match
    assert round(result["f1"], 3) == f1


def test_normalisation_follows_the_official_order():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    # articles are whole words only, and removed after punctuation
    assert normalize_answer("Theatre, the.") == "theatre"
    assert normalize_answer("  A\tb\nC ") == "b c"


def test_exact_match_and_f1_on_single_answers():
    assert exact_match_score("the Denver Broncos", "Denver Broncos") == 1.0
    assert f1_score("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    assert f1_score("", "Denver") == 0.0


def _dataset(*qas):
    paragraph = {"context": "Denver Broncos beat Carolina Panthers.", "qas": list(qas)}
    return {"data": [{"title": "T", "paragraphs": [paragraph]}]}


def _qa(qid, *answers):
    return {"id": qid, "question": "who?", "answers": [{"text": a, "answer_start": 0} for a in answers]}


def test_max_over_gold_answers_and_missing_predictions_score_zero():
    dataset = _dataset(_qa("q1", "Denver Broncos", "Broncos"), _qa("q2", "Carolina"))
    result = squad_metrics(dataset, {"q1": "Broncos", "unknown-id": "ignored"})
    assert result == {"exact_match": 50.0, "f1": 50.0, "n": 2}


def test_accepts_examples_and_rejects_bad_predictions():
    from dtb_ext.qa.data import examples_from_dataset

    examples = examples_from_dataset(_dataset(_qa("q1", "Broncos")))
    assert squad_metrics(examples, {"q1": "broncos."})["exact_match"] == 100.0
    with pytest.raises(ValueError, match="must be a string"):
        squad_metrics(examples, {"q1": 3})
    with pytest.raises(ValueError, match="question id -> answer text"):
        squad_metrics(examples, ["Broncos"])
    with pytest.raises(ValueError, match="no questions"):
        squad_metrics([], {})
