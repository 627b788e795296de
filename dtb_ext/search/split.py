"""The held-out questions of the search, split into a search part (the search scores configs on it) and a
confirmation part (the front's candidates are re-scored on it before `pick` trusts them).

The held-out questions are the 3 training articles of dtb_ext/data/search_articles.json (1,085 questions), which
the default model never trains on. Split by article they would be unbalanced (New_York_City alone holds 817), so
each article's paragraphs are shuffled with a fixed seed and dealt, whole, to whichever part holds fewer of that
article's questions so far: both parts hold about half of every article, and questions on one paragraph (which
share their context and are correlated) stay in one part. The ids are stored in dtb_ext/data/search_split.json;
`make_split` rebuilds them and a test checks the stored file against it.
"""
from __future__ import annotations

import os
import random
from typing import Any, Sequence

from dtb_ext.data_paths import SEARCH_SPLIT_FILE
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


def read_split(path: str = SPLIT_FILE) -> dict[str, Any]:
    """The stored split: {"how_chosen", "source", "seed", "articles", "parts": {part: {"questions", "ids"}}}."""
    split = read_json_file(path, "search split file", "the held-out split written with dtb_ext.search.split")
    if not isinstance(split, dict) or set(split.get("parts", {})) != set(PARTS):
        raise ValueError(f"{path}: expected a JSON object whose 'parts' are {list(PARTS)}")
    return split


def split_part(examples: Sequence[Any], part: str, path: str = SPLIT_FILE) -> list[Any]:
    """The examples of `part` ("search" or "confirmation"), in their order in `examples`.

    Raises ValueError when `part` is unknown or some of the part's questions are not in `examples` (a
    different data file)."""
    if part not in PARTS:
        raise ValueError(f"the held-out split has parts {list(PARTS)}, got {part!r}")
    ids = read_split(path)["parts"][part]["ids"]
    wanted = set(ids)
    chosen = [e for e in examples if e.qid in wanted]
    if len(chosen) != len(wanted):
        raise ValueError(
            f"the {part} part lists {len(wanted)} questions, {len(chosen)} of them are in the given data: "
            "is it the SQuAD training subset the split was made from?"
        )
    return chosen


def read_split_part(path: str, part: str) -> list[SquadExample]:
    """The questions of `part` ("search" or "confirmation"), read from the SQuAD training file `path` that holds
    the held-out articles."""
    if not os.path.isfile(path):
        raise ValueError(f"SQuAD file not found: {path}")
    return split_part(load_squad(path, articles=search_split_articles()), part)
