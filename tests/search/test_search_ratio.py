"""The ratio search space: its operators keep monotonicity on the 1/grid lattice, the engine searches it, and a
ratio search runs end to end on a tiny QA model through pick, save_config_to_model, patch and `dtb eval`."""
from __future__ import annotations

import json
import os

import numpy as np
import optuna
import pytest

from dtb_ext.search.engine import run_search
from dtb_ext.search.evaluation import Evaluation
from dtb_ext.search.space import RatioSpace
from tiny_qa import minilm_tokenizer, save_tiny_qa_model, tiny_qa_model
from repo_paths import SHARED_SQUAD_DIR

optuna.logging.set_verbosity(optuna.logging.WARNING)
SQUAD = SHARED_SQUAD_DIR
TRAIN = os.path.join(SQUAD, "train-subset-v1.1.json")
DEV = os.path.join(SQUAD, "dev-a-v1.1.json")
SPACE = RatioSpace(num_layers=4, min_ratio=0.2, grid=20)


def _is_monotone_config(space: RatioSpace, config) -> bool:
    return (
        len(config) == space.num_layers
        and all(isinstance(v, float) for v in config)
        and all(a >= b for a, b in zip(config, config[1:]))
        and all(space.min_ratio - 1e-12 <= v <= 1.0 for v in config)
        and all(abs(v * space.grid - round(v * space.grid)) < 1e-9 for v in config)
    )


def test_ratio_operators_keep_monotonicity_on_the_grid():
    rng = np.random.default_rng(0)
    population = SPACE.constant_ratio_configs(6)
    assert population[0] == SPACE.full == (1.0,) * 4 and population[-1][-1] == 0.2
    assert all(_is_monotone_config(SPACE, c) for c in population)
    configs = list(population)
    for _ in range(300):
        parent = configs[int(rng.integers(len(configs)))]
        child = SPACE.mutate(parent, 0.5, rng)
        assert _is_monotone_config(SPACE, child)
        other = configs[int(rng.integers(len(configs)))]
        crossed = SPACE.crossover(child, other)
        assert _is_monotone_config(SPACE, crossed)
        assert all(min(a, b) <= c <= max(a, b) for a, b, c in zip(child, other, crossed))
        configs += [child, crossed]
    for config in configs:
        assert SPACE.config_from_params(SPACE.params(config)) == config
    assert SPACE.length_spec((1.0, 0.5, 0.5, 0.25)).kind == "ratio"


