"""The learned relevance scorer (dtb_ext/models/relevance.py): docs/design.md §2 holds with it on (batch invariance,
kernels equal the reference ops, ties toward the lower position), it really selects, gradients reach it in
LengthDrop, it survives save / from_pretrained / patch, and a model without it is exactly as before. Also the bf16
(autocast) training path with the scorer, including an exact resume."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering, TrainingArguments

import dtb_ext
from dtb_ext import ops
from dtb_ext.config import LengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.models.patching import dynamic_encoder, widen_relevance_scorer
from dtb_ext.models.relevance import (
    SCORER_FILE,
    RelevanceScorer,
    rank_tokens_by,
    record_scorer_logits,
    standardise,
)
from dtb_ext.train.lengthdrop import (
    LengthDropSettings,
    LengthDropTrainer,
    RelevanceSettings,
    relevance_targets,
    scorer_distillation_loss,
)
from repo_paths import SHARED_SQUAD_DIR

VOCAB = 120
SOURCES = ["scorer", "attention+scorer"]
RATIOS = LengthConfig.ratios([0.8, 0.6, 0.4])
ABSOLUTE = [10, 7, 4]


def _model(seed: int = 0) -> BertForQuestionAnswering:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForQuestionAnswering(config).eval()


def _scored_model(source: str, seed: int = 0) -> BertForQuestionAnswering:
    """A patched tiny model with a scorer whose weights are random (not the default init), in eval mode."""
    model = dtb_ext.patch(_model(seed))
    scorer = dtb_ext.add_relevance_scorer(model, source)
    with torch.no_grad():
        for parameter in scorer.parameters():
            parameter.normal_(0, 1)
    return model


def _batch(lengths=(14, 11, 6), width=14, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        types[row, length // 3:length] = 1
    ids = torch.randint(1, VOCAB, mask.shape, generator=generator) * mask
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def _logits(model, batch):
    with torch.no_grad():
        output = model(**batch)
    return torch.stack([output.start_logits, output.end_logits])


# --- helpers of the scorer -----------------------------------------------------------------------------------


def test_standardise_is_per_example_over_real_tokens_and_zero_for_constant_rows():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    z = standardise(values, mask)
    spread = (2.0 / 3.0) ** 0.5
    torch.testing.assert_close(z[0], torch.tensor([-1 / spread, 0.0, 1 / spread, 0.0]))
    assert torch.equal(z[1], torch.zeros(4))


def test_targets_mix_the_answer_distribution_and_the_question_segment():
    start = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False]])
    question = torch.tensor([[True, True, False, False, False]])
    targets = relevance_targets(start, start, mask, question, temperature=1.0, question_share=0.5)
    torch.testing.assert_close(targets.sum(), torch.tensor(1.0))
    assert targets[0, 4] == 0 and targets[0, 2] > targets[0, 0] > targets[0, 3]
    torch.testing.assert_close(targets[0, :2].sum() - targets[0, 3] * 2, torch.tensor(0.5))
    no_question = relevance_targets(start, start, mask, torch.zeros_like(mask), 1.0, 0.5)
    torch.testing.assert_close(no_question, torch.softmax(start.masked_fill(~mask, -1e30), dim=-1))


# --- docs/design.md §2 with the scorer on ------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_full_length_is_unchanged_by_the_scorer(source):
    plain = dtb_ext.patch(_model())
    scored = _scored_model(source)
    batch = _batch()
    torch.testing.assert_close(_logits(scored, batch), _logits(plain, batch), rtol=0, atol=0)


@pytest.mark.parametrize("config", [RATIOS, ABSOLUTE], ids=["ratios", "absolute"])
@pytest.mark.parametrize("source", SOURCES)
def test_batch_invariance_with_the_scorer(source, config):
    model = _scored_model(source)
    lengths = (14, 11, 6)
    batch = _batch(lengths)
    with dtb_ext.length_config(model, config):
        together = _logits(model, batch)
        for row, length in enumerate(lengths):
            alone = _logits(model, {name: value[row:row + 1, :length] for name, value in batch.items()})
            torch.testing.assert_close(together[:, row, :length], alone[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source", SOURCES)
def test_kernels_equal_the_reference_ops_with_the_scorer(source):
    if not dtb_ext.has_kernels():
        pytest.skip("the compiled extension is not built")
    model = _scored_model(source)
    batch = _batch()
    with dtb_ext.length_config(model, RATIOS):
        kernels = _logits(model, batch)
        with ops.reference_ops():
            reference = _logits(model, batch)
    torch.testing.assert_close(kernels, reference, rtol=1e-5, atol=1e-5)


def _kept_at_first_layer(model, batch, config) -> torch.Tensor:
    """[B, L] bool: which tokens layer 0 kept (a token dropped there ends with layer 0's input as its vector)."""
    with torch.no_grad(), dtb_ext.length_config(model, config):
        states = model.bert(**batch, output_hidden_states=True).hidden_states
    return (states[1] != states[0]).any(dim=-1)


def test_the_scorer_selects_and_ties_break_toward_the_lower_position():
    model = _scored_model("scorer")
    scorer = dynamic_encoder(model).relevance
    batch = _batch(lengths=(14,), width=14)
    with torch.no_grad():
        for parameter in scorer.parameters():
            parameter.zero_()  # every token scores 0: ties everywhere
    kept = _kept_at_first_layer(model, batch, [10, 10, 10])
    assert kept[0].tolist() == [True] * 10 + [False] * 4
    with torch.no_grad():
        scorer.layers[0].weight.normal_(0, 1)
    scores = _first_layer_scores(model, batch)
    expected = torch.zeros(14, dtype=torch.bool)
    expected[torch.topk(scores, 10).indices] = True
    assert expected[10:].any(), "the random scorer should prefer some late token (else the test shows nothing)"
    assert torch.equal(_kept_at_first_layer(model, batch, [10, 10, 10])[0], expected)


@pytest.mark.parametrize("source", ["attention", "scorer"])
def test_a_fixed_ranking_replaces_the_significance_source_at_every_dropping_layer(source):
    model = dtb_ext.patch(_model()) if source == "attention" else _scored_model(source)
    batch = _batch(lengths=(14, 9), width=14)
    scores = torch.randn(2, 14, generator=torch.Generator().manual_seed(3))
    with rank_tokens_by(dynamic_encoder(model), scores):
        kept = _kept_at_first_layer(model, batch, [8, 8, 8])
    for row, length in enumerate((14, 9)):
        expected = torch.zeros(14, dtype=torch.bool)
        expected[torch.topk(scores[row, :length], 8).indices] = True
        assert torch.equal(kept[row], expected)
    # At a later layer the ranking is read at the slots' original positions: with [12, 5, 5], layer 1 updates
    # exactly the 5 best-ranked of the tokens layer 0 kept.
    with torch.no_grad(), rank_tokens_by(dynamic_encoder(model), scores):
        states = _layer_states(model, batch, [12, 5, 5])
    for row, length in enumerate((14, 9)):
        first = torch.topk(scores[row, :length], min(12, length)).indices
        best = set(first[torch.topk(scores[row, first], 5).indices].tolist())
        changed_at_layer_1 = set(torch.nonzero((states[2][row] != states[1][row]).any(dim=-1)).flatten().tolist())
        assert changed_at_layer_1 == best


def _layer_states(model, batch, config):
    """Full-length hidden states per layer under `config` (a dropped token keeps its last vector)."""
    with torch.no_grad(), dtb_ext.length_config(model, config):
        return model.bert(**batch, output_hidden_states=True).hidden_states


def test_a_fixed_ranking_must_be_per_position():
    model = dtb_ext.patch(_model())
    with pytest.raises(ValueError, match=r"\[batch, positions\]"):
        with rank_tokens_by(dynamic_encoder(model), torch.zeros(14)):
            pass
    with pytest.raises(ValueError, match="cover 10 positions, the batch has 14"):
        with torch.no_grad(), rank_tokens_by(dynamic_encoder(model), torch.zeros(1, 10)):
            with dtb_ext.length_config(model, [8, 8, 8]):
                model(**_batch(lengths=(14,), width=14))


def _first_layer_scores(model, batch) -> torch.Tensor:
    """Layer 0's scorer logits of example 0 at full length: [L]."""
    with torch.no_grad(), record_scorer_logits(dynamic_encoder(model)) as records:
        model(**batch)
    return records[0].logits[0]


def test_a_model_without_a_scorer_is_exactly_as_before():
    model = _model()
    keys = set(model.state_dict())
    dtb_ext.patch(model)
    assert set(model.state_dict()) == keys
    assert getattr(model.config, "dtb_significance", None) is None
    assert dynamic_encoder(model).significance == "attention"
    with torch.no_grad(), record_scorer_logits(dynamic_encoder(model)) as records:
        model(**_batch())
    assert records == []


# --- saving and loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_save_from_pretrained_patch_round_trip(tmp_path, source, capfd):
    model = _scored_model(source)
    keys = set(model.state_dict())
    assert {key for key in keys if "relevance" in key} == {
        f"bert.encoder.relevance.layers.{i}.{name}" for i in range(3) for name in ("weight", "bias")}
    dtb_ext.save_patched_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        assert not any("relevance" in key for key in handle.keys())  # the scorer has its own file
    assert (tmp_path / SCORER_FILE).is_file()
    capfd.readouterr()
    unpatched = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert "UNEXPECTED" not in "".join(capfd.readouterr())  # a plain load knows every key of model.safetensors
    loaded = dtb_ext.patch(unpatched)
    assert loaded.config.dtb_significance == source and set(loaded.state_dict()) == keys
    batch = _batch()
    with dtb_ext.length_config(model, RATIOS), dtb_ext.length_config(loaded, RATIOS):
        torch.testing.assert_close(_logits(loaded, batch), _logits(model, batch), rtol=0, atol=0)


def test_the_default_model_loads_without_a_report(capfd):
    capfd.readouterr()
    AutoModelForQuestionAnswering.from_pretrained(DEFAULT_MODEL_DIR)
    assert "LOAD REPORT" not in "".join(capfd.readouterr())
    model = dtb_ext.patch(AutoModelForQuestionAnswering.from_pretrained(DEFAULT_MODEL_DIR))
    assert dynamic_encoder(model).relevance is not None and model.config.dtb_significance != "attention"


def test_a_scorer_saved_inside_model_safetensors_still_loads(tmp_path):
    """A plain save_pretrained (Trainer checkpoints, models saved before relevance_scorer.safetensors existed)
    keeps the scorer's keys in model.safetensors."""
    model = _scored_model("attention+scorer")
    model.save_pretrained(tmp_path)
    assert not (tmp_path / SCORER_FILE).exists()
    loaded = dtb_ext.patch(AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval())
    batch = _batch()
    with dtb_ext.length_config(model, RATIOS), dtb_ext.length_config(loaded, RATIOS):
        torch.testing.assert_close(_logits(loaded, batch), _logits(model, batch), rtol=0, atol=0)


def test_patch_refuses_a_scorer_config_without_its_weights(tmp_path):
    model = _model()
    model.config.dtb_significance = "attention+scorer"
    model.save_pretrained(tmp_path)
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="needs the relevance scorer's weights"):
        dtb_ext.patch(loaded)
    assert not dtb_ext.is_patched(loaded)


