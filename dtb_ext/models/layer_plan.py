"""Inference plans: one encoder layer's packed weights and ops resolved once, then called directly.

At batch 1 on the CPU, most of a layer's fixed cost was Python: module attribute lookups, the packed-linear cache's
checks (packed_linear.py) and the op wrappers' kernel-or-reference choice (dtb_ext/ops.py), made again for every
Linear of every layer of every forward. With plans, the default model at batch 1 on 48 dev-a features ran 1.14x
(bf16) and 1.07x (int8) faster than on the generic path, interleaved in one run (bench/REPORT-qa-plans.md), and
1.10-1.16x and 1.11-1.20x in three runs with the AMX int8 GEMM (bench/REPORT-qa-kernels.md).

A plan applies where the dynamic encoder runs the fused bf16 attention kernel and packed Linears: inference (no
gradient recorded) on the CPU with the compiled kernels, bf16 activations, exact Hugging Face BERT/RoBERTa blocks
in eval mode without hooks, and either the model's int8 layers (`Int8Linear` with packed weights, for the AMX or
the oneDNN GEMM) or bf16 `nn.Linear`s. It calls the very ops the generic path calls, with the same arguments, so its
outputs are the generic path's bit for bit. A plan remembers what it was made from (`_Watch`): every submodule and
tensor of the layer, their versions, hooks and training flags; when any of them changed, `LayerPlans.plan` makes a
new one (or none, and the generic path runs).

Shapes: B batch, n tokens (padded width), K kept width, D hidden size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Hashable

import torch
from torch import Tensor, nn

from dtb_ext import ops
from dtb_ext.models.packed_linear import (
    INT8_GELU,
    PackedLinears,
    fusable_layer_norm,
    gelu_algorithm,
    global_hooks,
    is_plain,
    is_plain_int8,
    is_plain_linear,
    same_divisor,
)
from dtb_ext.precision.int8 import Int8Linear

_INT8_OPS = (torch.ops.dtb.quantize_rows.default, torch.ops.dtb.int8_linear.default,
             torch.ops.dtb.int8_linear_quantize.default, torch.ops.dtb.int8_linear_layer_norm.default) \
    if ops.has_kernels() else None

# Set by `generic_path()`: a module global, like ops.reference_ops' switch.
_generic_only = False


@contextlib.contextmanager
def generic_path() -> Iterator[None]:
    """Within this context every dynamic encoder runs its generic path (no plan is made or used): the baseline
    the plans are tested and measured against (tests/models/test_layer_plan.py, bench/test_bench_qa.py)."""
    global _generic_only
    previous, _generic_only = _generic_only, True
    try:
        yield
    finally:
        _generic_only = previous


@dataclass(frozen=True)
class _Watch:
    """What a plan was made from: each (owner dict, key, object) link from a module to its submodules, parameters
    and buffers; each tensor with its version (inference tensors have none) and data pointer; the modules whose
    hooks and training flags matter. Checked once per layer call, so written for speed (about 5 us per layer)."""
    links: tuple[tuple[dict, str, object], ...]
    versioned: tuple[tuple[Tensor, int, int], ...]
    unversioned: tuple[tuple[Tensor, int], ...]
    modules: tuple[nn.Module, ...]

    @classmethod
    def of(cls, layer: nn.Module) -> _Watch:
        links, versioned, unversioned = [], [], []
        for module in layer.modules():
            for owner in (module._modules, module._parameters, module._buffers):
                for key, value in owner.items():
                    links.append((owner, key, value))
                    if isinstance(value, Tensor) and value.is_inference():
                        unversioned.append((value, value.data_ptr()))
                    elif isinstance(value, Tensor):
                        versioned.append((value, value._version, value.data_ptr()))
        # The layer's own hooks are the encoder's to call (it never runs the layer as a module); its submodules'
        # hooks would have to see their modules run, which only the generic path does.
        submodules = tuple(module for module in layer.modules() if module is not layer)
        return cls(tuple(links), tuple(versioned), tuple(unversioned), submodules)

    def holds(self) -> bool:
        """Whether every link, tensor and module is as it was when the plan was made (and hook-free, in eval)."""
        for owner, key, value in self.links:
            if owner.get(key) is not value:
                return False
        for tensor, version, pointer in self.versioned:
            if tensor._version != version or tensor.data_ptr() != pointer:
                return False
        for tensor, pointer in self.unversioned:
            if tensor.data_ptr() != pointer:
                return False
        for module in self.modules:
            if module.training or module._forward_hooks or module._forward_pre_hooks:
                return False
        return True


class Int8LayerPlan:
    """A layer whose four Linears are int8: per layer two quantize_rows, the query/key/value int8 Linear, the
    attention kernel, the attention-output block with its LayerNorm (quantized for the intermediate Linear when no
    token is gathered in between), the intermediate block quantized for the output Linear, and the output block."""

    def __init__(self, layer: nn.Module, qkv: Int8Linear, head_size: int, scaling: float) -> None:
        self.head_size, self.scaling = head_size, scaling
        attention_output, intermediate, output = layer.attention.output, layer.intermediate, layer.output
        self.qkv = _Int8Weights.of(qkv)
        self.attention_output = _Int8Weights.of(attention_output.dense)
        self.intermediate = _Int8Weights.of(intermediate.dense)
        self.output = _Int8Weights.of(output.dense)
        self.activation = INT8_GELU[gelu_algorithm(intermediate.intermediate_act_fn)]
        self.norms = (_Norm.of(attention_output.LayerNorm), _Norm.of(output.LayerNorm))
        self.split = [linear.out_features for linear in (layer.attention.self.query, layer.attention.self.key,
                                                         layer.attention.self.value)]

    def attention(self, hidden: Tensor, mask: Tensor | None, feeds_forward: bool,
                  ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """[B, n, D] hidden, [B, n] key mask or None -> ([B, n, D] attention-block output, that output quantized
        for the intermediate Linear when `feeds_forward`, else None)."""
        quantize_rows, int8_linear, _, int8_linear_layer_norm = _INT8_OPS
        rows = hidden.reshape(-1, self.qkv.in_features)
        quantized, scale = quantize_rows(rows, self.qkv.divisor)
        projected = int8_linear(quantized, scale, *self.qkv.arguments, None, "none", hidden.dtype)
        shape = (*hidden.shape[:2], -1, self.head_size)
        query, key, value = (part.view(shape).transpose(1, 2)
                             for part in projected.reshape(*hidden.shape[:2], -1).split(self.split, dim=-1))
        context = ops.attention(query, key, value, mask, self.scaling)
        context = context.transpose(1, 2).reshape(rows.shape)
        quantized, scale = quantize_rows(context, self.attention_output.divisor)
        norm = self.norms[0]
        out, next_quantized, next_scale = int8_linear_layer_norm(
            quantized, scale, *self.attention_output.arguments, rows, norm.weight, norm.bias, norm.eps, hidden.dtype,
            feeds_forward, self.intermediate.divisor if feeds_forward else None)
        return out.view(hidden.shape), (next_quantized, next_scale) if feeds_forward else None

    def feed_forward(self, hidden: Tensor, quantized_input: tuple[Tensor, Tensor] | None) -> Tensor:
        """[B, K, D] -> [B, K, D]; `quantized_input`: `hidden` already quantized for the intermediate Linear (from
        `attention`), else None."""
        quantize_rows, _, int8_linear_quantize, int8_linear_layer_norm = _INT8_OPS
        rows = hidden.reshape(-1, self.intermediate.in_features)
        if quantized_input is None:
            quantized_input = quantize_rows(rows, self.intermediate.divisor)
        quantized, scale = int8_linear_quantize(*quantized_input, *self.intermediate.arguments, self.activation,
                                                hidden.dtype, self.output.divisor)
        norm = self.norms[1]
        out, _, _ = int8_linear_layer_norm(quantized, scale, *self.output.arguments, rows, norm.weight, norm.bias,
                                           norm.eps, hidden.dtype, False, None)
        return out.view(hidden.shape)


class Bf16LayerPlan:
    """A layer of bf16 `nn.Linear`s with weights prepacked for oneDNN: the query/key/value matmul, the attention
    kernel, the attention-output matmul with the residual added in it and the LayerNorm, the intermediate matmul
    with its GELU, and the output matmul with the residual and the LayerNorm."""

    def __init__(self, layer: nn.Module, linears: PackedLinears, index: int, head_size: int,
                 scaling: float) -> None:
        self.head_size, self.scaling = head_size, scaling
        attention = layer.attention.self
        self.split = [linear.out_features for linear in (attention.query, attention.key, attention.value)]
        self.qkv = _packed(linears, (index, "qkv"), (attention.query, attention.key, attention.value))
        self.attention_output = _packed(linears, (index, "attention"), (layer.attention.output.dense,))
        self.intermediate = _packed(linears, (index, "intermediate"), (layer.intermediate.dense,))
        self.output = _packed(linears, (index, "output"), (layer.output.dense,))
        self.gelu = gelu_algorithm(layer.intermediate.intermediate_act_fn)
        self.norms = (_Norm.of(layer.attention.output.LayerNorm), _Norm.of(layer.output.LayerNorm))

    def attention(self, hidden: Tensor, mask: Tensor | None, feeds_forward: bool) -> tuple[Tensor, None]:
        """[B, n, D] hidden, [B, n] key mask or None -> ([B, n, D] attention-block output, None)."""
        hidden = hidden.contiguous()
        projected = torch.ops.mkldnn._linear_pointwise(hidden, *self.qkv, "none", [], "")
        shape = (*hidden.shape[:2], -1, self.head_size)
        query, key, value = (part.view(shape).transpose(1, 2) for part in projected.split(self.split, dim=-1))
        context = ops.attention(query, key, value, mask, self.scaling)
        context = context.transpose(1, 2).reshape(hidden.shape)
        summed = torch.ops.mkldnn._linear_pointwise.binary(context, hidden, *self.attention_output, "add")
        return self.norms[0](summed), None

    def feed_forward(self, hidden: Tensor, quantized_input: None) -> Tensor:
        """[B, K, D] -> [B, K, D]."""
        hidden = hidden.contiguous()
        inner = torch.ops.mkldnn._linear_pointwise(hidden, *self.intermediate, "gelu", [], self.gelu)
        summed = torch.ops.mkldnn._linear_pointwise.binary(inner, hidden, *self.output, "add")
        return self.norms[1](summed)


LayerPlan = Int8LayerPlan | Bf16LayerPlan


class LayerPlans:
    """Per-encoder cache of the layers' plans, by layer index, each with the `_Watch` it was made under."""

    def __init__(self) -> None:
        self._plans: dict[int, tuple[LayerPlan, _Watch]] = {}

    # A copied or pickled model starts without plans: they hold the original's modules and packed weights.
    def __deepcopy__(self, memo: dict) -> LayerPlans:
        return LayerPlans()

    def __getstate__(self) -> dict:
        return {"_plans": {}}

    def plan(self, index: int, layer: nn.Module, linears: PackedLinears, hidden: Tensor) -> LayerPlan | None:
        """Layer `index`'s plan for `hidden` [B, n, D], or None where the generic path must run."""
        if not (hidden.dtype == torch.bfloat16 and hidden.device.type == "cpu" and _INT8_OPS is not None
                and not _generic_only
                and ops.kernels_enabled() and not torch.is_grad_enabled() and not global_hooks()):
            return None
        cached = self._plans.get(index)
        if cached is not None and cached[1].holds():
            return cached[0]
        self._plans.pop(index, None)
        plan = _make_plan(index, layer, linears)
        if plan is not None:
            self._plans[index] = (plan, _Watch.of(layer))
        return plan