def test_ratio_space_refuses_configs_off_the_grid_or_out_of_range():
    with pytest.raises(ValueError, match="multiples of 1/20"):
        SPACE.check((1.0, 0.5, 0.5, 0.33))
    with pytest.raises(ValueError, match=r"lie in \[0.2, 1\]"):
        SPACE.check((1.0, 0.5, 0.5, 0.15))
    with pytest.raises(ValueError, match="non-increasing"):
        SPACE.check((0.5, 1.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="min_ratio"):
        RatioSpace(4, min_ratio=0.0)


class RatioAnalyticEvaluator:
    """F1 falls as ratios shrink; MACs are the sum of ratios; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, ...]] = []

    def __call__(self, config: tuple[float, ...]) -> Evaluation:
        self.calls.append(config)
        f1 = 90.0 - 40.0 * sum((1.0 - r) ** 2 for r in config)
        return Evaluation(f1=f1, exact_match=f1, macs=float(sum(config)), n=10)


@pytest.mark.parametrize("strategy", ["evolution", "tpe", "nsga2"])
def test_engine_searches_the_ratio_space(strategy):
    evaluator = RatioAnalyticEvaluator()
    front = run_search(evaluator, SPACE, n_evaluations=14, strategy=strategy, progress=False)
    assert evaluator.calls[0] == SPACE.full and len(set(evaluator.calls)) == len(evaluator.calls) == 14
    assert all(_is_monotone_config(SPACE, c) for c in evaluator.calls)
    assert front.space == "ratios" and front.identity["space"] == "ratios" and front.identity["ratio_grid"] == 20
    assert all(p.space == "ratios" and p.length_config.kind == "ratio" for p in front.points)


def test_a_ratio_study_is_not_reopened_as_an_absolute_one(tmp_path):
    from dtb_ext.search.space import LengthSpace

    storage = str(tmp_path / "study.db")
    run_search(RatioAnalyticEvaluator(), SPACE, n_evaluations=3, strategy="tpe", storage=storage, progress=False)
    with pytest.raises(ValueError, match="space"):
        run_search(lambda c: Evaluation(1.0, 1.0, 1.0), LengthSpace(4, 64, 8), n_evaluations=3, storage=storage,
                   progress=False)


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found")
def test_ratio_search_end_to_end_on_a_tiny_model(tmp_path, capsys):
    import dtb_ext
    from transformers import BertForQuestionAnswering

    from dtb_ext.cli import main
    from dtb_ext.qa import evaluate_qa, load_squad, prepare_eval_features
    from dtb_ext.models.saved_config import save_config_to_model
    from dtb_ext.search.pick import pick
    from dtb_ext.search.qa_search import search_lengths

    tokenizer = minilm_tokenizer()
    model = tiny_qa_model(tokenizer.vocab_size)
    front = search_lengths(
        model, tokenizer, data=TRAIN, questions=20, space="ratios", min_ratio=0.3, precision="fp32",
        n_evaluations=5, strategy="evolution", protocol="held-out", confirmation_questions=15, reevaluate_on=DEV,
        reevaluate_questions=10, out_dir=str(tmp_path / "search"), progress=False,
    )
    assert front.space == "ratios" and front.full_length.length_config.values == (1.0, 1.0)
    assert front.identity["precision"] == "fp32" and front.identity["space"] == "ratios"
    assert front.rule is not None and front.confirmed_on["split"] == "confirmation"
    assert front.confirmed_on["questions"] == 15
    assert all(p.confirmation is not None and p.drop is not None for p in front.front)
    assert all(p.drop.n == 20 and p.confirmation.drop.n == 15 for p in front.front)
    assert all(p.macs <= front.full_length.macs for p in front.points)
    saved = json.loads((tmp_path / "search" / "front.json").read_text())
    assert saved["space"] == "ratios" and isinstance(saved["full_length"]["length_config"][0], float)

    chosen = pick(str(tmp_path / "search" / "front.json"), max_f1_drop_percent=100.0)
    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    save_config_to_model(model_dir, chosen)
    with open(os.path.join(model_dir, "config.json")) as handle:
        assert json.load(handle)["dtb_length_config"] == {"ratios": list(chosen.length_config.values)}
    patched = dtb_ext.patch(BertForQuestionAnswering.from_pretrained(model_dir))
    assert dtb_ext.get_length_config(patched) == chosen.length_config

    # `dtb eval --length-ratios` runs the picked ratios, with the scores evaluate_qa gives them directly
    examples = load_squad(DEV)[:4]
    direct = evaluate_qa(model, prepare_eval_features(examples, tokenizer), length_config=chosen.length_config,
                         progress=False)
    ratios = ",".join(repr(v) for v in chosen.length_config.values)
    capsys.readouterr()
    assert main(["eval", "--data", DEV, "--model", model_dir, "--limit", "4", "--length-ratios", ratios,
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(direct["f1"])


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found")
def test_search_and_pick_commands_in_the_ratio_space(tmp_path, capsys):
    from dtb_ext.cli import main

    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    out = str(tmp_path / "search")
    assert main(["search", "--model", model_dir, "--data", TRAIN, "--questions", "20", "--evaluations", "3",
                 "--strategy", "tpe", "--min-ratio", "0.4", "--precision", "fp32", "--confirmation-questions",
                 "10", "--report-questions", "8", "--out", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ratios space, fp32" in printed and "conf drop % [interval]" in printed and "[1.00, 1.00]" in printed
    assert "pick rule: paired-bootstrap upper bound, one-sided 90 %" in printed
    assert main(["pick", "--max-f1-drop-percent", "100", "--front", os.path.join(out, "front.json"),
                 "--save-to", model_dir]) == 0
    chosen = json.loads(capsys.readouterr().out)
    assert chosen["space"] == "ratios" and chosen["decision"]["scores"] == "confirmation"
    assert (chosen["decision"]["split"], chosen["decision"]["questions"]) == ("dev-a confirmation", 10)
    assert len(chosen["decision"]["drop_points"]) == 3
    with open(os.path.join(model_dir, "config.json")) as handle:
        assert json.load(handle)["dtb_length_config"] == {"ratios": chosen["length_config"]}
    assert main(["search", "--model", model_dir, "--min-length", "16", "--out", out, "--no-progress"]) == 2
    assert "min_length applies to the absolute space" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(DEV), reason="shared SQuAD data not found")
def test_demo_runs_a_ratio_front(tmp_path, capsys):
    from dtb_ext.cli import main
    from dtb_ext.search.front import Front

    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    records = [((1.0, 1.0), 80.0), ((0.8, 0.6), 79.5), ((0.6, 0.4), 78.0), ((0.4, 0.2), 60.0)]
    results = [(config, dict(f1=f1, exact_match=f1 - 10, macs=sum(config), latency_ms=None)) for config, f1 in records]
    Front.build("macs", results, (1.0, 1.0), {"max_seq_length": 384, "doc_stride": 128, "max_query_length": 64},
                space="ratios").save(model_dir)
    out = str(tmp_path / "demo")
    assert main(["demo", "--model", model_dir, "--data", DEV, "--questions", "4", "--latency-features", "2",
                 "--precision", "fp32", "--out", out, "--no-progress"]) == 0
    with open(os.path.join(out, "demo.json")) as handle:
        rows = json.load(handle)["rows"]
    assert [row["length_config"] for row in rows][:3] == [{"ratios": r} for r in ([1.0, 1.0], [0.8, 0.6], [0.6, 0.4])]
    ratios = [row["macs_ratio"]["dynamic"] for row in rows]
    assert ratios[0] == 1.0 and ratios == sorted(ratios) and ratios[-1] > 1.0