def test_bad_significance_choices_are_refused():
    model = dtb_ext.patch(_model())
    with pytest.raises(ValueError, match="needs a relevance scorer"):
        dtb_ext.set_significance(model, "scorer")
    with pytest.raises(ValueError, match="must be one of attention, scorer, attention\\+scorer"):
        dtb_ext.set_significance(model, "random")
    with pytest.raises(ValueError, match="used by the sources"):
        dtb_ext.add_relevance_scorer(model, "attention")
    dtb_ext.add_relevance_scorer(model)
    with pytest.raises(ValueError, match="already has a relevance scorer"):
        dtb_ext.add_relevance_scorer(model)
    dtb_ext.set_significance(model, "attention")  # keeps the scorer, selects by attention again
    assert dynamic_encoder(model).relevance is not None


# --- training -----------------------------------------------------------------------------------------------


# --- a scorer with a hidden layer --------------------------------------------------------------------------------


def test_widening_a_scorer_keeps_its_logits_until_the_hidden_layer_trains(tmp_path):
    model = _scored_model("scorer")
    batch = _batch()
    with dtb_ext.length_config(model, RATIOS):
        before = _logits(model, batch)
        scorer = widen_relevance_scorer(model, 8)
        assert scorer.inner_size == 8 and model.config.dtb_scorer_inner_size == 8
        torch.testing.assert_close(_logits(model, batch), before, rtol=0, atol=0)
        with torch.no_grad():
            for parameter in scorer.inner.parameters():
                parameter.normal_(0, 1)
        trained = _logits(model, batch)
    assert not torch.equal(trained, before)  # the hidden layer's logits now change the selection
    dtb_ext.save_patched_model(model, tmp_path)
    loaded = dtb_ext.patch(AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval())
    assert dynamic_encoder(loaded).relevance.inner_size == 8
    assert {key for key in loaded.state_dict() if "relevance.inner" in key} == {
        f"bert.encoder.relevance.inner.{i}.{part}.{name}" for i in range(3) for part in ("up", "down")
        for name in ("weight", "bias")}
    with dtb_ext.length_config(loaded, RATIOS):
        torch.testing.assert_close(_logits(loaded, batch), trained, rtol=0, atol=0)


