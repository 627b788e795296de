"""dtb_ext.precision: choosing a precision, preparing a model for it, and the int8 Linear layers."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext
    from dtb_ext import precision
    from dtb_ext.precision.int8 import (
        Int8Linear,
        encoder_linears,
        input_channel_ranges,
        quantize_int8,
        quantize_weight,
        smoothing_factors,
    )

from tiny_qa import tiny_qa_model

# --- resolve_precision -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fp32", "bf16", "int8"])
def test_concrete_precisions_resolve_to_themselves(name, capsys):
    assert precision.resolve_precision(name) == name
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16", "avx2"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                                 ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_is_bf16_where_the_cpu_has_bf16_instructions_and_says_so(monkeypatch, capsys, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_precision("auto", "cpu") == expected
    assert f"precision auto -> {expected}" in capsys.readouterr().err


def test_auto_on_a_gpu_asks_the_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Test GPU")
    assert precision.resolve_precision("auto", "cuda") == "bf16"
    assert "Test GPU" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "device", "message"), [
    ("fp16", "cpu", "precision must be one of fp32, bf16, int8, auto; got 'fp16'"),
    ("int8", "cuda", "int8 runs on the CPU only"),
])
def test_bad_precisions_are_refused_with_the_choices(name, device, message):
    with pytest.raises(ValueError, match=message):
        precision.resolve_precision(name, device)


# --- prepare_for_precision -------------------------------------------------------------------------------------


def test_prepare_converts_fp32_and_bf16_in_place():
    model = tiny_qa_model(100)
    assert precision.prepare_for_precision(model, "bf16") is model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert precision.prepare_for_precision(model, "fp32") is model
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_prepare_int8_quantizes_a_copy_of_the_encoder_linears_and_keeps_the_patch():
    model = dtb_ext.patch(tiny_qa_model(100))
    quantized = precision.prepare_for_precision(model, "int8")
    assert quantized is not model and dtb_ext.is_patched(quantized)
    names = [name for name, _ in encoder_linears(model)]
    assert len(names) == 2 * 6  # two layers: query, key, value, attention output, intermediate, output
    assert all(isinstance(quantized.get_submodule(name), Int8Linear) for name in names)
    assert isinstance(quantized.qa_outputs, nn.Linear)
    assert all(isinstance(model.get_submodule(name), nn.Linear) for name in names)


@pytest.mark.parametrize("native_bf16, float_dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_prepare_int8_runs_the_float_part_in_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16, float_dtype):
    monkeypatch.setattr(precision, "_native_bf16", lambda device_type: (native_bf16, "stubbed for the test"))
    quantized = precision.prepare_for_precision(dtb_ext.patch(tiny_qa_model(100)), "int8")
    assert {p.dtype for p in quantized.parameters()} == {float_dtype}
    int8_layers = [module for module in quantized.modules() if isinstance(module, Int8Linear)]
    assert {layer.weight_scale.dtype for layer in int8_layers} == {torch.float32}
    assert {layer.bias.dtype for layer in int8_layers} == {torch.float32}
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert quantized(input_ids=ids).start_logits.dtype == float_dtype


@pytest.mark.parametrize("name", ["auto", "fp64"])
def test_prepare_needs_a_concrete_precision(name):
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        precision.prepare_for_precision(tiny_qa_model(100), name)


def test_exports_from_the_package():
    assert dtb_ext.resolve_precision is precision.resolve_precision
    assert dtb_ext.prepare_for_precision is precision.prepare_for_precision


# --- Int8Linear ------------------------------------------------------------------------------------------------


def test_quantize_weight_is_symmetric_per_output_channel_and_zero_safe():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [254.0, 127.0, -1.0]])
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (3,)
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0] and q[2].tolist() == [127, 64, 0]
    torch.testing.assert_close(scale, torch.tensor([2.0 / 127, 1e-12, 2.0]))


def test_int8_linear_is_exact_on_values_the_grid_holds():
    """Weights and inputs that are multiples of their per-row scale quantize without error: the int8 layer then
    equals the float layer up to float rounding of the scales."""
    weight = torch.randint(-127, 128, (5, 8)).float() * 0.01
    weight[:, 0] = 1.27  # every row's largest magnitude: scale 0.01
    x = torch.randint(-127, 128, (3, 8)).float() * 0.5
    x[:, 1] = 63.5  # every row's largest magnitude: scale 0.5
    linear = nn.Linear(8, 5)
    with torch.no_grad():
        linear.weight.copy_(weight)
    torch.testing.assert_close(Int8Linear.from_linear(linear)(x), linear(x), rtol=1e-5, atol=1e-4)


def test_int8_linear_error_is_that_of_8_bit_grids():
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(2, 10, 64, generator=generator)
    out = Int8Linear.from_linear(linear)(x)
    expected = linear(x)
    assert out.shape == (2, 10, 32)
    relative = (out - expected).abs().max() / expected.abs().max()
    assert 0 < relative < 0.02


def test_int8_linear_rows_do_not_depend_on_the_other_rows():
    """Per-token activation scales: a token's output is bit-identical alone and inside any batch."""
    generator = torch.Generator().manual_seed(1)
    layer = Int8Linear.from_linear(nn.Linear(48, 16))
    x = torch.randn(7, 48, generator=generator)
    x[3] *= 100  # an outlier token would change a per-tensor scale for every row
    together = layer(x)
    for row in range(7):
        assert torch.equal(layer(x[row:row + 1])[0], together[row])


