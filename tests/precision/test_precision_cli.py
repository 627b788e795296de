"""--precision on `dtb eval` and `dtb demo`, and the int8 study, on a tiny random QA model."""
import json
import os

import pytest

from dtb_ext.cli import main
from dtb_ext.qa.data import default_squad_file
from tiny_qa import save_tiny_qa_model

DEV_A = default_squad_file("dev-a-v1.1.json")
TRAIN = default_squad_file("train-subset-v1.1.json")
pytestmark = pytest.mark.skipif(not (os.path.isfile(DEV_A) and os.path.isfile(TRAIN)),
                                reason="shared SQuAD data not found at ../shared/data/squad")


def _eval(tiny_model_dir, tmp_path, capsys, *precision):
    out = tmp_path / f"predictions{'-'.join(precision)}.json"
    assert main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--limit", "5", "--no-progress",
                 "--predictions", str(out), *precision]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return result, json.loads(out.read_text())


def test_eval_default_is_fp32_and_every_precision_runs(tiny_model_dir, tmp_path, capsys):
    default, default_predictions = _eval(tiny_model_dir, tmp_path, capsys)
    fp32, fp32_predictions = _eval(tiny_model_dir, tmp_path, capsys, "--precision", "fp32")
    assert fp32_predictions == default_predictions and fp32["f1"] == default["f1"]
    for name in ("bf16", "int8"):
        result, predictions = _eval(tiny_model_dir, tmp_path, capsys, "--precision", name)
        assert result["n"] == 5 and set(predictions) == set(default_predictions)


def test_eval_auto_says_what_it_chose(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--limit", "2", "--no-progress",
                 "--precision", "auto", "--predictions", str(out)]) == 0
    assert "precision auto -> " in capsys.readouterr().err


def test_eval_refuses_an_unknown_precision(tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--data", DEV_A, "--model", tiny_model_dir, "--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_front(tmp_path_factory):
    """A MACs front for the tiny model (cost: the summed lengths), as `dtb search` saves one."""
    from dtb_ext.search.front import Front

    results = [(config, dict(f1=f1, exact_match=f1 - 10, macs=float(sum(config)), latency_ms=None))
               for config, f1 in [((384, 384), 80.0), ((300, 200), 79.5), ((128, 64), 73.0)]]
    directory = str(tmp_path_factory.mktemp("front"))
    Front.build("macs", results, (384, 384), {"max_seq_length": 384, "doc_stride": 128,
                                              "max_query_length": 64}).save(directory)
    return os.path.join(directory, "front.json")


@pytest.mark.parametrize(("choice", "precisions"), [("int8", ["fp32", "int8"]), ("fp32", ["fp32"])])
def test_demo_shows_fp32_and_the_chosen_precision_side_by_side(tiny_model_dir, tiny_front, tmp_path, capsys,
                                                               choice, precisions):
    out = str(tmp_path / "demo")
    assert main(["demo", "--model", tiny_model_dir, "--front", tiny_front, "--data", DEV_A, "--questions", "4",
                 "--latency-features", "2", "--out", out, "--no-progress", "--precision", choice]) == 0
    printed = capsys.readouterr().out
    record = json.loads(open(os.path.join(out, "demo.json")).read())
    variants = [f"torch {name}" for name in precisions]
    assert record["settings"]["precisions"] == precisions and record["settings"]["variants"] == variants
    for row in record["rows"]:
        assert list(row["variants"]) == variants
        assert row["f1"] == row["variants"]["torch fp32"]["f1"]
    full = record["rows"][0]["variants"]
    assert all(full[name]["speedup_same_precision"] == {"dynamic": 1.0, "max_length": 1.0} for name in variants)
    assert all(f" {name} " in printed for name in precisions)


def test_int8_study_runs_every_step(tmp_path, tiny_front):
    from dtb_ext.experiments.int8_study import run_study

    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    with open(tiny_front) as source, open(os.path.join(model_dir, "front.json"), "w") as target:
        target.write(source.read())
    result = run_study(model_dir, DEV_A, TRAIN, questions=4, sensitivity_questions=2, calibration_questions=2,
                       keep_counts=[1], alphas=[0.5], picks=[1.0], log=lambda line: None)
    steps = [step["step"] for step in result["steps"]]
    assert steps[:5] == ["fp32", "bf16", "torch dynamic, per-tensor weights", "torch dynamic, per-channel weights",
                         "int8 per-channel weights, per-token activations"]
    assert steps[5].startswith("int8, 1 most sensitive kept fp32: bert.encoder.layer.")
    assert steps[6:] == ["int8 + SmoothQuant alpha 0.5", "fp32 at the within-1% pick [300, 200]",
                         "int8 at the within-1% pick"]
    assert result["steps"][-1]["vs"] == "fp32 at the within-1% pick [300, 200]"
    assert len(result["sensitivity"]) == 12 and result["steps"][0]["f1_drop"] == 0
