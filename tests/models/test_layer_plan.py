"""Layer plans (dtb_ext/models/layer_plan.py): where they apply they run, and give the generic path's outputs bit
for bit (int8 and bf16; full length, padded batches, length configs with the relevance scorer); whenever what a plan
was made from changes (weights updated or replaced, a hook, training mode) the encoder follows the change."""
from __future__ import annotations

import pytest
import torch

import dtb_ext
from dtb_ext import ops
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.models import layer_plan
from dtb_ext.models.layer_plan import Bf16LayerPlan, Int8LayerPlan
from dtb_ext.precision import prepare_for_precision
from tiny_qa import padded_qa_batch

VOCAB = 300
HEAD_SIZE = 32  # a multiple of 16: the bf16 attention kernel's AVX512-BF16 path, which plans require

pytestmark = pytest.mark.skipif(
    not ops.native_bf16_attention_applies(torch.bfloat16, "cpu", HEAD_SIZE),
    reason="plans apply where the bf16 attention kernel takes its AVX512-BF16 path; this CPU or build has none",
)

PLAN_CLASS = {"int8": Int8LayerPlan, "bf16": Bf16LayerPlan}
CONFIGS = {
    "full": None,
    "ratios": LengthConfig.ratios([1.0, 0.7, 0.4]),
    "absolute": LengthConfig.absolute([9, 6, 4]),
    "mixed": MixedLengthConfig([LengthConfig.ratios([0.8, 0.5, 0.5]), None, LengthConfig.ratios([1.0, 1.0, 0.3])]),
}


def _model(precision: str, significance: str | None = "scorer", seed: int = 0) -> torch.nn.Module:
    """A 3-layer patched BERT QA model (heads of HEAD_SIZE) at `precision`, with a relevance scorer for
    `significance` (None: no scorer, the attention ranks the tokens); weights drawn under `seed`."""
    torch.manual_seed(seed)
    config = dict(vocab_size=VOCAB, hidden_size=2 * HEAD_SIZE, num_hidden_layers=3, num_attention_heads=2,
                  intermediate_size=128, max_position_embeddings=64)
    from transformers import BertConfig, BertForQuestionAnswering

    model = dtb_ext.patch(BertForQuestionAnswering(BertConfig(**config)).eval())
    if significance is not None:
        dtb_ext.add_relevance_scorer(model, significance)
    return prepare_for_precision(model, precision)


def _run(model: torch.nn.Module, inputs: dict[str, torch.Tensor], config) -> tuple[torch.Tensor, torch.Tensor]:
    dtb_ext.set_length_config(model, config)
    with torch.inference_mode():
        output = model(**inputs)
    return output.start_logits, output.end_logits


def _plans(model: torch.nn.Module) -> dict:
    return model.bert.encoder._plans._plans


@pytest.fixture
def generic():
    """Runs a model on the generic path only (`layer_plan.generic_path`); returns the runner."""
    def run(model, inputs, config):
        with layer_plan.generic_path():
            return _run(model, inputs, config)
    return run


@pytest.mark.parametrize("precision", ["int8", "bf16"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("lengths", [[12], [12, 7, 10]], ids=["single", "padded"])
def test_a_plan_runs_and_equals_the_generic_path_bit_for_bit(precision, config, lengths, generic):
    if config == "mixed" and len(lengths) == 1:
        pytest.skip("a mixed config has one entry per example")
    model = _model(precision)
    inputs = padded_qa_batch(lengths, VOCAB)
    planned = _run(model, inputs, CONFIGS[config])
    assert sorted(_plans(model)) == [0, 1, 2]
    assert all(type(plan) is PLAN_CLASS[precision] for plan, _ in _plans(model).values())
    plans = dict(_plans(model))
    expected = generic(model, inputs, CONFIGS[config])
    assert _plans(model) == plans  # kept, not used
    for got, want in zip(planned, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_each_example_of_a_planned_batch_equals_itself_alone(precision):
    model, lengths = _model(precision), [12, 7, 10]
    inputs = padded_qa_batch(lengths, VOCAB)
    batched = _run(model, inputs, CONFIGS["ratios"])
    for row, length in enumerate(lengths):
        alone = _run(model, {name: tensor[row:row + 1, :length] for name, tensor in inputs.items()},
                     CONFIGS["ratios"])
        for got, want in zip(batched, alone):
            torch.testing.assert_close(got[row, :length], want[0], atol=0.0, rtol=0.0)


@pytest.mark.parametrize("significance", [None, "attention+scorer"])
def test_the_attention_significance_path_keeps_the_generic_attention_block(significance, generic):
    """With attention significance the dropping layers need the attention each token receives, which only the
    generic block computes; the plan still runs their feed-forward and the layers that drop nothing."""
    model = _model("int8", significance)
    inputs = padded_qa_batch([12, 7], VOCAB)
    planned = _run(model, inputs, CONFIGS["ratios"])
    assert _plans(model)
    for got, want in zip(planned, generic(model, inputs, CONFIGS["ratios"])):
        assert torch.equal(got, want)


def test_no_plan_in_fp32_under_autograd_or_with_the_reference_ops():
    inputs = padded_qa_batch([12], VOCAB)
    fp32 = _model("fp32")
    _run(fp32, inputs, None)
    assert _plans(fp32) == {}
    model = _model("int8")
    model(**inputs)
    assert _plans(model) == {}
    with ops.reference_ops():
        _run(model, inputs, None)
    assert _plans(model) == {}


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_in_place_weight_updates_and_replaced_modules_are_followed(precision, generic):
    model, other = _model(precision), _model(precision, seed=1)
    inputs = padded_qa_batch([12, 7], VOCAB)
    before = _run(model, inputs, None)
    layer = model.bert.encoder.layer[1]
    with torch.no_grad():
        # The weight itself, whose packed copy the plan calls the matmul with.
        (layer.output.dense.weight_int8 if precision == "int8" else layer.output.dense.weight).neg_()
    updated = _run(model, inputs, None)
    layer.intermediate = other.bert.encoder.layer[1].intermediate
    replaced = _run(model, inputs, None)
    assert not torch.equal(updated[0], before[0]) and not torch.equal(replaced[0], updated[0])
    expected_replaced = generic(model, inputs, None)
    layer.intermediate = _model(precision).bert.encoder.layer[1].intermediate
    expected_updated = generic(model, inputs, None)
    for got, want in zip(updated + replaced, expected_updated + expected_replaced):
        assert torch.equal(got, want)


def test_a_hook_or_training_mode_on_a_block_gives_way_to_the_generic_path():
    model = _model("int8")
    inputs = padded_qa_batch([12], VOCAB)
    _run(model, inputs, None)
    calls = []
    handle = model.bert.encoder.layer[2].output.register_forward_hook(lambda *args: calls.append(1))
    _run(model, inputs, None)
    handle.remove()
    assert calls == [1]
    assert 2 not in _plans(model)
    _run(model, inputs, None)
    assert 2 in _plans(model)
    model.bert.encoder.layer[0].attention.output.dropout.train()
    _run(model, inputs, None)
    assert 0 not in _plans(model)


def test_copies_start_without_plans():
    import copy
    import pickle

    model = _model("int8")
    inputs = padded_qa_batch([12], VOCAB)
    expected = _run(model, inputs, None)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert _plans(clone) == {}
        for got, want in zip(_run(clone, inputs, None), expected):
            assert torch.equal(got, want)