def test_int8_linear_keeps_bf16_inputs_bf16():
    layer = Int8Linear.from_linear(nn.Linear(16, 4))
    assert layer(torch.randn(3, 16).to(torch.bfloat16)).dtype == torch.bfloat16


def test_smoothing_moves_outliers_into_the_weights_and_keeps_the_function():
    generator = torch.Generator().manual_seed(2)
    linear = nn.Linear(32, 8)
    x = torch.randn(20, 32, generator=generator)
    x[:, 5] *= 60  # one outlier channel, as in BERT's feed-forward activations
    factors = x.abs().amax(dim=0).sqrt() / linear.weight.detach().abs().amax(dim=0).sqrt()
    plain = (Int8Linear.from_linear(linear)(x) - linear(x)).abs().max()
    smoothed = (Int8Linear.from_linear(linear, factors)(x) - linear(x)).abs().max()
    assert smoothed < plain / 2


def test_smoothing_factors_follow_smoothquant():
    model = tiny_qa_model(100)
    name, linear = next(encoder_linears(model))
    ranges = {name: torch.full((32,), 4.0)}
    factors = smoothing_factors(model, ranges, alpha=0.5)
    expected = 2.0 / linear.weight.detach().abs().amax(dim=0).sqrt()
    torch.testing.assert_close(factors[name], expected)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothing_factors(model, ranges, alpha=1.5)


def test_bad_smoothing_and_keep_float_are_named():
    model = tiny_qa_model(100)
    with pytest.raises(ValueError, match="smoothing must be 32 positive factors"):
        Int8Linear.from_linear(nn.Linear(32, 4), torch.zeros(32))
    with pytest.raises(ValueError, match="match no encoder Linear"):
        quantize_int8(model, keep_float=["bert.encoder.layer.9.*"])
    with pytest.raises(ValueError, match="are not encoder Linear layers"):
        quantize_int8(model, smoothing={"qa_outputs": torch.ones(32)})
    with pytest.raises(ValueError, match="expects a float32 model"):
        quantize_int8(tiny_qa_model(100).to(torch.bfloat16))
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        quantize_int8(tiny_qa_model(100).to("meta"))


def test_keep_float_leaves_matching_layers_float():
    quantized = quantize_int8(tiny_qa_model(100), keep_float=["*.layer.1.output.dense"])
    assert isinstance(quantized.bert.encoder.layer[1].output.dense, nn.Linear)
    assert isinstance(quantized.bert.encoder.layer[1].attention.output.dense, Int8Linear)
    assert isinstance(quantized.bert.encoder.layer[0].output.dense, Int8Linear)


def test_input_channel_ranges_observe_every_encoder_linear():
    model = tiny_qa_model(100)
    batches = [{"input_ids": torch.randint(5, 100, (2, 9))}, {"input_ids": torch.randint(5, 100, (1, 4))}]
    ranges = input_channel_ranges(model, batches)
    assert set(ranges) == {name for name, _ in encoder_linears(model)}
    assert ranges["bert.encoder.layer.0.intermediate.dense"].shape == (32,)
    assert ranges["bert.encoder.layer.0.output.dense"].shape == (64,)
    assert not any(module._forward_pre_hooks for module in model.modules())


