"""Reading SQuAD files: structural errors raise ValueError, unusable questions are skipped and counted,
article filters, and the held-out search split."""
import json
import logging
import os

import pytest

from dtb_ext.qa.data import (
    SEARCH_ARTICLES_FILE,
    choose_search_articles,
    default_squad_file,
    examples_from_dataset,
    load_squad,
    search_split_articles,
)

TRAIN = default_squad_file("train-subset-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")


def _write(tmp_path, content, name="data.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def _article(title, context, *qas):
    return {"title": title, "paragraphs": [{"context": context, "qas": list(qas)}]}


def _qa(qid, question="What?", text="x", start=0):
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


def test_reads_examples_in_file_order(tmp_path):
    path = _write(tmp_path, {"data": [_article("A", "alpha beta", _qa("1", text="beta", start=6)),
                                      _article("B", "gamma", _qa("2", text="gamma"))]})
    examples = load_squad(path)
    assert [(e.qid, e.title, e.answers, e.answer_starts) for e in examples] == [
        ("1", "A", ("beta",), (6,)), ("2", "B", ("gamma",), (0,))
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object with a 'data' list"),
        ({"version": "1.1"}, "expected a JSON object with a 'data' list"),
        ({"data": [{"title": "A"}]}, r"data\[0\]: expected an article object with a 'paragraphs' list"),
        ({"data": [{"title": "A", "paragraphs": [{"qas": []}]}]},
         r"paragraphs\[0\]: expected an object with a string 'context'"),
        ({"data": [_article("A", "c", {"id": "1", "answers": []})]},
         r"qas\[0\]: expected an object with 'id', a string 'question'"),
        ({"data": [_article("A", "c", {"id": "1", "question": "q", "answers": [{"text": "c"}]})]},
         r"answers\[0\]: expected"),
    ],
)
def test_malformed_files_raise_value_error(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_squad(_write(tmp_path, content))


def test_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="SQuAD file not found"):
        load_squad(str(tmp_path / "nope.json"))


def test_empty_contexts_and_questions_are_skipped_and_counted(tmp_path, caplog):
    path = _write(tmp_path, {"data": [_article("A", "   ", _qa("1"), _qa("2")),
                                      _article("B", "fine", _qa("3", question=" "), _qa("4", text="fine"))]})
    with caplog.at_level(logging.WARNING):
        examples = load_squad(path)
    assert [e.qid for e in examples] == ["4"]
    assert "skipped 3 question(s)" in caplog.text
    assert "empty context: 2" in caplog.text and "empty question: 1" in caplog.text


def test_article_filters(tmp_path):
    path = _write(tmp_path, {"data": [_article(t, "c", _qa(t)) for t in "ABC"]})
    assert [e.qid for e in load_squad(path, articles=["A", "C"])] == ["A", "C"]
    assert [e.qid for e in load_squad(path, exclude_articles=["A"])] == ["B", "C"]
    with pytest.raises(ValueError, match="either articles or exclude_articles"):
        load_squad(path, articles=["A"], exclude_articles=["B"])


@needs_data
def test_search_split_is_reproducible_whole_articles_of_the_right_size():
    with open(SEARCH_ARTICLES_FILE, encoding="utf-8") as handle:
        stored = json.load(handle)
    assert stored["how_chosen"]
    examples = load_squad(TRAIN)
    titles = search_split_articles()
    assert titles == choose_search_articles(examples, seed=stored["seed"])
    held_out = load_squad(TRAIN, articles=titles)
    assert 1000 <= len(held_out) <= 1300 and len(held_out) == stored["questions"]
    rest = load_squad(TRAIN, exclude_articles=titles)
    assert len(rest) + len(held_out) == len(examples)
    assert not {e.title for e in rest} & set(titles)


def test_choose_search_articles_refuses_an_unreachable_size():
    examples = examples_from_dataset({"data": [_article("A", "c", _qa("1"))]})
    with pytest.raises(ValueError, match="could not reach"):
        choose_search_articles(examples, min_questions=5, max_questions=10)
