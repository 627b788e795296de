"""The held-out split: the stored search/confirmation parts are what `make_split` builds from the search
articles, disjoint, whole paragraphs, and every article in both parts."""
from __future__ import annotations

import os
from collections import Counter

import pytest

from dtb_ext.data_paths import DEV_FILE, DEV_SPLIT_FILE
from dtb_ext.search.split import (
    DEV_PARTS,
    PARTS,
    dev_split_part,
    make_dev_split,
    make_split,
    read_split,
    split_part,
)
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
    with pytest.raises(ValueError, match="is it the SQuAD file the split was made from .train-subset-v1.1.json"):
        split_part(held_out[:100], "search")


@pytest.fixture(scope="module")
def dev_a():
    from dtb_ext.qa import load_squad

    return load_squad(DEV_FILE)


def test_stored_dev_split_is_rebuilt_by_make_dev_split(dev_a):
    stored = read_split(DEV_SPLIT_FILE, DEV_PARTS)
    rebuilt = make_dev_split(dev_a, seed=stored["seed"], min_questions=stored["min_questions"])
    assert {part: stored["parts"][part]["ids"] for part in DEV_PARTS} == rebuilt
    assert make_dev_split(dev_a, seed=1) != rebuilt


def test_dev_parts_are_whole_articles_and_the_pick_decides_on_at_least_2500_questions(dev_a):
    parts = {part: dev_split_part(DEV_FILE, part) for part in DEV_PARTS}
    assert len(parts["confirmation"]) >= 2500 and len(parts["report"]) >= 2000
    assert len(parts["confirmation"]) + len(parts["report"]) == len(dev_a) == 4961
    titles = {part: {e.title for e in examples} for part, examples in parts.items()}
    assert not titles["confirmation"] & titles["report"]
    stored = read_split(DEV_SPLIT_FILE, DEV_PARTS)["parts"]
    assert all(sorted(stored[part]["articles"]) == sorted(titles[part]) for part in DEV_PARTS)


def test_a_dev_split_refuses_too_few_questions_and_the_wrong_parts(dev_a):
    with pytest.raises(ValueError, match="needs more than 2500 questions in at least two articles, got 100"):
        make_dev_split(dev_a[:100])
    with pytest.raises(ValueError, match="has parts \\['confirmation', 'report'\\], got 'search'"):
        split_part(dev_a, "search", DEV_SPLIT_FILE, DEV_PARTS)
