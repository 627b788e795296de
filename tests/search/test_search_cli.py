"""`dtb search` and `dtb pick`, run in process through the `dtb` entry point."""
from __future__ import annotations

import json
import os

import optuna
import pytest

from dtb_ext.cli import main
from dtb_ext.search import pick as pick_module
from dtb_ext.search.front import Front
from dtb_ext.models.saved_config import save_config_to_model
from repo_paths import SHARED_SQUAD_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)
SQUAD = SHARED_SQUAD_DIR
TRAIN = os.path.join(SQUAD, "train-subset-v1.1.json")


def _front_file(tmp_path) -> str:
    records = [
        ((64, 64), dict(f1=80.0, exact_match=70.0, macs=128.0, latency_ms=None)),
        ((64, 32), dict(f1=79.5, exact_match=69.0, macs=96.0, latency_ms=None)),
        ((32, 16), dict(f1=70.0, exact_match=60.0, macs=48.0, latency_ms=None)),
    ]
    return Front.build("macs", records, (64, 64)).save(str(tmp_path))["json"]


def test_pick_prints_one_json_object(tmp_path, capsys):
    path = _front_file(tmp_path)
    assert main(["pick", "--max-f1-drop", "1.0", "--front", path]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert chosen["length_config"] == [64, 32] and chosen["f1"] == 79.5
    assert chosen["speedup"] == pytest.approx(128 / 96)
    assert main(["pick", "--min-speedup", "2", "--front", path]) == 0
    assert json.loads(capsys.readouterr().out)["length_config"] == [32, 16]


def test_pick_errors_are_clear(tmp_path, capsys, monkeypatch):
    path = _front_file(tmp_path)
    assert main(["pick", "--min-speedup", "5", "--front", path]) == 2
    assert "highest speedup is 2.667x" in capsys.readouterr().err
    monkeypatch.setattr(pick_module, "DEFAULT_FRONT_PATH", str(tmp_path / "missing" / "front.json"))
    assert main(["pick", "--max-f1-drop", "1.0"]) == 2
    assert "no shipped front" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pick", "--max-f1-drop", "1.0", "--min-speedup", "2", "--front", path])


def test_pick_saves_the_choice_into_the_model(tmp_path, tiny_model_dir, capsys):
    import dtb_ext
    from transformers import BertForQuestionAnswering

    path = _front_file(tmp_path)
    assert main(["pick", "--max-f1-drop", "1.0", "--front", path, "--save-to", tiny_model_dir]) == 0
    with open(os.path.join(tiny_model_dir, "config.json")) as handle:
        assert json.load(handle)["dtb_length_config"] == [64, 32]
    model = dtb_ext.patch(BertForQuestionAnswering.from_pretrained(tiny_model_dir))
    assert list(dtb_ext.get_length_config(model).values) == [64, 32]
    with pytest.raises(ValueError, match="expected 2, got 3"):
        save_config_to_model(tiny_model_dir, [64, 32, 16])
    save_config_to_model(tiny_model_dir, None)


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found")
def test_search_command_writes_the_front(tmp_path, tiny_model_dir, capsys):
    out = str(tmp_path / "search")
    arguments = ["search", "--model", tiny_model_dir, "--data", TRAIN, "--questions", "20", "--evaluations", "3",
                 "--strategy", "nsga2", "--space", "absolute", "--min-length", "16", "--confirmation-questions", "10",
                 "--report-questions", "10", "--out", out, "--no-progress"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "(full length)" in printed and "Pareto front (macs" in printed and "dev F1" in printed
    assert sorted(os.listdir(out)) == ["front.csv", "front.json", "front.png", "study.db"]
    assert main(["pick", "--max-f1-drop", "100", "--front", os.path.join(out, "front.json")]) == 0
    assert len(json.loads(capsys.readouterr().out)["length_config"]) == 2
    assert main(arguments[:-1] + ["--no-progress", "--cost", "latency"]) == 2
    assert "differing fields" in capsys.readouterr().err


def test_seed_config_flag_parses_ratios_and_token_counts_and_names_bad_values():
    from dtb_ext.search.cli import _seed_config

    assert _seed_config("1,1,0.7,0.5", "ratios") == (1.0, 1.0, 0.7, 0.5)
    assert _seed_config("384,300,200", "absolute") == (384, 300, 200)
    with pytest.raises(ValueError, match="comma-separated token counts, got '384,0.5'"):
        _seed_config("384,0.5", "absolute")