def _make_plan(index: int, layer: nn.Module, linears: PackedLinears) -> LayerPlan | None:
    """A plan for `layer`, or None where some block is not the plain, exact kind a plan runs."""
    if any(module.training or not is_plain(module) for module in layer.modules() if module is not layer):
        return None
    attention = layer.attention.self
    if not ops.native_bf16_attention_applies(torch.bfloat16, "cpu", attention.attention_head_size):
        return None
    if not (PackedLinears.is_exact_block(layer.attention.output) and PackedLinears.is_exact_block(layer.output)
            and PackedLinears.is_exact_block(layer.intermediate)
            and gelu_algorithm(layer.intermediate.intermediate_act_fn) is not None
            and all(fusable_layer_norm(block, block.dense.out_features, torch.bfloat16)
                    for block in (layer.attention.output, layer.output))):
        return None
    projections = (attention.query, attention.key, attention.value)
    dense = (layer.attention.output.dense, layer.intermediate.dense, layer.output.dense)
    arguments = (attention.attention_head_size, attention.scaling)
    if all(is_plain_int8(linear) for linear in projections + dense) and same_divisor(projections):
        if any(linear.packed_weight().weight is None for linear in dense):
            return None
        qkv = linears.int8_entry((index, "qkv"), projections)
        if qkv.packed_weight().weight is None:
            return None
        return Int8LayerPlan(layer, qkv, *arguments)
    if (all(is_plain_linear(linear) and linear.weight.dtype == torch.bfloat16
                and linear.weight.device.type == "cpu" for linear in projections + dense)
            and PackedLinears.can_prepack()):
        return Bf16LayerPlan(layer, linears, index, *arguments)
    return None