def test_a_new_scorer_with_a_hidden_layer_and_bad_widths():
    model = dtb_ext.patch(_model())
    scorer = dtb_ext.add_relevance_scorer(model, "scorer", inner_size=4)
    assert scorer.inner_size == 4 and model.config.dtb_scorer_inner_size == 4
    assert torch.equal(scorer.inner[0].down.weight, torch.zeros(1, 4))
    widen_relevance_scorer(model, 4)  # the width it has: nothing changes
    with pytest.raises(ValueError, match="already has a hidden layer of 4 units; cannot make it 6"):
        widen_relevance_scorer(model, 6)
    with pytest.raises(ValueError, match="inner_size .* must be an int >= 0, got -1"):
        RelevanceScorer(3, 32, -1)
    with pytest.raises(ValueError, match="no relevance scorer to widen"):
        widen_relevance_scorer(dtb_ext.patch(_model()), 4)
    with pytest.raises(ValueError, match="relevance_inner_size .* must be an int >= 0, got 2.5"):
        RelevanceSettings(inner_size=2.5)


def test_lengthdrop_widens_a_loaded_linear_scorer(tmp_path):
    model = _scored_model("scorer")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", seed=5, use_cpu=True)
    LengthDropTrainer(model=model, args=args, length_drop=LengthDropSettings(num_sandwich=1),
                      relevance=RelevanceSettings("scorer", only=True, inner_size=8))
    scorer = dynamic_encoder(model).relevance
    assert scorer.inner_size == 8
    assert all(parameter.requires_grad for parameter in scorer.inner.parameters())


