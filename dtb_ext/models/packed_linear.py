"""The encoder layers' Linears at inference with prepacked weights, one matmul for query/key/value, and the GELU
and residual add fused into the matmuls.

On the CPU, `nn.Linear` hands oneDNN (bf16) or MKL (fp32) a plain weight that is reordered into the GEMM's
blocked layout on every call. That reorder costs the same whatever the token count, so it is the part of a
layer's time that dropping tokens cannot remove: at batch 1 on MiniLM (bf16, 2 threads, 2-core AMD EPYC), a
[M, 384] x [384, 1536] Linear took 773 us at M = 184 and 367 us at M = 64, about 150 us of it fixed.
Reordering once (`torch.ops.mkldnn._reorder_linear_weight`) and running `torch.ops.mkldnn._linear_pointwise`
(the ops TorchInductor's CPU freezing uses) gives bit-identical outputs 1.3-1.6x faster, and the same op applies
the GELU (intermediate block) or adds the residual (output blocks) before its single rounding.

Where this applies: CPU tensors in float32 or bfloat16, no gradient recorded, modules in eval mode of the exact
Hugging Face BERT/RoBERTa classes, plain biased `nn.Linear`s without hooks. Elsewhere (CUDA, training, wrapped
layers other than `Int8Linear`, hooks) the layers run as Hugging Face wrote them, except that query/key/value still
share one matmul at inference on any device. An int8 model's layers (`Int8Linear`, dtb_ext/precision/int8.py) run
the same way: query/key/value as one int8 matmul on one quantized input, the GELU or the residual add in the epilogue
that dequantizes the matmul (`ops.int8_linear`, block of rows by block of rows), and the GELU's output quantized for
the output Linear in that same epilogue (`feed_forward`). The packed and concatenated weights are a cache, one extra
copy of each encoder Linear weight: they are rebuilt whenever one of the source tensors changes (new storage after
`model.to(...)`, or an in-place update that bumps its version counter: an optimizer step, `load_state_dict`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import torch
from torch import Tensor, nn
from transformers.activations import GELUActivation, NewGELUActivation
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput
from transformers.models.roberta.modeling_roberta import RobertaIntermediate, RobertaOutput, RobertaSelfOutput

from dtb_ext.precision.int8 import (
    Int8Linear,
    int8_linear,
    int8_linear_layer_norm,
    int8_linear_quantized_for,
    quantize_input,
)

# Blocks whose forward is exactly LayerNorm(dropout(dense(x)) + residual), resp. act(dense(x)).
_OUTPUT_BLOCKS = (BertSelfOutput, BertOutput, RobertaSelfOutput, RobertaOutput)
_INTERMEDIATE_BLOCKS = (BertIntermediate, RobertaIntermediate)
_PACKED_DTYPES = (torch.float32, torch.bfloat16)


@dataclass
class _Entry:
    sources: tuple[Tensor, ...]  # detached views of the weights and biases: they keep the storages alive, so an
    versions: tuple[int, ...]    # equal data_ptr means the same storage; with equal versions, the same values
    weight: Tensor               # [N, D] dense or packed (oneDNN) weight, N the summed output features
    bias: Tensor


class PackedLinears:
    """Per-encoder cache of the concatenated / prepacked weights of its layers' Linears, by caller-chosen key."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _Entry] = {}
        self._int8_entries: dict[Hashable, _Int8Entry] = {}
        # An int8 attention-output block's result, quantized in its epilogue for the feed-forward that takes it as
        # is: (output tensor, its consumer, quantized rows, scales), used once, by identity, then dropped.
        self._handoff: tuple[Tensor, Int8Linear, Tensor, Tensor] | None = None

    # A copied or pickled model starts with an empty cache: oneDNN-packed tensors have no storage to copy, and
    # the copy's own weights are what its entries must come from.
    def __deepcopy__(self, memo: dict) -> PackedLinears:
        return PackedLinears()

    def __getstate__(self) -> dict:
        return {"_entries": {}, "_int8_entries": {}}

    def projections(self, key: Hashable, linears: Sequence[nn.Module], hidden: Tensor) -> tuple[Tensor, ...]:
        """[B, n, D] -> one [B, n, N_i] output per Linear of `linears` (all on the same input: query, key, value),
        from a single matmul at inference, else from the modules themselves."""
        if (not torch.is_grad_enabled() and all(is_plain_int8(linear) for linear in linears)
                and same_divisor(linears)):
            output = int8_linear(hidden, self.int8_entry(key, linears))
            return output.split([linear.out_features for linear in linears], dim=-1)
        if torch.is_grad_enabled() or not all(is_plain_linear(linear) for linear in linears):
            return tuple(linear(hidden) for linear in linears)
        entry = self.entry(key, linears, packed=_packs(hidden, linears[0]))
        if entry.weight.is_mkldnn:
            output = _pointwise(hidden, entry)
        else:
            output = nn.functional.linear(hidden, entry.weight, entry.bias)
        return output.split([linear.out_features for linear in linears], dim=-1)

    def intermediate(self, key: Hashable, block: nn.Module, hidden: Tensor) -> Tensor:
        """A BERT intermediate block, act(dense(hidden)): [B, K, D] -> [B, K, I]; GELU fused where packed."""
        if self._runs_int8(block) and gelu_algorithm(block.intermediate_act_fn) is not None:
            activation = INT8_GELU[gelu_algorithm(block.intermediate_act_fn)]
            return int8_linear(hidden, block.dense, activation)
        if not (isinstance(block, _INTERMEDIATE_BLOCKS) and type(block).forward in _FORWARDS
                and self._packable(block, block.dense, hidden)):
            return block(hidden)
        entry = self.entry(key, (block.dense,), packed=True)
        gelu = gelu_algorithm(block.intermediate_act_fn)
        if gelu is None:
            return block.intermediate_act_fn(_pointwise(hidden, entry))
        return _pointwise(hidden, entry, "gelu", gelu)

    def feed_forward(self, key: Hashable, intermediate: nn.Module, output: nn.Module, hidden: Tensor) -> Tensor:
        """A BERT feed-forward, `output(intermediate(hidden), hidden)`: [B, K, D] -> [B, K, D], through
        `intermediate` and `output` with the keys (key, "intermediate") and (key, "output").

        With int8 layers the GELU's output reaches the output Linear already quantized (`int8_linear_quantized_for`:
        the same values as quantizing it after the intermediate block, bit for bit), so the [B, K, I] activations
        are neither written nor read back, and the output block's LayerNorm runs in its epilogue
        (`int8_linear_layer_norm`). `hidden` arrives quantized too when it is the attention-output block's result
        itself (`output(..., feeds=intermediate)`)."""
        handoff, self._handoff = self._handoff, None
        if (self._runs_int8(intermediate) and self._runs_int8(output)
                and gelu_algorithm(intermediate.intermediate_act_fn) is not None
                and fusable_layer_norm(output, hidden.shape[-1], hidden.dtype) and is_plain(output.dropout)):
            activation = INT8_GELU[gelu_algorithm(intermediate.intermediate_act_fn)]
            if handoff is not None and handoff[0] is hidden and handoff[1] is intermediate.dense:
                quantized, scale = handoff[2], handoff[3]
            else:
                quantized, scale = quantize_input(hidden, intermediate.dense)
            quantized, scale = int8_linear_quantized_for(quantized, scale, intermediate.dense, activation,
                                                         output.dense, hidden.dtype)
            out, _ = int8_linear_layer_norm(quantized, scale, output.dense, hidden, output.LayerNorm)
            return out
        inner = self.intermediate((key, "intermediate"), intermediate, hidden)
        return self.output((key, "output"), output, inner, hidden)

    def output(self, key: Hashable, block: nn.Module, hidden: Tensor, residual: Tensor,
               feeds: nn.Module | None = None) -> Tensor:
        """A BERT output block, LayerNorm(dense(hidden) + residual): [B, K, I], [B, K, D] -> [B, K, D]; the
        residual added inside the matmul where packed.

        `feeds`: the intermediate block that takes this output as is (no tokens gathered in between), or None.
        With int8 layers the LayerNorm runs in the matmul's epilogue, which also quantizes the output for `feeds`'
        int8 Linear (`feed_forward` picks it up)."""
        if (self._runs_int8(block) and fusable_layer_norm(block, residual.shape[-1], residual.dtype)
                and is_plain(block.dropout) and residual.dtype == hidden.dtype):
            consumer = feeds.dense if feeds is not None and self._runs_int8(feeds) else None
            quantized, scale = quantize_input(hidden, block.dense)
            out, handoff = int8_linear_layer_norm(quantized, scale, block.dense, residual, block.LayerNorm, consumer)
            self._handoff = None if handoff is None else (out, consumer, *handoff)
            return out
        if (self._runs_int8(block) and is_plain(block.LayerNorm) and is_plain(block.dropout)
                and residual.dtype == hidden.dtype):
            return block.LayerNorm(int8_linear(hidden, block.dense, residual=residual))
        if not (isinstance(block, _OUTPUT_BLOCKS) and type(block).forward in _FORWARDS
                and self._packable(block, block.dense, hidden) and is_plain(block.LayerNorm)
                and is_plain(block.dropout) and residual.dtype == hidden.dtype):
            return block(hidden, residual)
        entry = self.entry(key, (block.dense,), packed=True)
        summed = torch.ops.mkldnn._linear_pointwise.binary(
            hidden.contiguous(), residual.contiguous(), entry.weight, entry.bias, "add"
        )
        return block.LayerNorm(summed)

    @staticmethod
    def _runs_int8(block: nn.Module) -> bool:
        """Whether `block` (an exact HF intermediate or output block) runs its int8 dense layer fused here."""
        return (not torch.is_grad_enabled() and not block.training and PackedLinears.is_exact_block(block)
                and is_plain(block) and is_plain_int8(block.dense))

    @staticmethod
    def is_exact_block(block: nn.Module) -> bool:
        """Whether `block` is a Hugging Face BERT/RoBERTa intermediate or output block with HF's own forward (the
        computation the fused paths stand in for)."""
        return isinstance(block, _OUTPUT_BLOCKS + _INTERMEDIATE_BLOCKS) and type(block).forward in _FORWARDS

    @staticmethod
    def can_prepack() -> bool:
        """Whether float CPU Linears can run with prepacked oneDNN weights here (the ops exist, oneDNN is usable)."""
        return _MKLDNN_OPS and torch.backends.mkldnn.is_available()

    def int8_entry(self, key: Hashable, linears: Sequence[Int8Linear]) -> Int8Linear:
        """The int8 layers of `linears` concatenated into one (cached until one of their buffers changes)."""
        tensors = tuple(t for linear in linears for t in (linear.weight_int8, linear.weight_scale, linear.bias)
                        if t is not None)
        entry = self._int8_entries.get(key)
        if entry is None or not _same(entry, tensors):
            layer = linears[0] if len(linears) == 1 else Int8Linear.concatenate(linears)
            entry = _Int8Entry(tuple(t.detach() for t in tensors), tuple(t._version for t in tensors), layer)
            self._int8_entries[key] = entry
        return entry.layer

    @staticmethod
    def _packable(block: nn.Module, linear: nn.Module, hidden: Tensor) -> bool:
        return (not torch.is_grad_enabled() and not block.training and is_plain(block)
                and is_plain_linear(linear) and _packs(hidden, linear))

    def entry(self, key: Hashable, linears: Sequence[nn.Linear], packed: bool) -> _Entry:
        tensors = tuple(t for linear in linears for t in (linear.weight, linear.bias))
        entry = self._entries.get(key)
        if entry is None or entry.weight.is_mkldnn != packed or not _same(entry, tensors):
            weight = torch.cat([linear.weight.detach() for linear in linears], dim=0)
            bias = torch.cat([linear.bias.detach() for linear in linears], dim=0)
            if packed:
                weight = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            entry = _Entry(tuple(t.detach() for t in tensors), tuple(t._version for t in tensors), weight, bias)
            self._entries[key] = entry
        return entry


