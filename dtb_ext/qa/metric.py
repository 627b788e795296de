"""The official SQuAD 1.1 exact-match and F1 metric."""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Mapping, Sequence

from dtb_ext.qa.data import SquadExample, examples_from_dataset, read_squad_json

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, fold white space (the official order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _gold_examples(dataset: str | Mapping[str, Any] | Sequence[SquadExample]) -> list[SquadExample]:
    if isinstance(dataset, str):
        return examples_from_dataset(read_squad_json(dataset), source=dataset)
    if isinstance(dataset, Mapping):
        if not isinstance(dataset.get("data"), list):
            raise ValueError("expected a SQuAD-1.1 dataset dict with a 'data' list")
        return examples_from_dataset(dict(dataset))
    return list(dataset)


def squad_metrics(
    dataset: str | Mapping[str, Any] | Sequence[SquadExample], predictions: Mapping[str, str]
) -> dict[str, float | int]:
    """Official SQuAD 1.1 scores in percent: {"exact_match", "f1", "n"}.

    dataset: a SQuAD JSON path, its parsed dict, or a list of SquadExample (the gold questions; n is their
    count). predictions: qid -> answer text. A question without a prediction scores 0; predictions for unknown
    ids are ignored, as in the official script. Each score is the maximum over the gold answers."""
    if not isinstance(predictions, Mapping):
        raise ValueError(f"predictions must map question id -> answer text, got {type(predictions).__name__}")
    examples = _gold_examples(dataset)
    exact = f1 = 0.0
    for example in examples:
        if example.qid not in predictions:
            continue
        prediction = predictions[example.qid]
        if not isinstance(prediction, str):
            raise ValueError(f"prediction for {example.qid} must be a string, got {type(prediction).__name__}")
        exact += max((exact_match_score(prediction, truth) for truth in example.answers), default=0.0)
        f1 += max((f1_score(prediction, truth) for truth in example.answers), default=0.0)
    n = len(examples)
    if n == 0:
        raise ValueError("the gold dataset has no questions to score")
    return {"exact_match": 100.0 * exact / n, "f1": 100.0 * f1 / n, "n": n}
