"""The dtb ops as Python functions: the compiled kernels (`torch.ops.dtb.*`) when `dtb_ext._C` is built,
the pure-PyTorch reference (`dtb_ext.reference`) otherwise. Same signatures and semantics either way;
see `dtb_ext.reference` for the tensor shapes."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from dtb_ext import reference

try:
    from dtb_ext import _C  # noqa: F401  (registers torch.ops.dtb.*)

    _HAS_KERNELS = True
except ImportError as error:
    _HAS_KERNELS = False
    warnings.warn(f"dtb_ext: compiled kernels not available ({error}); using the PyTorch reference ops", stacklevel=2)

PAD_POSITION = reference.PAD_POSITION


def has_kernels() -> bool:
    """True when the compiled extension is loaded and the ops run its kernels."""
    return _HAS_KERNELS


def softmax_with_significance(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """[B, H, L, L] scores and [B, L] mask -> ([B, H, L, L] probabilities, [B, L] float32 significance)."""
    if _HAS_KERNELS:
        return torch.ops.dtb.softmax_with_significance(scores, mask)
    return reference.softmax_with_significance(scores, mask)


def select_and_gather(
    hidden: Tensor, significance: Tensor, mask: Tensor, keep: Tensor, max_keep: int, keep_first: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Kept hidden states [B, K, D], kept mask [B, K] and ascending kept positions [B, K] (PAD_POSITION past keep)."""
    if _HAS_KERNELS:
        return torch.ops.dtb.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)
    return reference.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)


def restore(base: Tensor, src: Tensor, positions: Tensor) -> Tensor:
    """A copy of `base` [B, L0, D] with the rows of `src` [B, K, D] written at `positions` [B, K]."""
    if _HAS_KERNELS:
        return torch.ops.dtb.restore(base, src, positions)
    return reference.restore(base, src, positions)