@dataclass(frozen=True)
class _Int8Weights:
    """An int8 Linear's arguments to the int8 ops: packed weight, weight scales, zero points, bias; its input
    divisor and width."""
    arguments: tuple[Tensor, Tensor, Tensor, Tensor | None]
    divisor: Tensor | None
    in_features: int

    @classmethod
    def of(cls, layer: Int8Linear) -> _Int8Weights:
        packed = layer.packed_weight()
        return cls((packed.weight, layer.weight_scale, packed.zero_points, layer.bias), layer.input_divisor,
                   layer.in_features)


@dataclass(frozen=True)
class _Norm:
    """A LayerNorm's parameters, applied as nn.LayerNorm.forward does."""
    shape: tuple[int, ...]
    weight: Tensor | None
    bias: Tensor | None
    eps: float

    @classmethod
    def of(cls, norm: nn.LayerNorm) -> _Norm:
        return cls(tuple(norm.normalized_shape), norm.weight, norm.bias, norm.eps)

    def __call__(self, x: Tensor) -> Tensor:
        return nn.functional.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def _packed(linears: PackedLinears, key: Hashable, modules: tuple[nn.Linear, ...]) -> tuple[Tensor, Tensor]:
    """The (packed weight, bias) of `modules` concatenated, from the packed-linear cache."""
    entry = linears.entry(key, modules, packed=True)
    return entry.weight, entry.bias
