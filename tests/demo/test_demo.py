"""`dtb demo`: the whole code path on a tiny random QA model, a hand-made front and a few dev-a questions (the
timings it prints are not checked), the choice of configs, and the message when the default model is missing."""
from __future__ import annotations

import json
import os

import pytest

from dtb_ext.demo import run
from dtb_ext.demo.configs import PADDINGS, choose_configs
from dtb_ext.cli import main
from dtb_ext.search.front import Front
from tiny_qa import save_tiny_qa_model
from repo_paths import SHARED_SQUAD_DIR

SQUAD = SHARED_SQUAD_DIR
DEV = os.path.join(SQUAD, "dev-a-v1.1.json")
needs_dev = pytest.mark.skipif(not os.path.isfile(DEV), reason="shared SQuAD data not found")

IDENTITY = {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64}


def _front(records: list[tuple[tuple[int, ...], float]], full: tuple[int, ...] = (384, 384)) -> Front:
    """A MACs front whose cost is the config's summed lengths (enough for picking)."""
    results = [(config, dict(f1=f1, exact_match=f1 - 10, macs=float(sum(config)), latency_ms=None))
               for config, f1 in records]
    return Front.build("macs", results, full, IDENTITY)


SMALL_FRONT = [((384, 384), 80.0), ((300, 200), 79.5), ((200, 100), 78.0), ((128, 64), 73.0), ((64, 32), 60.0)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer BERT QA model with random weights, the MiniLM tokenizer, and a front.json beside it."""
    directory = save_tiny_qa_model(str(tmp_path_factory.mktemp("tiny-qa")))
    _front(SMALL_FRONT).save(directory)
    return directory


def test_configs_are_the_pick_choices_full_length_first():
    configs = choose_configs(_front(SMALL_FRONT))
    assert [c.length_config.values for c in configs] == [(384, 384), (300, 200), (200, 100), (128, 64)]
    assert [c.label for c in configs] == ["full length", "F1 within 1%", "F1 within 3%", "fastest F1 >= 72.0"]
    assert configs[3].front_f1 == 73.0 and configs[3].front_speedup == pytest.approx(768 / 192)


def test_a_config_chosen_by_several_budgets_is_listed_once_with_every_label():
    configs = choose_configs(_front([((384, 384), 80.0), ((128, 64), 79.9), ((64, 32), 50.0)]), min_f1=75)
    assert [c.length_config.values for c in configs] == [(384, 384), (128, 64)]
    assert configs[1].label == "F1 within 1% = F1 within 3% = fastest F1 >= 75.0"


def test_min_f1_above_full_length_is_refused():
    with pytest.raises(ValueError, match=r"must not exceed the front's full-length F1 \(80.00"):
        choose_configs(_front(SMALL_FRONT), min_f1=81)


def test_missing_default_model_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "DEFAULT_MODEL_DIR", str(tmp_path / "default_model"))
    assert main(["demo", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "the bundled default model is not there yet" in error
    assert "dtb train --output RUN" in error and "dtb_ext/default_model/README.md" in error
    assert "search --model dtb_ext/default_model" in error
    assert "dtb demo --model DIR" in error


def test_missing_default_front_says_how_to_search_it(tmp_path, monkeypatch, capsys):
    default = tmp_path / "default_model"
    default.mkdir()
    (default / "config.json").write_text("{}")
    monkeypatch.setattr(run, "DEFAULT_MODEL_DIR", str(default))
    assert main(["demo", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "the bundled default model has no shipped front yet" in error and "front.json" in error
    assert "search --model dtb_ext/default_model" in error and " train " not in error


def test_missing_front_of_a_given_model_is_named(tiny_model_dir, tmp_path, capsys):
    missing = str(tmp_path / "none.json")
    assert main(["demo", "--model", tiny_model_dir, "--front", missing, "--no-progress"]) == 2
    assert f"missing: {missing}" in capsys.readouterr().err


@needs_dev
def test_demo_runs_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = str(tmp_path / "demo")
    arguments = ["demo", "--model", tiny_model_dir, "--data", DEV, "--questions", "6", "--out", out, "--no-progress"]
    assert main(arguments) == 0
    captured = capsys.readouterr()
    printed = captured.out
    for label in ("full length", "F1 within 1%", "F1 within 3%", "fastest F1 >= 72.0"):
        assert label in printed
    assert "6 questions" in printed and f"plot: {os.path.join(out, 'demo.png')}" in printed
    assert os.path.getsize(os.path.join(out, "demo.png")) > 0
    with open(os.path.join(out, "demo.json")) as handle:
        record = json.load(handle)
    # a sample smaller than the default 64 timed features is timed whole, and the run says so in one line
    timed = record["settings"]["latency_features"]
    assert record["settings"]["questions"] == 6 and 6 <= timed < run.DEFAULT_LATENCY_FEATURES
    assert f"timing all {timed} features of the sample (fewer than the default 64)" in captured.err
    # PyTorch alone unless --runtime asks for the exported graph's rows
    assert record["settings"]["runtimes"] == ["torch"] and record["settings"]["reference"] == "torch fp32"
    rows = record["rows"]
    assert [row["length_config"] for row in rows] == [[384, 384], [300, 200], [200, 100], [128, 64]]
    full = rows[0]
    assert full["macs_ratio"] == {"dynamic": 1.0, "max_length": 1.0}
    assert full["speedup"] == {"dynamic": 1.0, "max_length": 1.0}
    for row in rows:
        assert 0 <= row["f1"] <= 100 and 0 <= row["exact_match"] <= row["f1"] + 1e-9
        assert all(row["latency_ms"][p] > 0 for p in PADDINGS)
    # shorter configs never cost more MACs; padded, every config also drops the padding after its first layer
    for padding in PADDINGS:
        ratios = [row["macs_ratio"][padding] for row in rows]
        assert ratios == sorted(ratios)
    assert all(row["macs_ratio"]["max_length"] > row["macs_ratio"]["dynamic"] for row in rows[1:])


@needs_dev
def test_latency_sample_larger_than_the_features_is_refused(tiny_model_dir, capsys):
    arguments = ["demo", "--model", tiny_model_dir, "--data", DEV, "--questions", "2", "--latency-features", "50",
                 "--out", "unused", "--no-progress"]
    assert main(arguments) == 2
    assert "--latency-features must be between 1 and the sample's" in capsys.readouterr().err