def test_lengthdrop_trains_the_scorer_by_ranking_distillation(tmp_path):
    model = dtb_ext.patch(_model())
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", seed=5, use_cpu=True)
    trainer = LengthDropTrainer(model=model, args=args, length_drop=LengthDropSettings(num_sandwich=1),
                                relevance=RelevanceSettings("attention+scorer", weight=0.5))
    scorer = dynamic_encoder(model).relevance
    assert scorer is not None and model.config.dtb_significance == "attention+scorer"
    batch = {**_batch(), "start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])}
    model.train()
    loss = trainer.compute_loss(model, batch)
    (_, _, sandwich), = trainer.sampled
    # the loss is the LengthDrop loss plus 0.5 x the scorer's loss over the full model's and the sub-models' layers
    features = {name: value for name, value in batch.items() if "positions" not in name}
    with torch.no_grad(), record_scorer_logits(dynamic_encoder(model)) as records:
        full = model(**batch)
        from dtb_ext.train.lengthdrop import inplace_distillation_loss

        expected = full.loss + sum(inplace_distillation_loss(model, features, full, sub) for sub in sandwich)
    assert len(records) == 3 * (1 + len(sandwich))
    mask = batch["attention_mask"].bool()
    targets = relevance_targets(
        full.start_logits, full.end_logits, mask, (batch["token_type_ids"] == 0) & mask, 2.0, 0.5
    )
    expected = expected + 0.5 * scorer_distillation_loss(records, targets)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in scorer.parameters())


def test_relevance_settings_are_checked():
    with pytest.raises(ValueError, match="'scorer' or 'attention\\+scorer'"):
        RelevanceSettings("attention")
    with pytest.raises(ValueError, match="relevance_question_share"):
        RelevanceSettings(question_share=1.0)
    with pytest.raises(ValueError, match="relevance_weight"):
        RelevanceSettings(weight=0)


TRAIN = os.path.join(SHARED_SQUAD_DIR, "train-subset-v1.1.json")
needs_data = pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_qa import save_tiny_qa_model

    return save_tiny_qa_model(str(tmp_path_factory.mktemp("tiny")))


def _options(output, model_dir, **overrides):
    from dtb_ext.train.options import TrainOptions

    settings = dict(output=str(output), model=model_dir, limit=8, batch_size=4, save_steps=2, save_total_limit=10,
                    logging_steps=1, skip_eval=True, progress=False, length_drop=True, max_steps=3,
                    precision="bf16", relevance_scorer="attention+scorer")
    settings.update(overrides)
    return TrainOptions(**settings)


