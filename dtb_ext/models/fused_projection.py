"""One matmul instead of three for a layer's query, key and value projections, at inference.

Hugging Face's BERT runs three [D, D] Linears on the same input. Concatenated into one [3D, D] weight they are a
single GEMM with a three times wider output, which costs less than three calls at the token counts of batch-1
inference (fewer launches, better blocking). The concatenated weights are a cache: they are rebuilt whenever one
of the six source tensors changes (new storage after `model.to(...)`, or an in-place update that bumps its
version counter: an optimizer step, `load_state_dict`), and used only where no gradient is recorded, so training
runs HF's own three Linears.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class _Fused:
    sources: tuple[Tensor, ...]  # detached views of q/k/v weight and bias: they keep the storages alive, so an
    versions: tuple[int, ...]    # equal data_ptr means the same storage; with equal versions, the same values
    weight: Tensor               # [3 * D_out, D]
    bias: Tensor                 # [3 * D_out]


class QKVProjection:
    """Per-layer cache of the fused query/key/value weights of a stack of BERT-family self-attention modules."""

    def __init__(self) -> None:
        self._fused: dict[int, _Fused] = {}

    def __call__(self, index: int, attention: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer `index`'s `attention` (a BertSelfAttention-like module) on [B, n, D] -> query, key, value,
        each [B, n, D_out]. Falls back to the three modules where fusing does not apply (gradients recorded,
        or projections that are not plain biased nn.Linear: int8 or wrapped layers, hooks on them)."""
        projections = (attention.query, attention.key, attention.value)
        if torch.is_grad_enabled() or not all(_is_plain_linear(p) for p in projections):
            return tuple(projection(hidden) for projection in projections)
        fused = self._current(index, projections)
        return nn.functional.linear(hidden, fused.weight, fused.bias).chunk(3, dim=-1)

    def _current(self, index: int, projections: tuple[nn.Linear, ...]) -> _Fused:
        tensors = tuple(t for p in projections for t in (p.weight, p.bias))
        cached = self._fused.get(index)
        if cached is None or not _same(cached, tensors):
            weights, biases = tensors[0::2], tensors[1::2]
            cached = _Fused(
                sources=tuple(t.detach() for t in tensors),
                versions=tuple(t._version for t in tensors),
                weight=torch.cat(weights, dim=0),
                bias=torch.cat(biases, dim=0),
            )
            self._fused[index] = cached
        return cached


def _is_plain_linear(module: nn.Module) -> bool:
    """A biased nn.Linear (not a subclass or wrapper such as an int8 or LoRA layer) without hooks, whose
    forward the fused matmul can stand in for."""
    hooked = module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks \
        or nn.modules.module._global_forward_pre_hooks
    return type(module) is nn.Linear and module.bias is not None and not hooked


def _same(cached: _Fused, tensors: tuple[Tensor, ...]) -> bool:
    return all(
        source.data_ptr() == tensor.data_ptr() and source.dtype == tensor.dtype and source.device == tensor.device
        and version == tensor._version
        for source, version, tensor in zip(cached.sources, cached.versions, tensors)
    )
