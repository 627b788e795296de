"""INT8 inference for a (patched or plain) BERT-family model: int8 Linear layers, everything else in float.

Each quantized Linear holds int8 weights with one scale per output channel and quantizes its input at each call
with one scale per token (row), symmetric, then multiplies with `torch._int_mm` (int32 accumulation, VNNI/AMX
through oneDNN on x86). Per-token scales keep every token's result independent of the other tokens of the
batch, so batch invariance (DESIGN.md §2.5) holds exactly, unlike torch's dynamic quantization, whose single
activation scale spans the whole batch.

Two optional refinements, measured in `dtb_ext/precision/study.py`:
- `keep_float`: Linear layers left in float (the ones whose quantization costs the most F1);
- `smoothing`: SmoothQuant-style per-input-channel factors s (from `calibrate_smoothing`): the layer computes
  (x / s) @ (W * s)^T, which moves activation outliers into the weights, where per-channel scales absorb them.

Embeddings, LayerNorm, attention scores/softmax and the dynamic encoder's token selection stay in float, so a
patched model keeps dropping tokens.
"""
from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

# int8 symmetric range: -127..127 (not -128), so that negation cannot overflow and zero maps to zero.
_QMAX = 127.0
# A row (token) or output channel that is all zeros gets this scale instead of 0, so quantizing it divides by a
# positive number; its values quantize to 0 either way.
_MIN_SCALE = 1e-12


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 quantization: [M, K] float -> ([M, K] int8, [M, 1] float32 scales).

    x ~= q * scale row by row, |q| <= 127.
    """
    scale = x.abs().amax(dim=1, keepdim=True).float().div_(_QMAX).clamp_(min=_MIN_SCALE)
    # x / scale lies in [-127, 127] by construction of scale, so no clamp is needed before the cast.
    return torch.round_(x.float() / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 weights (per output channel scales) and int8 activations (per token scales).

    Buffers: weight_int8 [N, K] int8, weight_scale [N] float32, bias [N] float32 or None, input_divisor [K]
    float32 or None (SmoothQuant factors, already multiplied into the weight).
    """

    def __init__(self, weight_int8: Tensor, weight_scale: Tensor, bias: Tensor | None,
                 input_divisor: Tensor | None) -> None:
        super().__init__()
        self.in_features = weight_int8.shape[1]
        self.out_features = weight_int8.shape[0]
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.register_buffer("input_divisor", input_divisor)

    @classmethod
    def from_linear(cls, linear: nn.Linear, smoothing: Tensor | None = None) -> Int8Linear:
        """Quantize `linear`'s weight per output channel; `smoothing` [K] (positive) is multiplied into it and
        divided out of the input at each call."""
        weight = linear.weight.detach().float()
        if smoothing is not None:
            if smoothing.shape != (weight.shape[1],) or not bool((smoothing > 0).all()):
                raise ValueError(f"smoothing must be {weight.shape[1]} positive factors, got shape "
                                 f"{tuple(smoothing.shape)}")
            smoothing = smoothing.detach().float().to(weight.device)
            weight = weight * smoothing
        weight_int8, weight_scale = quantize_rows(weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(weight_int8, weight_scale.squeeze(1), bias, smoothing)

    def forward(self, x: Tensor) -> Tensor:
        """[..., K] float32 or bfloat16 -> [..., N] in the dtype of x."""
        rows = x.reshape(-1, self.in_features)
        if self.input_divisor is not None:
            rows = rows / self.input_divisor
        quantized, scale = quantize_rows(rows)
        # The int32 result is widened once; the scales and bias are then applied in place (fresh large buffers
        # cost page faults on CPU).
        out = torch._int_mm(quantized, self.weight_int8.t()).float()
        out.mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smoothed={self.input_divisor is not None}")


def encoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, module) of every nn.Linear inside the model's encoder layers (`encoder.layer.N.*`), in
    model order.

    The QA/classification head, the pooler and a relevance scorer are not included: they are tiny, and their
    outputs are the scores themselves.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".encoder.layer." in f".{name}":
            yield name, module


def quantize_int8(model: nn.Module, keep_float: Iterable[str] = (),
                  smoothing: dict[str, Tensor] | None = None) -> nn.Module:
    """A copy of the float32 `model` whose encoder Linear layers are `Int8Linear` (the model is left unchanged).

    Args:
        model: a float32 Hugging Face BERT-family model, patched or not.
        keep_float: fnmatch patterns of qualified module names left in float (e.g.
            "bert.encoder.layer.5.output.dense"); every pattern must match some encoder Linear.
        smoothing: {qualified name: [K] factors} from `calibrate_smoothing`, for the layers to smooth.
    """
    first = next(model.parameters())
    if first.dtype != torch.float32:
        raise ValueError(f"quantize_int8 expects a float32 model; got {first.dtype}")
    if first.device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only (its int8 matmul is torch._int_mm on CPU); got a model on "
                         f"{first.device}")
    names = [name for name, _ in encoder_linears(model)]
    patterns = list(keep_float)
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(names, pattern)]
    if unmatched:
        raise ValueError(f"keep_float patterns {unmatched} match no encoder Linear (names look like {names[0]!r})")
    smoothing = dict(smoothing or {})
    unknown = sorted(set(smoothing) - set(names))
    if unknown:
        raise ValueError(f"smoothing names {unknown} are not encoder Linear layers")
    quantized = copy.deepcopy(model).eval()
    for name, linear in list(encoder_linears(quantized)):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            continue
        parent_name, _, attribute = name.rpartition(".")
        setattr(quantized.get_submodule(parent_name), attribute, Int8Linear.from_linear(linear, smoothing.get(name)))
    return quantized


@torch.inference_mode()
def input_channel_ranges(model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, Tensor]:
    """{qualified name: [K] max |input| per input channel} of every encoder Linear over the calibration batches
    (model inputs as `features.batches` yields them). Padding rows are zeros or copies of real-token values
    after the dynamic encoder's gather, and the HF model computes them too; they are included (they can only
    raise a maximum slightly, never lower it)."""
    ranges: dict[str, Tensor] = {}
    handles = []

    def observer(name: str):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            current = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(dim=0).float()
            ranges[name] = current if name not in ranges else torch.maximum(ranges[name], current)
        return hook

    for name, linear in encoder_linears(model):
        handles.append(linear.register_forward_pre_hook(observer(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for inputs in batches:
            model(**{key: value.to(device) for key, value in inputs.items()})
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ranges


def smoothing_factors(model: nn.Module, ranges: dict[str, Tensor], alpha: float = 0.5) -> dict[str, Tensor]:
    """SmoothQuant factors s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) per input channel j of each layer in
    `ranges` (from `input_channel_ranges`); alpha in [0, 1] sets how much of the outliers moves to the weights."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    modules = dict(encoder_linears(model))
    factors = {}
    for name, activation_range in ranges.items():
        weight_range = modules[name].weight.detach().abs().amax(dim=0).float()
        factor = activation_range.clamp(min=_MIN_SCALE).pow(alpha) / weight_range.clamp(min=_MIN_SCALE).pow(1 - alpha)
        factors[name] = factor.clamp(min=_MIN_SCALE)
    return factors
