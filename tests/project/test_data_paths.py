"""Default data: dev-a ships inside the package and is what `dtb eval` / `dtb demo` use (and say so); the training
articles are not shipped, and where they are absent the commands say what to pass."""
from __future__ import annotations

import hashlib
import os

import pytest

from dtb_ext import data_paths
from dtb_ext.cli import main
from dtb_ext.search.front import Front
from tiny_qa import save_tiny_qa_model

# The official dev-a file (../shared/data/squad/README.md and dtb_ext/data/squad/README.md).
DEV_A_SHA256 = "bf8ebb60a161d0594f455be869ff3a476d2fe07da92ab1ecb0dea41f50ea64f3"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random QA model with a two-point front beside it (enough for `dtb demo` to pick from)."""
    directory = save_tiny_qa_model(str(tmp_path_factory.mktemp("tiny-qa")))
    identity = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}
    results = [(config, dict(f1=f1, exact_match=f1, macs=float(sum(config)), latency_ms=None))
               for config, f1 in [((384, 384), 50.0), ((200, 100), 49.9)]]
    Front.build("macs", results, (384, 384), identity).save(directory)
    return directory


@pytest.fixture
def no_training_file(tmp_path, monkeypatch) -> None:
    """As in an installed package: no shared data folder beside it."""
    monkeypatch.setattr(data_paths, "SHARED_SQUAD_DIR", str(tmp_path / "no-shared-data"))


def test_dev_file_is_shipped_inside_the_package_unchanged():
    assert os.path.dirname(os.path.dirname(os.path.dirname(data_paths.DEV_FILE))) == data_paths.PACKAGE_DIR
    with open(data_paths.DEV_FILE, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == DEV_A_SHA256
    notes = os.path.join(os.path.dirname(data_paths.DEV_FILE), "README.md")
    with open(notes, encoding="utf-8") as handle:
        text = handle.read()
    for needed in ("Rajpurkar", "CC BY-SA 4.0", "24 of the 48 articles", DEV_A_SHA256):
        assert needed in text
    assert os.path.isfile(os.path.join(os.path.dirname(data_paths.DEV_FILE), "LICENSE-CC-BY-SA-4.0.txt"))


def test_eval_defaults_to_the_shipped_dev_file_and_says_so(tiny_model_dir, capsys):
    assert main(["eval", "--model", tiny_model_dir, "--limit", "2", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"dtb eval: data {data_paths.DEV_FILE}" in captured.err
    assert '"n": 2' in captured.out


def test_demo_defaults_to_the_shipped_dev_file_and_says_so(tiny_model_dir, tmp_path, capsys):
    arguments = ["demo", "--model", tiny_model_dir, "--questions", "2", "--latency-features", "1",
                 "--out", str(tmp_path), "--no-progress"]
    assert main(arguments) == 0
    assert f"features) of {data_paths.DEV_FILE}, sample seed" in capsys.readouterr().out


def test_a_given_training_file_is_used_as_given(no_training_file):
    assert data_paths.training_file("mine.json", "the training questions", "--train-data") == "mine.json"


def test_a_missing_training_file_says_what_to_pass(no_training_file):
    with pytest.raises(ValueError, match=r"the training questions come from the SQuAD 1.1 training set.*"
                                         r"pass --train-data TRAIN.json, the official SQuAD 1.1 training file"):
        data_paths.training_file(None, "the training questions", "--train-data")


def test_search_without_the_training_file_says_what_to_pass(tiny_model_dir, tmp_path, no_training_file, capsys):
    assert main(["search", "--model", tiny_model_dir, "--out", str(tmp_path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "the search split's articles (dtb_ext/data/search_articles.json) come from the SQuAD 1.1 training" in error
    assert "pass --data TRAIN.json" in error and "train-v1.1.json" in error
