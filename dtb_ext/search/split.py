"""The questions of the search, in two splits.

The held-out split (`--protocol held-out`): a search part (the search scores configs on it) and a
confirmation part (the front's candidates are re-scored on it before `pick` trusts them).

The held-out questions are the 3 training articles of dtb_ext/data/search_articles.json (1,085 questions), which
the default model never trains on. Split by article they would be unbalanced (New_York_City alone holds 817), so
each article's paragraphs are shuffled with a fixed seed and dealt, whole, to whichever part holds fewer of that
article's questions so far: both parts hold about half of every article, and questions on one paragraph (which
share their context and are correlated) stay in one part. The ids are stored in dtb_ext/data/search_split.json;
`make_split` rebuilds them and a test checks the stored file against it.

The dev split (`--protocol certified`, the default): 538 confirmation questions bound a drop no tighter than
about +-1.3 %, too loose to certify a config within 1 %. So a certified search scores configs on all 1,085
held-out questions and confirms on dev-a (the shipped half of the SQuAD dev set), split by whole articles: a
confirmation part of at least 2,500 questions, where `pick` decides, and a report part (the rest), where the
front's numbers are reported and nothing is chosen. Whole articles, because questions on one text are
correlated and the report must be on text no choice saw. `make_dev_split` rebuilds dtb_ext/data/dev_split.json.
"""
from __future__ import annotations

import os
import random
from typing import Any, Sequence

from dtb_ext.data_paths import DEV_SPLIT_FILE, SEARCH_SPLIT_FILE
from dtb_ext.jsonfile import read_json_file
from dtb_ext.qa.data import SquadExample, load_squad, search_split_articles

PARTS: tuple[str, ...] = ("search", "confirmation")
SPLIT_FILE = SEARCH_SPLIT_FILE
SPLIT_SEED = 0
HOW_CHOSEN = (
    "dtb_ext.search.split.make_split(load_squad('train-subset-v1.1.json', articles=search_split_articles()), "
    "seed=0): within each article, paragraphs shuffled with random.Random(0) (paragraphs in file order first) "
    "and each dealt whole to the part holding fewer of that article's questions so far (ties: search); ids in "
    "file order."
)
DEV_PARTS: tuple[str, ...] = ("confirmation", "report")
DEV_SPLIT_SEED = 0
DEV_CONFIRMATION_QUESTIONS = 2500  # the least the pick may decide on (issue 29)
DEV_HOW_CHOSEN = (
    "dtb_ext.search.split.make_dev_split(load_squad('dev-a-v1.1.json'), seed=0, min_questions=2500): article "
    "titles (file order) shuffled with random.Random(0) and dealt whole to the confirmation part until it holds "
    "at least 2,500 questions; the other articles form the report part; ids in file order."
)


def make_split(examples: Sequence[Any], seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """{"search": [question ids], "confirmation": [question ids]} of `examples` (SquadExample), each in file order.

    Paragraphs are identified by (title, context); see the module docstring for the rule."""
    paragraphs: dict[str, dict[str, list[int]]] = {}
    for index, example in enumerate(examples):
        paragraphs.setdefault(example.title, {}).setdefault(example.context, []).append(index)
    rng = random.Random(seed)
    part_of: dict[int, str] = {}
    for title in paragraphs:
        groups = list(paragraphs[title].values())
        rng.shuffle(groups)
        held = {part: 0 for part in PARTS}
        for group in groups:
            part = min(PARTS, key=lambda p: held[p])  # ties go to the first part, search
            held[part] += len(group)
            part_of.update((index, part) for index in group)
    return {part: [e.qid for i, e in enumerate(examples) if part_of[i] == part] for part in PARTS}


def make_dev_split(examples: Sequence[Any], seed: int = DEV_SPLIT_SEED,
                   min_questions: int = DEV_CONFIRMATION_QUESTIONS) -> dict[str, list[str]]:
    """{"confirmation": [question ids], "report": [question ids]} of `examples` (SquadExample), each in file
    order, by whole articles (see the module docstring). ValueError when the examples hold fewer than
    `min_questions` questions, or when the confirmation part would take every article."""
    titles = list(dict.fromkeys(example.title for example in examples))
    per_title = {title: 0 for title in titles}
    for example in examples:
        per_title[example.title] += 1
    random.Random(seed).shuffle(titles)
    confirmation: set[str] = set()
    held = 0
    for title in titles:
        if held >= min_questions:
            break
        confirmation.add(title)
        held += per_title[title]
    if held < min_questions or len(confirmation) == len(titles):
        raise ValueError(f"a dev split needs more than {min_questions} questions in at least two articles, got "
                         f"{len(examples)} questions in {len(titles)} articles")
    return {
        "confirmation": [e.qid for e in examples if e.title in confirmation],
        "report": [e.qid for e in examples if e.title not in confirmation],
    }


def read_split(path: str = SPLIT_FILE, parts: Sequence[str] = PARTS) -> dict[str, Any]:
    """The stored split: {"how_chosen", "source", "seed", "articles", "parts": {part: {"questions", "ids"}}}
    (`parts`: PARTS for the held-out split, DEV_PARTS for the dev split)."""
    split = read_json_file(path, "split file", "a split written with dtb_ext.search.split")
    if not isinstance(split, dict) or set(split.get("parts", {})) != set(parts):
        raise ValueError(f"{path}: expected a JSON object whose 'parts' are {list(parts)}")
    return split


def split_part(examples: Sequence[Any], part: str, path: str = SPLIT_FILE, parts: Sequence[str] = PARTS) -> list[Any]:
    """The examples of `part` (of `parts`: "search"/"confirmation", or the dev split's "confirmation"/"report"
    with DEV_SPLIT_FILE), in their order in `examples`.

    Raises ValueError when `part` is unknown or some of the part's questions are not in `examples` (a
    different data file)."""
    if part not in parts:
        raise ValueError(f"the split {os.path.basename(path)} has parts {list(parts)}, got {part!r}")
    split = read_split(path, parts)
    wanted = set(split["parts"][part]["ids"])
    chosen = [e for e in examples if e.qid in wanted]
    if len(chosen) != len(wanted):
        raise ValueError(
            f"the {part} part lists {len(wanted)} questions, {len(chosen)} of them are in the given data: "
            f"is it the SQuAD file the split was made from ({split.get('source')})?"
        )
    return chosen


def _read_squad(path: str, articles: Sequence[str] | None = None) -> list[SquadExample]:
    """`load_squad(path, articles=...)`, with a ValueError naming the path when the file is missing."""
    if not os.path.isfile(path):
        raise ValueError(f"SQuAD file not found: {path}")
    return load_squad(path, articles=articles)


def dev_split_part(path: str, part: str) -> list[SquadExample]:
    """The questions of the dev split's `part` ("confirmation" or "report"), read from dev-a at `path`."""
    return split_part(_read_squad(path), part, DEV_SPLIT_FILE, DEV_PARTS)


def held_out_questions(path: str) -> list[SquadExample]:
    """Every question of the held-out split (both parts, 1,085), in file order, read from the SQuAD training file
    `path`."""
    examples = _read_squad(path, search_split_articles())
    wanted = {example.qid for part in PARTS for example in split_part(examples, part)}
    return [example for example in examples if example.qid in wanted]


def read_split_part(path: str, part: str) -> list[SquadExample]:
    """The questions of `part` ("search" or "confirmation"), read from the SQuAD training file `path` that holds
    the held-out articles."""
    return split_part(_read_squad(path, search_split_articles()), part)