@dataclass
class _Int8Entry:
    sources: tuple[Tensor, ...]  # as in _Entry: the int8 weights, scales and biases it was made from
    versions: tuple[int, ...]
    layer: Int8Linear            # the layers concatenated (query/key/value), or the one layer itself


def _pointwise(hidden: Tensor, entry: _Entry, activation: str = "none", algorithm: str = "") -> Tensor:
    """[..., D] -> [..., N] with `entry`'s packed weight, `activation` ("none" or "gelu" with its `algorithm`)
    applied inside the matmul."""
    return torch.ops.mkldnn._linear_pointwise(hidden.contiguous(), entry.weight, entry.bias, activation, [], algorithm)


_FORWARDS = frozenset(cls.forward for cls in _OUTPUT_BLOCKS + _INTERMEDIATE_BLOCKS)
_MKLDNN_OPS = hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packs(hidden: Tensor, linear: nn.Linear) -> bool:
    """Whether `linear` on `hidden` runs with a prepacked oneDNN weight (CPU, fp32/bf16, oneDNN present)."""
    return (PackedLinears.can_prepack() and hidden.device.type == "cpu" and linear.weight.device.type == "cpu"
            and hidden.dtype in _PACKED_DTYPES and linear.weight.dtype == hidden.dtype)


def global_hooks() -> bool:
    """Whether forward hooks are registered for every module (`register_module_forward_hook` and its pre-hook)."""
    return bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


