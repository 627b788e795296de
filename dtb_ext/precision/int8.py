"""INT8 inference for a (patched or plain) BERT-family model: int8 Linear layers, everything else in float.

Each quantized Linear holds int8 weights with one scale per output channel and quantizes its input at each call
with one scale per token (row), symmetric. Per-token scales keep every token's result independent of the other
tokens of the batch, so batch invariance (docs/design.md §2.5) holds exactly, unlike torch's dynamic quantization,
whose single activation scale spans the whole batch.

A call is two ops (`int8_linear`): the fused per-row quantize (`ops.quantize_rows`: uint8 with zero point 128), and
`ops.int8_linear`: an int8 matmul on a weight prepacked once (its int32 sums are exact and come back times the
weight scales in float32) and the fused epilogue (`ops.dequantize_rows`: the token scales, the bias, a GELU or a
residual add, rounded once to the activations' dtype), block of rows by block of rows on each thread, so the float32
product never leaves the core's cache. The matmul is the kernels' own on AMX tiles (TDPBUSD;
`ops.int8_amx_pack_weight`) where `ops.int8_amx_usable()` (CPUs with AMX-INT8) and the weight's shape allows (N a
multiple of 16, K of 64), unless DTB_INT8_AMX=0 or `gemm_packing("onednn")`; else oneDNN's
(`torch.ops.onednn.qlinear_prepack`, run through `torch.ops.onednn.qlinear_pointwise`), whose fixed cost per call
(~33 us) the AMX one does not have. Both give the same bits (while the sums stay below 2^24 in magnitude, as they do
by far in practice: tests/ops/test_int8_amx_gemm.py). Where oneDNN's int8 ops are missing, `torch._int_mm` computes
the same int32 sums and the epilogue runs on the whole product. Where an int8 Linear feeds another directly (the
intermediate block's GELU feeds the output Linear), `int8_linear_quantized_for` quantizes the epilogue's rows for
the next layer in the same pass (`ops.int8_linear_quantize`): the same values, bit for bit, without the activations
written and read back.

Two optional refinements, measured in `dtb_ext/experiments/int8_study.py`:
- `keep_float`: Linear layers left in float (the ones whose quantization costs the most F1);
- `smoothing`: SmoothQuant-style per-input-channel factors s (from `calibrate_smoothing`): the layer computes
  (x / s) @ (W * s)^T, which moves activation outliers into the weights, where per-channel scales absorb them.

Embeddings, LayerNorm, attention scores/softmax and the dynamic encoder's token selection stay in float (the
model's float dtype: `prepare_for_precision` picks bf16 where the CPU runs it natively), so a patched model keeps
dropping tokens.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dtb_ext import ops, reference


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8 quantization: [N, K] float -> ([N, K] int8, [N] float32 scales), so that
    weight ~= q * scale[:, None] with |q| <= 127 (the rule of `reference.quantize_rows`, without its zero point)."""
    quantized, scale = reference.quantize_rows(weight.float())
    return (quantized.to(torch.int16) - reference.INT8_ZERO_POINT).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x W^T + b with int8 weights (per output channel scales) and int8 activations (per token scales).

    Buffers: weight_int8 [N, K] int8, weight_scale [N] float32, bias [N] float32 or None, input_divisor [K]
    float32 or None (SmoothQuant factors, already multiplied into the weight). The float buffers stay float32
    when the model is cast to another dtype (they are part of the int8 format); the output has the input's dtype.
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
        self._packed: _PackedInt8Weight | None = None

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
        weight_int8, weight_scale = quantize_weight(weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        return cls(weight_int8, weight_scale, bias, smoothing)

    @classmethod
    def concatenate(cls, layers: Sequence[Int8Linear]) -> Int8Linear:
        """One layer computing all of `layers` on the same input (query, key, value), outputs side by side. Exact:
        the scales are per output channel. The layers must share their input divisor (or have none)."""
        divisor = layers[0].input_divisor
        for layer in layers[1:]:
            if (layer.input_divisor is None) != (divisor is None) or (
                    divisor is not None and not torch.equal(layer.input_divisor, divisor)):
                raise ValueError("Int8Linear.concatenate needs layers with the same input divisor (smoothing factors)")
        if any(layer.bias is None for layer in layers) and any(layer.bias is not None for layer in layers):
            raise ValueError("Int8Linear.concatenate needs layers that all have a bias or all have none")
        bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
        return cls(torch.cat([layer.weight_int8 for layer in layers]),
                   torch.cat([layer.weight_scale for layer in layers]), bias, divisor)

    def forward(self, x: Tensor) -> Tensor:
        """[..., K] float32 or bfloat16 -> [..., N] in the dtype of x."""
        return int8_linear(x, self)

    def packed_weight(self) -> _PackedInt8Weight:
        """The weight in the int8 matmul's layout (AMX tiles or oneDNN: `_PackedInt8Weight`), made once and remade
        when `weight_int8` changes."""
        weight = self.weight_int8
        if self._packed is None or not self._packed.matches(weight):
            self._packed = _PackedInt8Weight(weight)
        return self._packed

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Int8Linear:
        float32_buffers = {name: buffer for name, buffer in self._buffers.items()
                           if buffer is not None and buffer.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, before in float32_buffers.items():
            after = self._buffers[name]
            if after.dtype != torch.float32:  # a dtype cast: keep the float32 values, follow any device move
                self._buffers[name] = before.to(after.device)
        return self

    # A copied or pickled layer starts without the packed weight: oneDNN-packed tensors have no storage to copy, and
    # the copy packs its own weight for the GEMM chosen where it runs (AMX-packed ones are dropped too).
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"smoothed={self.input_divisor is not None}")


# Which GEMM new packed weights are made for: "auto" (AMX where usable, unless DTB_INT8_AMX=0), "amx" (AMX where
# usable, whatever DTB_INT8_AMX says) or "onednn". Set by `gemm_packing()`; a plain module global, as
# ops.reference_ops() keeps its flag.
GEMM_PACKINGS = ("auto", "amx", "onednn")
_gemm_packing = "auto"
AMX_VARIABLE = "DTB_INT8_AMX"


@contextlib.contextmanager
def gemm_packing(choice: str) -> Iterator[None]:
    """Inside the block, int8 layers that pack their weight (the first call after quantization or after a weight
    change; a layer keeps its packed weight afterwards) pack it for `choice`: "amx" (the kernels' GEMM on AMX tiles
    where `ops.int8_amx_usable()` and the shape allows, else oneDNN), "onednn", or "auto" (the default: "amx"
    unless the environment variable DTB_INT8_AMX is "0"). For A/B comparisons of the two GEMMs in one process;
    process-wide, like `ops.reference_ops()`."""
    global _gemm_packing
    if choice not in GEMM_PACKINGS:
        raise ValueError(f"gemm_packing must be one of {', '.join(GEMM_PACKINGS)}; got {choice!r}")
    previous, _gemm_packing = _gemm_packing, choice
    try:
        yield
    finally:
        _gemm_packing = previous


def _packs_for_amx(weight_int8: Tensor) -> bool:
    """Whether a weight packed now goes to the AMX GEMM: the packing choice allows it, the ops can run it here, and
    its shape is one the AMX GEMM takes ([N, K] with N a multiple of 16 and K of 64; others go to oneDNN)."""
    if _gemm_packing == "onednn" or (_gemm_packing == "auto" and os.environ.get(AMX_VARIABLE) == "0"):
        return False
    out_features, in_features = weight_int8.shape
    return (weight_int8.device.type == "cpu" and ops.int8_amx_usable() and out_features > 0 and in_features > 0
            and out_features % reference.AMX_PACK_COLUMNS == 0 and in_features % reference.AMX_PACK_DEPTH == 0)


class _PackedInt8Weight:
    """An [N, K] int8 weight prepacked for the int8 Linear ops: for their GEMM on AMX tiles
    (`ops.int8_amx_pack_weight`, a plain int8 tensor) where `_packs_for_amx`, else for
    `torch.ops.onednn.qlinear_pointwise` (`qlinear_prepack`, a MkldnnCPU tensor; None where that op is missing), with
    the zero points the ops take, and what it was made from."""

    def __init__(self, weight_int8: Tensor) -> None:
        self.source = weight_int8.detach()  # keeps the storage alive, so an equal data_ptr means the same tensor
        self.version = tensor_version(weight_int8)
        if _packs_for_amx(weight_int8):
            self.weight = ops.int8_amx_pack_weight(weight_int8.detach())
        elif _onednn_int8_matmul(weight_int8):
            self.weight = torch.ops.onednn.qlinear_prepack(weight_int8, None)
        else:
            self.weight = None
        self.zero_points = torch.zeros(weight_int8.shape[0], dtype=torch.int64)

    def matches(self, weight_int8: Tensor) -> bool:
        return (weight_int8.data_ptr() == self.source.data_ptr() and tensor_version(weight_int8) == self.version
                and weight_int8.shape == self.source.shape)


def tensor_version(tensor: Tensor) -> int | None:
    """The in-place update counter of `tensor`; None for a tensor made under torch.inference_mode, which has none
    (the concatenated query/key/value layer `PackedLinears` builds at inference: it is remade, never updated, when
    its source layers change)."""
    return None if tensor.is_inference() else tensor._version


def _onednn_int8_matmul(weight_int8: Tensor) -> bool:
    """Whether oneDNN's int8 Linear ops exist in this torch build and apply to a weight on this device."""
    return (weight_int8.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack"))


def int8_linear(x: Tensor, layer: Int8Linear, activation: str = "none", residual: Tensor | None = None) -> Tensor:
    """act(x W^T + b) + residual through `layer`'s int8 weight: [..., K] float32/bfloat16 -> [..., N] in x's dtype.

    Args:
        x: the layer input.
        layer: the int8 weights, scales, bias and input divisor.
        activation: "none", "gelu" (erf) or "gelu_tanh", applied before the residual.
        residual: [..., N] in x's dtype, added last (the output blocks' skip connection), or None.
    """
    quantized, scale = quantize_input(x, layer)
    return int8_linear_of_quantized(quantized, scale, layer, x.shape[:-1], x.dtype, activation, residual)


def int8_linear_of_quantized(quantized: Tensor, scale: Tensor, layer: Int8Linear, leading: Sequence[int],
                             dtype: torch.dtype, activation: str = "none",
                             residual: Tensor | None = None) -> Tensor:
    """`int8_linear` of an input already quantized for `layer` (`ops.quantize_rows` with its input divisor):
    [M, K] uint8, [M] scales -> [*leading, N] in `dtype` (M = prod(leading))."""
    residual_rows = None if residual is None else residual.reshape(-1, layer.out_features)
    packed = layer.packed_weight()
    if packed.weight is not None:
        out = ops.int8_linear(quantized, scale, packed.weight, layer.weight_scale, packed.zero_points, layer.bias,
                              residual_rows, activation, dtype)
    else:
        out = ops.dequantize_rows(_int_mm_product(quantized, layer), scale, layer.bias, residual_rows, activation,
                                  dtype)
    return out.reshape(*leading, layer.out_features)


def int8_linear_quantized_for(quantized: Tensor, scale: Tensor, layer: Int8Linear, activation: str,
                              consumer: Int8Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """act(x W^T + b) through `layer` from x quantized for it ([M, K] uint8, [M] scales), returned quantized as
    `consumer`'s input ([M, N] uint8, [M] float32 scales). The same values as `quantize_input(int8_linear(x,
    layer, activation), consumer)` with that output in `dtype`, bit for bit, from one fused epilogue
    (`ops.int8_linear_quantize`; `ops.dequantize_quantize_rows` without oneDNN)."""
    if consumer.in_features != layer.out_features:
        raise ValueError(f"consumer takes {consumer.in_features} features, the layer gives {layer.out_features}")
    packed = layer.packed_weight()
    if packed.weight is not None:
        return ops.int8_linear_quantize(quantized, scale, packed.weight, layer.weight_scale, packed.zero_points,
                                        layer.bias, activation, dtype, consumer.input_divisor)
    return ops.dequantize_quantize_rows(_int_mm_product(quantized, layer), scale, layer.bias, activation, dtype,
                                        consumer.input_divisor)


def int8_linear_layer_norm(quantized: Tensor, scale: Tensor, layer: Int8Linear, residual: Tensor,
                           layer_norm: nn.LayerNorm, consumer: Int8Linear | None = None,
                           ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """An output block, LayerNorm(x W^T + b + residual), from an input quantized for `layer` ([M, K] uint8, [M]
    scales), in one epilogue (`ops.int8_linear_layer_norm`; `ops.dequantize_layer_norm_rows` without oneDNN): ->
    ([..., N] in the residual's dtype and shape, that output quantized as `consumer`'s input ([M, N] uint8, [M]
    float32) or None without a consumer)."""
    if consumer is not None and consumer.in_features != layer.out_features:
        raise ValueError(f"consumer takes {consumer.in_features} features, the layer gives {layer.out_features}")
    residual_rows = residual.reshape(-1, layer.out_features)
    divisor = None if consumer is None else consumer.input_divisor
    packed = layer.packed_weight()
    if packed.weight is not None:
        out, next_quantized, next_scale = ops.int8_linear_layer_norm(
            quantized, scale, packed.weight, layer.weight_scale, packed.zero_points, layer.bias, residual_rows,
            layer_norm.weight, layer_norm.bias, layer_norm.eps, residual.dtype, consumer is not None, divisor)
    else:
        out, next_quantized, next_scale = ops.dequantize_layer_norm_rows(
            _int_mm_product(quantized, layer), scale, layer.bias, residual_rows, layer_norm.weight, layer_norm.bias,
            layer_norm.eps, residual.dtype, consumer is not None, divisor)
    handoff = None if next_quantized is None else (next_quantized, next_scale)
    return out.reshape(residual.shape), handoff


def quantize_input(x: Tensor, layer: Int8Linear) -> tuple[Tensor, Tensor]:
    """[..., K] float -> ([M, K] uint8, [M] float32): x quantized per row as `layer`'s input (its divisor)."""
    return ops.quantize_rows(x.reshape(-1, layer.in_features), layer.input_divisor)


def _int_mm_product(quantized: Tensor, layer: Int8Linear) -> Tensor:
    """[M, K] uint8 (zero point 128) -> [M, N] float32: the matmul's exact int32 sums times the weight scales, where
    oneDNN's int8 ops are missing (`torch._int_mm`)."""
    centred = (quantized.to(torch.int16) - reference.INT8_ZERO_POINT).to(torch.int8)
    return torch._int_mm(centred, layer.weight_int8.t()).float().mul_(layer.weight_scale)


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
        raise ValueError(f"int8 runs on the CPU only (its int8 matmuls are oneDNN's CPU kernels); got a model on "
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
        # In the mode of the layer it replaces (a new module starts in training mode, unlike the eval copy).
        replacement = Int8Linear.from_linear(linear, smoothing.get(name)).train(linear.training)
        setattr(quantized.get_submodule(parent_name), attribute, replacement)
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
        floor = reference.INT8_MIN_SCALE
        factor = activation_range.clamp(min=floor).pow(alpha) / weight_range.clamp(min=floor).pow(1 - alpha)
        factors[name] = factor.clamp(min=floor)
    return factors