# --- int8 with token dropping ----------------------------------------------------------------------------------


def test_int8_patched_model_drops_tokens_and_stays_close_to_fp32():
    model = dtb_ext.patch(tiny_qa_model(1000, seed=3))
    quantized = precision.prepare_for_precision(model, "int8")
    ids = torch.randint(5, 1000, (3, 24), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 15:] = 0
    config = dtb_ext.LengthConfig.ratios([0.75, 0.5])
    with torch.inference_mode(), dtb_ext.length_config(model, config), dtb_ext.length_config(quantized, config):
        expected = model(input_ids=ids, attention_mask=mask).start_logits
        actual = quantized(input_ids=ids, attention_mask=mask).start_logits
        alone = quantized(input_ids=ids[1:2, :15], attention_mask=mask[1:2, :15]).start_logits
    assert 0 < (actual - expected).abs().max() < 0.05 * expected.abs().max()
    torch.testing.assert_close(actual[1, :15], alone[0], rtol=1e-4, atol=1e-4)


def _int8_layer(smoothing_for: str | None = None):
    """(int8 tiny model's dynamic encoder, its layer 0, a [2, 11, D] input in the model's float dtype)."""
    from dtb_ext.models.patching import dynamic_encoder

    model = dtb_ext.patch(tiny_qa_model(1000, seed=5)).eval()
    smoothing = None
    if smoothing_for is not None:
        name, linear = next((n, m) for n, m in encoder_linears(model) if n.endswith(smoothing_for))
        smoothing = {name: torch.rand(linear.in_features, generator=torch.Generator().manual_seed(6)) + 0.5}
    encoder = dynamic_encoder(quantize_int8(model, smoothing=smoothing))
    layer = encoder.layer[0]
    hidden = torch.randn(2, 11, layer.output.dense.out_features, generator=torch.Generator().manual_seed(7))
    return encoder, layer, hidden


@pytest.mark.parametrize("smoothed", [None, "0.output.dense"])
def test_int8_feed_forward_fuses_its_epilogues_and_matches_the_two_blocks(monkeypatch, smoothed):
    """The fused int8 feed-forward (GELU output quantized for the output Linear in one epilogue, LayerNorm in the
    output Linear's epilogue) gives the two-block path's output within LayerNorm's float32 rounding."""
    from dtb_ext import ops

    calls = []
    for name in ("int8_linear_quantize", "int8_linear_layer_norm"):
        op = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *args, _op=op, _name=name: calls.append(_name) or _op(*args))
    encoder, layer, hidden = _int8_layer(smoothed)
    with torch.inference_mode():
        fused = encoder._linears.feed_forward(0, layer.intermediate, layer.output, hidden)
        inner = encoder._linears.intermediate((0, "intermediate"), layer.intermediate, hidden)
        dense = layer.output.dense(inner)
        separate = layer.output.LayerNorm(dense + hidden)
    assert calls == ["int8_linear_quantize", "int8_linear_layer_norm"]
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smoothed", [None, "0.intermediate.dense"])
def test_int8_attention_output_hands_its_quantized_rows_to_the_feed_forward(smoothed):
    """An attention-output block that feeds the feed-forward as is quantizes its output for the intermediate
    Linear in its epilogue: the feed-forward then gives, bit for bit, what it gives on a copy of that output
    (which it quantizes itself); a copy, or another consumer, never picks the handed-off rows up."""
    encoder, layer, hidden = _int8_layer(smoothed)
    context = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(8))
    block = layer.attention.output
    with torch.inference_mode():
        out = encoder._linears.output((0, "attention"), block, context, hidden, feeds=layer.intermediate)
        assert encoder._linears._handoff is not None and encoder._linears._handoff[0] is out
        handed = encoder._linears.feed_forward(0, layer.intermediate, layer.output, out)
        assert encoder._linears._handoff is None
        copied = encoder._linears.feed_forward(0, layer.intermediate, layer.output, out.clone())
        plain = encoder._linears.output((0, "attention"), block, context, hidden)
        assert encoder._linears._handoff is None
        expected = block.LayerNorm(block.dense(context) + hidden)
    assert torch.equal(handed, copied) and torch.equal(plain, out)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
