"""`dtb train` on a tiny random model: end to end, exact resume, fp16 export, length-grouped batches, the
pluggable loss, the search split left out, option checks."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dtb_ext.qa.data import default_squad_file, search_split_articles
from dtb_ext.train.options import TrainOptions
from dtb_ext.train.run import build_trainer, load_train_examples, run_training
from dtb_ext.train.trainer import DynamicPaddingCollator, EpochSeededLengthGroupedSampler

TRAIN = default_squad_file("train-subset-v1.1.json")
pytestmark = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")


def _options(output, model, **overrides):
    settings = dict(output=str(output), model=model, limit=20, batch_size=4, epochs=2, save_steps=3,
                    save_total_limit=10, logging_steps=1, eval_limit=5, eval_batch_size=8, progress=False)
    settings.update(overrides)
    return TrainOptions(**settings)


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "model", "model.safetensors"))


def test_trains_exports_and_evaluates(tmp_path, tiny_model_dir, capsys):
    metrics = run_training(_options(tmp_path, tiny_model_dir, max_steps=4))
    assert metrics["global_step"] == 4
    assert metrics["eval"]["n"] == 5 and 0 <= metrics["eval"]["f1"] <= 100
    assert json.loads((tmp_path / "metrics.json").read_text())["eval"]["n"] == 5
    model_dir = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "dtb_train.json"} <= set(os.listdir(model_dir))
    checkpoint = tmp_path / "checkpoints" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").is_file()
    assert not any(name.endswith(".bin") and "model" in name for name in os.listdir(checkpoint))
    # the exported directory is what `dtb eval --model` reads
    from dtb_ext.cli import main

    assert main(["eval", "--data", default_squad_file("dev-a-v1.1.json"), "--model", str(model_dir), "--limit", "3",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3


@pytest.mark.parametrize("resume_step", [3, 6])  # inside the first epoch, and after an epoch boundary
def test_resume_continues_exactly(tmp_path, tiny_model_dir, resume_step):
    straight = tmp_path / "straight"
    run_training(_options(straight, tiny_model_dir, max_steps=8, skip_eval=True))
    resumed = tmp_path / "resumed"
    os.makedirs(resumed / "checkpoints")
    name = f"checkpoint-{resume_step}"
    shutil.copytree(straight / "checkpoints" / name, resumed / "checkpoints" / name)
    # A later save interrupted mid-write (a stopped session): config and a temporary weights file, no state.
    interrupted = resumed / "checkpoints" / f"checkpoint-{resume_step + 1}"
    os.makedirs(interrupted)
    shutil.copy(straight / "checkpoints" / name / "config.json", interrupted / "config.json")
    (interrupted / ".tmp1234").write_bytes(b"partial")
    metrics = run_training(_options(resumed, tiny_model_dir, max_steps=8, skip_eval=True, resume=True))
    assert metrics["global_step"] == 8
    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_resume_requires_a_checkpoint_and_checkpoints_require_resume(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="no complete checkpoint-\\* folder"):
        run_training(_options(tmp_path, tiny_model_dir, resume=True))
    run_training(_options(tmp_path, tiny_model_dir, max_steps=3, skip_eval=True))
    with pytest.raises(ValueError, match="pass --resume"):
        run_training(_options(tmp_path, tiny_model_dir, max_steps=3, skip_eval=True))


def test_fp16_export_halves_the_weights_and_loads_as_float32(tmp_path, tiny_model_dir):
    from dtb_ext.qa.model import load_qa_model

    run_training(_options(tmp_path, tiny_model_dir, max_steps=1, skip_eval=True, fp16_export=True))
    weights = _weights(tmp_path)
    assert all(tensor.dtype == torch.float16 for tensor in weights.values())
    model, _ = load_qa_model(str(tmp_path / "model"))
    assert next(model.parameters()).dtype == torch.float32


def test_collator_pads_to_the_longest_feature():
    batch = DynamicPaddingCollator(pad_token_id=0)([
        {"input_ids": [101, 7, 102], "token_type_ids": [0, 0, 0], "attention_mask": [1, 1, 1],
         "start_positions": 1, "end_positions": 1},
        {"input_ids": [101, 102], "token_type_ids": [0, 1], "attention_mask": [1, 1],
         "start_positions": 0, "end_positions": 0},
    ])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 1, 0]]
    assert batch["start_positions"].tolist() == [1, 0]


def test_sampler_groups_lengths_and_depends_only_on_seed_and_epoch():
    lengths = list(torch.randint(20, 384, (400,), generator=torch.Generator().manual_seed(1)).tolist())
    sampler = EpochSeededLengthGroupedSampler(batch_size=8, lengths=lengths, seed=5)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG must not matter
    assert list(sampler) == first and sorted(first) == list(range(400))
    sampler.set_epoch(1)
    assert list(sampler) != first
    # batches hold similar lengths: far less padding than random batches
    def padded(order):
        return sum(8 * max(lengths[i] for i in order[b:b + 8]) for b in range(0, len(order), 8))
    assert padded(first) < 0.8 * padded(list(torch.randperm(400, generator=torch.Generator().manual_seed(0)).tolist()))


def test_a_custom_loss_plugs_in(tmp_path, tiny_model_dir):
    calls = []

    def loss_fn(model, inputs):
        calls.append(inputs["input_ids"].shape[0])
        outputs = model(**inputs)
        return outputs.loss * 0.5, outputs

    trainer = build_trainer(_options(tmp_path, tiny_model_dir, max_steps=2, skip_eval=True), loss_fn=loss_fn)
    trainer.train()
    assert calls == [4, 4]


def test_attention_dropout_is_set_for_training_and_recorded_in_the_config(tmp_path, tiny_model_dir):
    default = build_trainer(_options(tmp_path / "default", tiny_model_dir, max_steps=1))
    assert {layer.attention.self.dropout.p for layer in default.model.bert.encoder.layer} == {
        default.model.config.attention_probs_dropout_prob}
    trainer = build_trainer(_options(tmp_path / "none", tiny_model_dir, max_steps=1, attention_dropout=0.0))
    assert {layer.attention.self.dropout.p for layer in trainer.model.bert.encoder.layer} == {0.0}
    assert trainer.model.config.attention_probs_dropout_prob == 0.0


def test_search_articles_are_left_out_unless_asked(tmp_path):
    held_out = set(search_split_articles())
    default = load_train_examples(_options(tmp_path, None, limit=None))
    assert default and not {e.title for e in default} & held_out
    everything = load_train_examples(_options(tmp_path, None, limit=None, include_search_articles=True))
    assert {e.title for e in everything} >= held_out


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"warmup": 1.5}, "warmup is a fraction"),
        ({"limit": 0}, "limit must be a positive number"),
        ({"epochs": 0, "max_steps": -1}, "epochs must be > 0"),
        ({"attention_dropout": 1.0}, "attention_dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
    ],
)
def test_bad_options_raise_value_error(tmp_path, tiny_model_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_trainer(_options(tmp_path, tiny_model_dir, **overrides))


def test_command_line_train_and_its_errors(tmp_path, tiny_model_dir, capsys):
    from dtb_ext.cli import main

    args = ["train", "--output", str(tmp_path), "--model", tiny_model_dir, "--limit", "8", "--batch-size", "4",
            "--max-steps", "2", "--save-steps", "1", "--eval-limit", "2", "--no-progress"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 2
    options = json.loads((tmp_path / "model" / "dtb_train.json").read_text())["options"]
    assert (options["limit"], options["batch_size"], options["max_steps"]) == (8, 4, 2)
    assert main(args) == 2  # checkpoints exist, no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main(args[:-3] + ["--max-steps", "3", "--resume", "--skip-eval", "--no-progress"]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 3
