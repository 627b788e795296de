"""`python -m dtb_ext.experiments.drop_tolerance`: F1 and real-length MACs ratios at fixed ratio configurations."""
from __future__ import annotations

import json
import os
import re

import pytest

from dtb_ext.experiments.drop_tolerance import DROP_CONFIGS, format_table, main
from repo_paths import SHARED_SQUAD_DIR

DEV = os.path.join(SHARED_SQUAD_DIR, "dev-a-v1.1.json")
TRAIN = os.path.join(SHARED_SQUAD_DIR, "train-subset-v1.1.json")


def test_every_config_has_six_layers():
    # the MACs ratios themselves: dtb_ext.macs.macs_ratio, tests/models/test_macs.py
    assert all(len(ratios) == 6 for _, ratios in DROP_CONFIGS)


def test_table_lists_every_row():
    rows = [{"label": "full length", "f1": 70.0, "exact_match": 60.0, "f1_drop_percent": 0.0, "macs_ratio": 1.0},
            {"label": "x", "f1": 63.0, "exact_match": 50.0, "f1_drop_percent": 10.0, "macs_ratio": 1.25}]
    table = format_table(rows).splitlines()
    assert len(table) == 4 and table[3] == "| x | 63.00 | 50.00 | 10.00 | 1.25 |"


@pytest.mark.skipif(not os.path.isfile(DEV), reason="shared SQuAD data not found at ../shared/data/squad")
@pytest.mark.parametrize("selection", ["significance source", "answer oracle",
                                       "significance source, question kept first"])
def test_command_scores_a_model_on_a_dev_sample(tmp_path, capsys, selection):
    from tiny_qa import save_tiny_qa_model
    from transformers import AutoConfig

    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = 6
    config.save_pretrained(model_dir)  # 6 layers (the extra ones randomly initialised), as DROP_CONFIGS expect
    out = tmp_path / "rows.json"
    flags = {"significance source": [], "answer oracle": ["--answer-oracle"],
             "significance source, question kept first": ["--keep-question"]}[selection]
    assert main(["--model", model_dir, "--questions", "4", "--no-progress", "--out", str(out)] + flags) == 0
    saved = json.loads(out.read_text())
    assert saved["selection"] == selection
    assert saved["questions"] == 4 and [row["label"] for row in saved["rows"]][0] == "full length"
    assert len(saved["rows"]) == 1 + len(DROP_CONFIGS)
    assert saved["rows"][0]["f1_drop_percent"] == 0.0 and all(row["macs_ratio"] >= 1.0 for row in saved["rows"])
    assert "| full length |" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")
def test_command_scores_a_sample_of_every_held_out_question(tmp_path, capsys):
    from tiny_qa import save_tiny_qa_model
    from transformers import AutoConfig

    model_dir = save_tiny_qa_model(str(tmp_path / "model"))
    config = AutoConfig.from_pretrained(model_dir)
    config.num_hidden_layers = 6
    config.save_pretrained(model_dir)
    out = tmp_path / "rows.json"
    assert main(["--model", model_dir, "--part", "held-out", "--data", TRAIN, "--questions", "3", "--no-progress",
                 "--config", "1,1,1,1,0.5,0.5", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["part"] == "held-out"
    assert [(row["label"], row["ratios"]) for row in saved["rows"]] == [
        ("full length", None), ("1,1,1,1,0.5,0.5", [1, 1, 1, 1, 0.5, 0.5])]
    assert "(held-out part), 3 questions" in capsys.readouterr().err


def test_command_reports_bad_input(capsys):
    assert main(["--model", "/nonexistent"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["--config", "1,1,x"]) == 2
    assert "--config takes comma-separated ratios such as 1,1,1,1,0.5,0.5, got '1,1,x'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--answer-oracle", "--keep-question"])
    assert exit_info.value.code == 2
    assert "give one of --answer-oracle and --keep-question" in capsys.readouterr().err


def _tiny_patched_model():
    """A patched 2-layer, 16-wide random BERT QA model (seed 0), in eval mode."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    import dtb_ext

    torch.manual_seed(0)
    return dtb_ext.patch(BertForQuestionAnswering(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).eval())


def test_the_answer_oracle_keeps_the_question_and_the_likeliest_answer_tokens(monkeypatch):
    import torch

    from dtb_ext.experiments import drop_tolerance
    from dtb_ext.experiments.drop_tolerance import AnswerOracle

    model = _tiny_patched_model()
    ids = torch.randint(1, 50, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    types = torch.tensor([[0] * 4 + [1] * 8])
    seen = []
    original = drop_tolerance.rank_tokens_by

    def spy(encoder, scores):
        seen.append(scores)
        return original(encoder, scores)

    monkeypatch.setattr(drop_tolerance, "rank_tokens_by", spy)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        AnswerOracle(model, [8, 8])(ids, mask, types)
    expected = full.start_logits.softmax(-1) + full.end_logits.softmax(-1) + 3.0 * (types == 0).float()
    assert torch.allclose(seen[0], expected)
    assert bool((seen[0][0, :4] > seen[0][0, 4:].max()).all())


def test_keep_question_keeps_the_question_segment_first_at_every_dropping_layer(monkeypatch):
    import torch

    from dtb_ext import ops
    from dtb_ext.experiments.drop_tolerance import QuestionKept

    model = _tiny_patched_model()
    ids = torch.randint(1, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 10:] = 0
    types = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 9])
    kept = []
    original = ops.select_and_gather

    def spy(*args):
        result = original(*args)
        kept.append(result[2])
        return result

    monkeypatch.setattr(ops, "select_and_gather", spy)
    with torch.no_grad():
        QuestionKept(model, [6, 4])(ids, mask, types)
        model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    # Layer 1 keeps 6 of 12 (resp. 10) tokens, the question's 5 (resp. 3) among them, in slots 0-4 (0-2); layer 2
    # keeps 4 of those 6 slots: question slots only in example 0, all 3 question slots in example 1.
    assert kept[0][0, :5].tolist() == [0, 1, 2, 3, 4] and kept[0][1, :3].tolist() == [0, 1, 2]
    assert all(slot < 5 for slot in kept[1][0].tolist()) and kept[1][1, :3].tolist() == [0, 1, 2]
    assert len(kept) == 2  # outside QuestionKept the model runs at full length: nothing gathered


def test_keep_tokens_first_takes_a_bool_mask_of_positions():
    import torch

    from dtb_ext.models.relevance import keep_tokens_first

    expected = "expects a [batch, positions] bool mask, got torch.int64 of shape (3,)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        with keep_tokens_first(torch.nn.Module(), torch.ones(3, dtype=torch.long)):
            pass
