"""Quantization-aware training for the int8 format of `dtb_ext.precision.int8` (Intel's QuaLA-MiniLM recipe:
LengthDrop training with the int8 rounding in the forward pass).

While training, every encoder Linear computes linear(fq(x), fq(W), b), where fq rounds to the very grid its
`Int8Linear` will use at inference: the weight per output channel and the input per token (row), both symmetric,
scale = max |v| / 127 (`reference.quantize_rows`). Gradients pass the rounding unchanged (straight-through
estimator), so the float weights learn to sit well on that grid. The module stays an `nn.Linear` with the same
parameters (its class is switched to `FakeQuantizedLinear`), so checkpoints and the exported model keep the plain
Hugging Face state-dict keys, and `prepare_for_precision(model, "int8")` quantizes the trained weights exactly as
training saw them (up to float32 summation order).
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from dtb_ext import reference
from dtb_ext.precision.int8 import encoder_linears


def fake_quantize_rows(x: Tensor) -> Tensor:
    """Round each row of x ([..., K]) to its symmetric int8 grid and back, in float32, returned in x's dtype;
    the gradient passes through unchanged (straight-through estimator).

    The values are those of `reference.quantize_rows` dequantized: (q - 128) * scale with scale = max(max |row| /
    127, reference.INT8_MIN_SCALE) and round-half-to-even."""
    values = x.float()
    scale = values.detach().abs().amax(dim=-1, keepdim=True).div_(reference.INT8_MAX)
    scale.clamp_(min=reference.INT8_MIN_SCALE)
    rounded = torch.round(values.detach() / scale) * scale
    return (values + (rounded - values.detach())).to(x.dtype)


class FakeQuantizedLinear(nn.Linear):
    """An `nn.Linear` that trains on the int8 grid: linear(fake_quantize_rows(x), fake_quantize_rows(W), b).

    [..., K] -> [..., N]. Not constructed directly: `enable_fake_quantization` switches the class of existing
    layers (parameters and state-dict keys unchanged) and `disable_fake_quantization` switches it back.
    Under autocast the product runs in the autocast dtype, as the float Linear's would."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(fake_quantize_rows(x), fake_quantize_rows(self.weight), self.bias)


def enable_fake_quantization(model: nn.Module) -> list[str]:
    """Make every encoder Linear of `model` (the layers `quantize_int8` converts) a `FakeQuantizedLinear`, in
    place; returns their qualified names. ValueError when the model has none (not a BERT-family encoder)."""
    names = []
    for name, linear in encoder_linears(model):
        if type(linear) not in (nn.Linear, FakeQuantizedLinear):
            raise ValueError(
                f"fake quantization applies to plain nn.Linear layers; {name} is a {type(linear).__name__}"
            )
        linear.__class__ = FakeQuantizedLinear
        names.append(name)
    if not names:
        raise ValueError("the model has no encoder Linear layers (named *.encoder.layer.N.*) to train for int8")
    return names


def disable_fake_quantization(model: nn.Module) -> nn.Module:
    """Switch every `FakeQuantizedLinear` of `model` back to `nn.Linear`, in place; returns `model`."""
    for module in model.modules():
        if type(module) is FakeQuantizedLinear:
            module.__class__ = nn.Linear
    return model


def is_fake_quantized(model: nn.Module) -> bool:
    """Whether some layer of `model` trains on the int8 grid."""
    return any(type(module) is FakeQuantizedLinear for module in model.modules())


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` on the CPU whose layers trained on the int8 grid are plain `nn.Linear`s again (what is
    exported, and what `prepare_for_precision(..., "int8")` quantizes); `model` itself is left as it is."""
    return disable_fake_quantization(copy.deepcopy(model).to("cpu"))
