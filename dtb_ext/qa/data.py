"""Reading SQuAD-1.1-format JSON files into flat question records, and the held-out search split.

A SQuAD file is `{"data": [{"title": ..., "paragraphs": [{"context": ..., "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}`. Structural errors raise ValueError naming the offending place;
questions that cannot be used (empty context, empty question) are skipped, counted and reported.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from dtb_ext.data_paths import SEARCH_ARTICLES_FILE
# The shared SQuAD folder beside a checkout, under the name the tests and benchmarks import it by.
from dtb_ext.data_paths import shared_squad_file as default_squad_file  # noqa: F401
from dtb_ext.jsonfile import read_json_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SquadExample:
    """One question with its paragraph. `answers[i]` starts at character `answer_starts[i]` of `context`."""

    qid: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


@dataclass
class SkipCounts:
    """Why questions were left out while reading or featurising; reported, never silent."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self, what: str) -> None:
        """Log one warning line listing the skip reasons, when anything was skipped."""
        if self.total:
            details = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))
            logger.warning("%s: skipped %d question(s) (%s)", what, self.total, details)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def read_squad_json(path: str) -> dict[str, Any]:
    """Load a SQuAD JSON file; ValueError when it is missing, not JSON, or lacks a `data` list."""
    dataset = read_json_file(path, "SQuAD file", "a SQuAD-1.1 JSON file")
    _require(
        isinstance(dataset, dict) and isinstance(dataset.get("data"), list),
        f"{path}: expected a JSON object with a 'data' list (SQuAD-1.1 format), got {type(dataset).__name__}"
        + (f" with keys {sorted(dataset)}" if isinstance(dataset, dict) else ""),
    )
    return dataset


def examples_from_dataset(
    dataset: dict[str, Any],
    articles: Iterable[str] | None = None,
    exclude_articles: Iterable[str] | None = None,
    source: str = "<dataset>",
    skips: SkipCounts | None = None,
) -> list[SquadExample]:
    """Flatten a parsed SQuAD dataset into examples, optionally keeping or dropping whole articles by title."""
    keep = set(articles) if articles is not None else None
    drop = set(exclude_articles) if exclude_articles is not None else set()
    skips = skips if skips is not None else SkipCounts()
    examples: list[SquadExample] = []
    for a, article in enumerate(dataset["data"]):
        where = f"{source}: data[{a}]"
        _require(isinstance(article, dict) and isinstance(article.get("paragraphs"), list),
                 f"{where}: expected an article object with a 'paragraphs' list")
        title = str(article.get("title", ""))
        if (keep is not None and title not in keep) or title in drop:
            continue
        for p, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p}]"
            _require(isinstance(paragraph, dict) and isinstance(paragraph.get("context"), str)
                     and isinstance(paragraph.get("qas"), list),
                     f"{pwhere}: expected an object with a string 'context' and a 'qas' list")
            context = paragraph["context"]
            for q, qa in enumerate(paragraph["qas"]):
                qwhere = f"{pwhere}.qas[{q}]"
                _require(isinstance(qa, dict) and "id" in qa and isinstance(qa.get("question"), str)
                         and isinstance(qa.get("answers"), list),
                         f"{qwhere}: expected an object with 'id', a string 'question' and an 'answers' list")
                if not context.strip():
                    skips.add("empty context")
                    continue
                if not qa["question"].strip():
                    skips.add("empty question")
                    continue
                texts, starts = [], []
                for n, answer in enumerate(qa["answers"]):
                    _require(isinstance(answer, dict) and isinstance(answer.get("text"), str)
                             and isinstance(answer.get("answer_start"), int),
                             f"{qwhere}.answers[{n}]: expected {{'text': str, 'answer_start': int}}, got {answer!r}")
                    texts.append(answer["text"])
                    starts.append(answer["answer_start"])
                examples.append(
                    SquadExample(str(qa["id"]), title, context, qa["question"], tuple(texts), tuple(starts))
                )
    return examples


def load_squad(
    path: str,
    articles: Iterable[str] | None = None,
    exclude_articles: Iterable[str] | None = None,
) -> list[SquadExample]:
    """Read a SQuAD-1.1-format file into a list of SquadExample, in file order.

    articles: keep only these article titles; exclude_articles: drop these titles (both None: keep all).
    Unusable questions (empty context or question) are skipped and the counts are logged.
    """
    if articles is not None and exclude_articles is not None:
        raise ValueError("load_squad: give either articles or exclude_articles, not both")
    skips = SkipCounts()
    examples = examples_from_dataset(read_squad_json(path), articles, exclude_articles, source=path, skips=skips)
    skips.report(f"load_squad({os.path.basename(path)})")
    return examples


def search_split_articles() -> list[str]:
    """Titles of the train-subset articles held out for the length-configuration search."""
    with open(SEARCH_ARTICLES_FILE, encoding="utf-8") as handle:
        return list(json.load(handle)["articles"])


def choose_search_articles(
    examples: list[SquadExample], seed: int = 0, min_questions: int = 1000, max_questions: int = 1300
) -> list[str]:
    """Pick whole articles for the search split: shuffle the titles with `seed`, then take them in that order,
    passing over any article that would push the total above `max_questions`, until `min_questions` is reached.
    Returns the titles in file order. This is how dtb_ext/data/search_articles.json was made."""
    import random

    per_title = Counter(example.title for example in examples)
    titles = list(per_title)  # file order, since Counter keeps insertion order
    shuffled = titles[:]
    random.Random(seed).shuffle(shuffled)
    chosen, total = set(), 0
    for title in shuffled:
        if total >= min_questions:
            break
        if total + per_title[title] <= max_questions:
            chosen.add(title)
            total += per_title[title]
    if total < min_questions:
        raise ValueError(
            f"could not reach {min_questions} questions with whole articles under {max_questions}; got {total}"
        )
    return [title for title in titles if title in chosen]