def is_plain(module: nn.Module) -> bool:
    """No forward hooks on `module` or globally (a hook must see its module run)."""
    return not (module._forward_hooks or module._forward_pre_hooks or global_hooks())


def fusable_layer_norm(block: nn.Module, width: int, dtype: torch.dtype) -> bool:
    """Whether an output block's LayerNorm can run fused after its matmul: a plain nn.LayerNorm over the last
    dimension, of `width` features, whose parameters (if any) have the activations' `dtype`."""
    norm = block.LayerNorm
    return (type(norm) is nn.LayerNorm and is_plain(norm) and tuple(norm.normalized_shape) == (width,)
            and all(p is None or p.dtype == dtype for p in (norm.weight, norm.bias)))


def is_plain_linear(module: nn.Module) -> bool:
    """A biased nn.Linear (not a subclass or wrapper such as an int8 or LoRA layer) without hooks."""
    return type(module) is nn.Linear and module.bias is not None and is_plain(module)


def is_plain_int8(module: nn.Module) -> bool:
    """An `Int8Linear` without hooks."""
    return type(module) is Int8Linear and is_plain(module)


def same_divisor(linears: Sequence[nn.Module]) -> bool:
    """Whether int8 `linears` share their input (none smoothed, or all with the same factors), so one quantized
    input serves them all."""
    divisors = [linear.input_divisor for linear in linears]
    if all(divisor is None for divisor in divisors):
        return True
    return all(divisor is not None and torch.equal(divisor, divisors[0]) for divisor in divisors)


# oneDNN's GELU algorithm names (`gelu_algorithm`) -> the int8 epilogue's activation names.
INT8_GELU = {"none": "gelu", "tanh": "gelu_tanh"}


def gelu_algorithm(activation: nn.Module) -> str | None:
    """oneDNN's GELU algorithm equal to `activation` ("none": erf, "tanh": the tanh approximation), else None."""
    if type(activation) is GELUActivation and activation.act is nn.functional.gelu:
        return "none"
    if type(activation) is NewGELUActivation:
        return "tanh"
    return None


def _same(entry: _Entry, tensors: tuple[Tensor, ...]) -> bool:
    return all(
        source.data_ptr() == tensor.data_ptr() and source.dtype == tensor.dtype and source.device == tensor.device
        and version == tensor._version
        for source, version, tensor in zip(entry.sources, entry.versions, tensors)
    )
