"""The held-out split: the stored search/confirmation parts are what `make_split` builds from the search
articles, disjoint, whole paragraphs, and every article in both parts."""
from __future__ import annotations

import os
from collections import Counter

import pytest

from dtb_ext.search.split import PARTS, make_split, read_split, split_part
from repo_paths import SHARED_SQUAD_DIR

SQUAD = SHARED_SQUAD_DIR
TRAIN = os.path.join(SQUAD, "train-subset-v1.1.json")


@pytest.fixture(scope="module")
def held_out():
    from dtb_ext.qa import load_squad
    from dtb_ext.qa.data import search_split_articles

    if not os.path.isfile(TRAIN):
        pytest.skip("shared SQuAD data not found")
    return load_squad(TRAIN, articles=search_split_articles())


def test_stored_split_is_rebuilt_by_make_split(held_out):
    stored = read_split()
    rebuilt = make_split(held_out, seed=stored["seed"])
    assert {part: stored["parts"][part]["ids"] for part in PARTS} == rebuilt
    assert all(stored["parts"][part]["questions"] == len(rebuilt[part]) for part in PARTS)
    assert make_split(held_out, seed=1) != rebuilt


def test_parts_are_disjoint_balanced_and_keep_paragraphs_whole(held_out):
    parts = {part: split_part(held_out, part) for part in PARTS}
    ids = {part: {e.qid for e in examples} for part, examples in parts.items()}
    assert not ids["search"] & ids["confirmation"]
    assert len(ids["search"]) + len(ids["confirmation"]) == len(held_out) == 1085
    titles = {part: Counter(e.title for e in examples) for part, examples in parts.items()}
    for title, total in Counter(e.title for e in held_out).items():
        # every article is split about in half (within one paragraph's questions)
        assert abs(titles["search"][title] - titles["confirmation"][title]) <= 15, title
        assert titles["search"][title] + titles["confirmation"][title] == total
    contexts = {part: {e.context for e in examples} for part, examples in parts.items()}
    assert not contexts["search"] & contexts["confirmation"]


def test_split_part_refuses_other_data_and_unknown_parts(held_out):
    with pytest.raises(ValueError, match="parts"):
        split_part(held_out, "dev")
    with pytest.raises(ValueError, match="is it the SQuAD training subset"):
        split_part(held_out[:100], "search")
