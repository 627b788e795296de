"""Pure-PyTorch versions of every dtb op: the test oracle, and the fallback when `dtb_ext._C` is missing.

Semantics are those of docs/design.md §2. Shapes: B batch, H heads, L sequence length, D hidden size,
K the largest keep count in the batch.
"""
from __future__ import annotations

import torch
from torch import Tensor

# Positions of padded slots in a kept-position tensor: `restore` skips them.
PAD_POSITION = -1


def softmax_with_significance(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked softmax over keys and the attention each key receives.

    Args:
        scores: [B, H, L, L] attention logits (already scaled), float32/float16/bfloat16.
        mask: [B, L] padding mask, nonzero for real tokens.

    Returns:
        probs: [B, H, L, L] in the dtype of `scores`; masked keys get 0 and a fully masked row is all 0.
        significance: [B, L] float32, `sum over h and valid queries q of probs[b, h, q, k]`.
    """
    valid = mask.bool()
    key_valid = valid[:, None, None, :]
    # float32 at least (float64 stays float64, so that gradcheck sees float64 precision).
    compute_dtype = torch.promote_types(scores.dtype, torch.float32)
    # finfo.min instead of -inf: a fully masked row then softmaxes to a uniform row that the final
    # multiplication zeroes, instead of NaN.
    logits = scores.to(compute_dtype).masked_fill(~key_valid, torch.finfo(compute_dtype).min)
    probs_wide = torch.softmax(logits, dim=-1) * key_valid
    significance = (probs_wide * valid[:, None, :, None]).sum(dim=(1, 2))
    return probs_wide.to(scores.dtype), significance.float()


def selection_order(significance: Tensor, mask: Tensor, keep_first: bool) -> Tensor:
    """Positions sorted by selection priority: [B, L] int64.

    Real tokens come before padding; within each group higher significance first and, on ties, the lower
    position first (a stable sort keeps the original ascending order among equal keys). With `keep_first`,
    position 0 comes first whatever its score.
    """
    key = significance.float().masked_fill(~mask.bool(), float("-inf"))
    if keep_first:
        key = key.clone()
        key[:, 0] = float("inf")
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def select_and_gather(
    hidden: Tensor, significance: Tensor, mask: Tensor, keep: Tensor, max_keep: int, keep_first: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the `keep[b]` most significant tokens of each example, in their original order.

    Args:
        hidden: [B, L, D] hidden states.
        significance: [B, L] token scores.
        mask: [B, L] padding mask, nonzero for real tokens.
        keep: [B] int64 keep counts, each in [1, L].
        max_keep: K, the width of the outputs; at least max(keep) and at most L.
        keep_first: always keep position 0 (the CLS token).

    Returns:
        kept_hidden: [B, K, D]; rows past keep[b] are zero.
        kept_mask: [B, K] in the dtype of `mask`; 1 where a real token was kept.
        kept_positions: [B, K] int64, ascending positions into L; PAD_POSITION past keep[b].
    """
    batch, length, width = hidden.shape
    order = selection_order(significance, mask, keep_first)[:, :max_keep]
    slot = torch.arange(max_keep, device=hidden.device)
    in_keep = slot[None, :] < keep[:, None]
    # Sorting with the unused slots pushed past every real position leaves the kept ones ascending.
    sentinel = torch.full_like(order, length)
    positions = torch.where(in_keep, order, sentinel).sort(dim=1).values
    positions = torch.where(in_keep, positions, torch.full_like(positions, PAD_POSITION))
    safe = positions.clamp(min=0)
    kept_hidden = torch.gather(hidden, 1, safe[:, :, None].expand(batch, max_keep, width))
    kept_hidden = kept_hidden * in_keep[:, :, None].to(hidden.dtype)
    kept_mask = (torch.gather(mask, 1, safe).bool() & in_keep).to(mask.dtype)
    return kept_hidden, kept_mask, positions


def restore(base: Tensor, src: Tensor, positions: Tensor) -> Tensor:
    """Scatter rows of `src` into a copy of `base` at `positions` (drop-and-restore).

    Args:
        base: [B, L0, D] full-length buffer.
        src: [B, K, D] rows to write.
        positions: [B, K] int64 positions into L0, distinct within a row; PAD_POSITION rows are skipped.

    Returns:
        [B, L0, D]: `base` with `out[b, positions[b, k]] = src[b, k]` for every valid slot.
    """
    valid = positions >= 0
    batch_index = torch.arange(base.shape[0], device=base.device)[:, None].expand_as(positions)
    out = base.clone()
    out[batch_index[valid], positions[valid]] = src[valid].to(base.dtype)
    return out


def attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Self-attention over the valid keys: softmax(scale * query key^T) value.

    Args:
        query, key, value: [B, H, n, d], one floating dtype.
        mask: [B, n], nonzero for keys to attend to, or None (every key).
        scale: the factor on the logits (1 / sqrt(d) in BERT).

    Returns:
        [B, H, n, d] in the dtype of `query`, computed in float32 at least; a query whose every key is masked gets
        zeros (torch's SDPA would give NaN).
    """
    if mask is None:
        mask = torch.ones(query.shape[0], query.shape[2], dtype=torch.bool, device=query.device)
    return attention_with_significance(query, key, value, mask, scale)[0]


def attention_with_significance(query: Tensor, key: Tensor, value: Tensor, mask: Tensor,
                                scale: float) -> tuple[Tensor, Tensor]:
    """`attention` and the attention each key receives: ([B, H, n, d] in the dtype of `query`, [B, n] float32
    significance as `softmax_with_significance` defines it, from probabilities in float32 at least)."""
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    scores = torch.matmul(query.to(compute_dtype), key.to(compute_dtype).transpose(-1, -2)) * scale
    probs, significance = softmax_with_significance(scores, mask)
    return torch.matmul(probs, value.to(compute_dtype)).to(query.dtype), significance


# Per-row int8 quantization (dtb_ext/precision/int8.py): symmetric range -127..127 (so zero maps to zero and
# negation cannot overflow), stored with zero point 128 as uint8, the source format of oneDNN's int8 matmuls.
INT8_MAX = 127.0
INT8_ZERO_POINT = 128
# A row that is all zeros gets this scale instead of 0, so quantizing it divides by a positive number.
INT8_MIN_SCALE = 1e-12


def quantize_rows(x: Tensor, divisor: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 quantization of x / divisor.

    Args:
        x: [M, K] float32 or bfloat16.
        divisor: [K] float32 (SmoothQuant factors) or None.

    Returns:
        quantized [M, K] uint8 = round_half_even(v / scale) + 128 with v = x / divisor in float32, and scale [M]
        float32 = max(max |v| / 127, 1e-12), so that v ~= (quantized - 128) * scale row by row.
    """
    values = x.float() if divisor is None else x.float() / divisor
    scale = values.abs().amax(dim=1).div_(INT8_MAX).clamp_(min=INT8_MIN_SCALE)
    # v / scale lies in [-127, 127] by construction of the scale, so no clamp is needed before the cast.
    quantized = torch.round_(values / scale[:, None]).add_(INT8_ZERO_POINT).to(torch.uint8)
    return quantized, scale


# The int8 Linears' weight packed for their GEMM on AMX tiles (`int8_amx_pack_weight`; csrc/cpu/int8_amx_gemm.h):
# per block of 16 output channels, the VNNI tiles and then 16 int32 zero-point corrections (64 bytes).
AMX_PACK_COLUMNS = 16
AMX_PACK_DEPTH = 64
AMX_PACK_CORRECTION_BYTES = 64


def int8_amx_pack_weight(weight: Tensor) -> Tensor:
    """What `torch.ops.dtb.int8_amx_pack_weight` gives: [N, K] int8 (N a multiple of 16, K of 64) -> [N / 16,
    16 K + 64] int8. Row b: bytes 64 g + 4 c + j = weight[16 b + c, 4 g + j] for g < K / 4, c < 16, j < 4 (the VNNI
    layout of TDPBUSD's B operand), then 16 int32 in native byte order, 128 * the sum of each channel's weights
    (the uint8 rows' zero point times the channel's sum, subtracted from each AMX sum)."""
    out_features, in_features = weight.shape
    blocks = out_features // AMX_PACK_COLUMNS
    tiles = (weight.reshape(blocks, AMX_PACK_COLUMNS, in_features // 4, 4).permute(0, 2, 1, 3)
             .reshape(blocks, AMX_PACK_COLUMNS * in_features))
    correction = (weight.sum(dim=1, dtype=torch.int32) * INT8_ZERO_POINT).reshape(blocks, AMX_PACK_COLUMNS)
    return torch.cat([tiles, correction.contiguous().view(torch.int8)], dim=1)


def int8_amx_unpack_weight(packed: Tensor) -> Tensor:
    """The [N, K] int8 weight of an `int8_amx_pack_weight` result (its corrections are not read)."""
    blocks = packed.shape[0]
    in_features = (packed.shape[1] - AMX_PACK_CORRECTION_BYTES) // AMX_PACK_COLUMNS
    tiles = packed[:, :AMX_PACK_COLUMNS * in_features].reshape(blocks, in_features // 4, AMX_PACK_COLUMNS, 4)
    return tiles.permute(0, 2, 1, 3).reshape(blocks * AMX_PACK_COLUMNS, in_features)


def int8_matmul(quantized: Tensor, weight: Tensor, weight_scale: Tensor, weight_zero_points: Tensor) -> Tensor:
    """The int8 Linears' matmul whole: [M, K] uint8 rows (zero point 128), a weight prepacked by
    `torch.ops.onednn.qlinear_prepack` (run by that op, `torch.ops.onednn.qlinear_pointwise`) or by
    `int8_amx_pack_weight` (unpacked, and the int32 sums computed by torch), its [N] float32 scales and [N] int64
    zero points -> [M, N] float32, the exact int32 sums of (quantized - 128) * weight times the scales."""
    if not weight.is_mkldnn:
        centred = quantized.to(torch.int32) - INT8_ZERO_POINT
        sums = centred @ int8_amx_unpack_weight(weight).to(torch.int32).t()
        return sums.float() * weight_scale
    # x_scale 1 and zero point 128: the sums of the int8 values themselves, times the weight scales, in float32.
    return torch.ops.onednn.qlinear_pointwise(quantized, 1.0, INT8_ZERO_POINT, weight, weight_scale,
                                              weight_zero_points, None, 1.0, 0, torch.float32, "none", [], "")


def dequantize_rows(product: Tensor, scale: Tensor, bias: Tensor | None, residual: Tensor | None,
                    activation: str, dtype: torch.dtype) -> Tensor:
    """The float epilogue of an int8 matmul: act(product * scale[:, None] + bias) + residual, in float32, then
    rounded once to `dtype`.

    Args:
        product: [M, N] float32, the int32 sums of the matmul times the weight's per-channel scales.
        scale: [M] float32 activation scales (from `quantize_rows`).
        bias: [N] float32 or None.
        residual: [M, N] in `dtype`, or None.
        activation: "none", "gelu" (erf) or "gelu_tanh".
        dtype: float32 or bfloat16, the output dtype.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}")
    out = product * scale[:, None]
    if bias is not None:
        out = out + bias
    if activation != "none":
        out = torch.nn.functional.gelu(out, approximate=_ACTIVATIONS[activation])
    if residual is not None:
        out = out + residual.float()
    return out.to(dtype)


def dequantize_layer_norm_rows(product: Tensor, scale: Tensor, bias: Tensor | None, residual: Tensor,
                               weight: Tensor | None, layer_norm_bias: Tensor | None, eps: float,
                               dtype: torch.dtype, quantize: bool,
                               divisor: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """An output block of an int8 layer: out = LayerNorm(dequantize_rows(product, scale, bias, residual, "none",
    dtype)) over each row, computed in float32 (float64 for a float64 `dtype`, the test oracle) and rounded to
    `dtype`; with `quantize`, also `quantize_rows(out, divisor)`, else None, None.

    Args:
        weight, layer_norm_bias: [N] LayerNorm parameters or None (1 and 0).
        the rest: as `dequantize_rows` and `quantize_rows`.
    """
    summed = dequantize_rows(product, scale, bias, residual, "none", dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.nn.functional.layer_norm(
        summed.to(compute), summed.shape[-1:], None if weight is None else weight.to(compute),
        None if layer_norm_bias is None else layer_norm_bias.to(compute), eps).to(dtype)
    if not quantize:
        return out, None, None
    quantized, quantized_scale = quantize_rows(out, divisor)
    return out, quantized, quantized_scale


_ACTIVATIONS = {"none": "none", "gelu": "none", "gelu_tanh": "tanh"}
