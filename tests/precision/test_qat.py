"""Quantization-aware training (dtb_ext/precision/qat.py): the training-time rounding is the int8 format's own,
gradients pass it, the layers keep their keys, and `dtb train --precision int8` trains, exports and scores int8."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import dtb_ext
from dtb_ext import reference
from dtb_ext.qa.data import default_squad_file
from dtb_ext.precision.int8 import Int8Linear, encoder_linears, quantize_int8
from dtb_ext.precision.qat import (
    FakeQuantizedLinear,
    disable_fake_quantization,
    enable_fake_quantization,
    fake_quantize_rows,
    is_fake_quantized,
)
from tiny_qa import tiny_qa_model


def test_fake_quantize_rows_gives_the_dequantized_int8_grid_of_quantize_rows():
    x = torch.randn(7, 33, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 30, 7)[:, None]
    quantized, scale = reference.quantize_rows(x)
    expected = (quantized.float() - reference.INT8_ZERO_POINT) * scale[:, None]
    assert torch.equal(fake_quantize_rows(x), expected)
    assert not torch.equal(fake_quantize_rows(x), x)  # it really rounds


def test_fake_quantize_rows_keeps_the_dtype_and_passes_gradients_straight_through():
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16, requires_grad=True)
    out = fake_quantize_rows(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    weights = torch.randn(2, 5, 16)
    (out.float() * weights).sum().backward()
    torch.testing.assert_close(x.grad.float(), weights.to(torch.bfloat16).float())


def test_a_zero_row_stays_zero():
    x = torch.zeros(2, 8)
    x[1] = torch.arange(8.0)
    out = fake_quantize_rows(x)
    assert torch.equal(out[0], torch.zeros(8)) and not out.isnan().any()


def test_fake_quantized_linear_computes_what_the_int8_layer_computes():
    torch.manual_seed(0)
    linear = nn.Linear(48, 20)
    expected_layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 11, 48)
    linear.__class__ = FakeQuantizedLinear
    with torch.no_grad():
        torch.testing.assert_close(linear(x), expected_layer(x), rtol=1e-5, atol=1e-5)


def test_enable_switches_every_encoder_linear_and_keeps_the_state_dict():
    model = dtb_ext.patch(tiny_qa_model(100, num_hidden_layers=3))
    keys = set(model.state_dict())
    names = enable_fake_quantization(model)
    assert names == [name for name, _ in encoder_linears(model)] and len(names) == 3 * 6
    assert set(model.state_dict()) == keys and is_fake_quantized(model)
    assert type(model.qa_outputs) is nn.Linear  # the head stays float, as quantize_int8 leaves it
    disable_fake_quantization(model)
    assert not is_fake_quantized(model)
    assert all(type(linear) is nn.Linear for _, linear in encoder_linears(model))


def test_the_fake_quantized_model_predicts_what_its_int8_model_predicts():
    """At inference the training-time model and the int8 model it exports agree to float32 summation order,
    also when tokens are dropped; the float model differs from both."""
    model = dtb_ext.patch(tiny_qa_model(200, seed=3, initializer_range=0.2))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (2, 24), generator=generator)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, 17:] = 0
    int8_model = quantize_int8(model)
    with torch.no_grad():
        float_logits = model(input_ids=ids, attention_mask=mask).start_logits
        enable_fake_quantization(model)
        for config in (None, dtb_ext.LengthConfig.ratios([0.7, 0.5])):
            with dtb_ext.length_config(model, config), dtb_ext.length_config(int8_model, config):
                trained = model(input_ids=ids, attention_mask=mask).start_logits
                exported = int8_model(input_ids=ids, attention_mask=mask).start_logits
            torch.testing.assert_close(trained, exported, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(float_logits, exported, atol=1e-4)


def test_training_steps_move_the_float_weights():
    model = tiny_qa_model(100, seed=4)
    enable_fake_quantization(model)
    model.train()
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    before = weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(5, 100, (2, 12))
    output = model(input_ids=ids, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    output.loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(weight.detach(), before)


def test_enable_refuses_a_model_without_encoder_linears():
    with pytest.raises(ValueError, match="no encoder Linear layers"):
        enable_fake_quantization(nn.Sequential(nn.Linear(3, 3)))


TRAIN = default_squad_file("train-subset-v1.1.json")


@pytest.mark.skipif(not os.path.isfile(TRAIN), reason="shared SQuAD data not found at ../shared/data/squad")
def test_dtb_train_int8_trains_on_the_grid_exports_plain_linears_and_scores_int8(tmp_path, capsys):
    from safetensors.torch import load_file

    from dtb_ext.cli import main
    from tiny_qa import save_tiny_qa_model

    model_dir = save_tiny_qa_model(str(tmp_path / "base"))
    out = tmp_path / "run"
    assert main(["train", "--output", str(out), "--model", model_dir, "--limit", "8", "--batch-size", "4",
                 "--max-steps", "2", "--save-steps", "1", "--eval-limit", "3", "--precision", "int8",
                 "--length-drop", "--num-sandwich", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["precision"] == "int8"
    assert set(load_file(str(out / "model" / "model.safetensors"))) == set(
        load_file(os.path.join(model_dir, "model.safetensors"))
    )
    assert json.loads((out / "model" / "dtb_train.json").read_text())["options"]["precision"] == "int8"