@needs_data
def test_bf16_training_with_the_scorer_resumes_exactly_and_exports_it(tmp_path, model_dir):
    import shutil

    from dtb_ext.train.run import build_trainer, run_training

    straight = build_trainer(_options(tmp_path / "straight", model_dir))
    assert straight.args.bf16
    straight.train()
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    shutil.copytree(
        tmp_path / "straight" / "checkpoints" / "checkpoint-2", tmp_path / "resumed" / "checkpoints" / "checkpoint-2"
    )
    resumed = build_trainer(_options(tmp_path / "resumed", model_dir, resume=True))
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoints" / "checkpoint-2"))
    assert resumed.sampled == straight.sampled[2:]
    for (name, expected), got in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert expected.dtype == torch.float32, name  # master weights stay float32 under autocast
        assert torch.equal(expected, got), name
    logged = [entry for entry in straight.state.log_history if "loss" in entry]
    assert {"full_loss", "sub_loss", "relevance_loss"} <= set(logged[0])
    metrics = run_training(_options(tmp_path / "export", model_dir))
    exported = dtb_ext.patch(AutoModelForQuestionAnswering.from_pretrained(metrics["model_dir"]))
    assert dynamic_encoder(exported).relevance is not None
    assert exported.config.dtb_significance == "attention+scorer"


@needs_data
def test_relevance_scorer_needs_length_drop(tmp_path, model_dir):
    from dtb_ext.train.run import build_trainer

    with pytest.raises(ValueError, match="--relevance-scorer apply only with --length-drop"):
        build_trainer(_options(tmp_path / "x", model_dir, length_drop=False))


@needs_data
def test_plain_fine_tuning_from_a_scorer_model_keeps_the_scorer_in_the_export(tmp_path, model_dir):
    """--init-from a model that selects by its scorer, without --length-drop: the export still holds the scorer
    (unchanged: full-length training never calls it), so it loads and selects as before."""
    from safetensors.torch import load_file

    from dtb_ext.train.run import run_training

    with_scorer = run_training(_options(tmp_path / "scorer", model_dir, max_steps=1))["model_dir"]
    plain = run_training(_options(tmp_path / "plain", None, init_from=with_scorer, length_drop=False,
                                  relevance_scorer=None, precision="fp32", max_steps=2))["model_dir"]
    before, after = (load_file(os.path.join(d, "model.safetensors")) for d in (with_scorer, plain))
    scorer_before, scorer_after = (load_file(os.path.join(d, SCORER_FILE)) for d in (with_scorer, plain))
    assert scorer_before and all(torch.equal(scorer_before[key], scorer_after[key]) for key in scorer_before)
    assert not any(".encoder.relevance." in key for key in after)  # the export keeps it in its own file
    assert any(not torch.equal(before[key], after[key]) for key in before if key.endswith("qa_outputs.weight"))
    exported = dtb_ext.patch(AutoModelForQuestionAnswering.from_pretrained(plain))
    assert dynamic_encoder(exported).relevance is not None
    assert exported.config.dtb_significance == "attention+scorer"


def test_relevance_only_trains_the_scorer_alone(tmp_path):
    model = dtb_ext.patch(_model())
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", seed=5, use_cpu=True)
    trainer = LengthDropTrainer(model=model, args=args, length_drop=LengthDropSettings(num_sandwich=1),
                                relevance=RelevanceSettings("scorer", only=True))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {f"bert.encoder.relevance.layers.{i}.{name}" for i in range(3) for name in ("weight", "bias")}
    batch = {**_batch(), "start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])}
    model.train()
    trainer.compute_loss(model, batch).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before if "relevance" not in name)
    assert any(not torch.equal(before[name], after[name]) for name in before if "relevance" in name)


@needs_data
def test_relevance_only_needs_a_scorer(tmp_path, model_dir):
    from dtb_ext.train.run import build_trainer

    with pytest.raises(ValueError, match="--relevance-only trains the relevance scorer"):
        build_trainer(_options(tmp_path / "x", model_dir, relevance_scorer=None, relevance_only=True))


@needs_data
def test_train_refuses_a_precision_it_cannot_train_in(tmp_path, model_dir):
    from dtb_ext.train.run import build_trainer

    with pytest.raises(ValueError, match="runs in fp32, bf16 \\(autocast\\), int8 \\(quantization-aware\\) "
                                         "or auto, got --precision 'fp16'"):
        build_trainer(_options(tmp_path / "x", model_dir, precision="fp16"))
