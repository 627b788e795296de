"""The dtb ops as Python functions: the compiled kernels (`torch.ops.dtb.*`) when `dtb_ext._C` is built,
the pure-PyTorch reference (`dtb_ext.reference`) otherwise. Same signatures and semantics either way;
see `dtb_ext.reference` for the tensor shapes.

With the kernels, this module also registers, for each op, a fake implementation (output shapes and dtypes, for
`torch.compile`; `max_keep` is a plain int, so every output shape is static) and an autograd formula:

- softmax_with_significance: gradients w.r.t. `scores` from both outputs (the significance is a sum of
  probabilities, so its gradient folds into the softmax backward);
- select_and_gather: gradient w.r.t. `hidden` (rows scattered back to their positions); the selection itself is
  a discrete choice, so `significance`, `mask` and `keep` get no gradient;
- restore: gradients w.r.t. `base` (zero at the restored rows) and `src` (the rows at their positions).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from dtb_ext import reference

try:
    from dtb_ext import _C  # registers torch.ops.dtb.*, with the CPU kernels of the instruction set chosen at load

    _HAS_KERNELS = True
    _BUILD_INFO: dict[str, Any] = _C.build_info()
    if _BUILD_INFO["warning"]:
        warnings.warn(f"dtb_ext: {_BUILD_INFO['warning']}", stacklevel=2)
except ImportError as error:
    _HAS_KERNELS = False
    _BUILD_INFO = {"error": str(error)}
    warnings.warn(f"dtb_ext: compiled kernels not available ({error}); using the PyTorch reference ops", stacklevel=2)

PAD_POSITION = reference.PAD_POSITION

# Set by `reference_ops()`. A plain module global rather than a ContextVar: torch.compile traces (and guards on) a
# global bool, but cannot trace ContextVar.get, and these functions run inside compiled graphs.
_reference_only = False


def has_kernels() -> bool:
    """True when the compiled extension is loaded and the ops run its kernels."""
    return _HAS_KERNELS


def kernel_info() -> dict[str, Any]:
    """What the ops run on: {"kernels": bool, "cpu_capability": the instruction set whose CPU kernels run
    ("default", "avx2" or "avx512"), "cpu_capabilities_built": the sets compiled in, "cpu_supports": the widest set
    this CPU runs, "requested": ATEN_CPU_CAPABILITY ("" when unset), "warning": why it was not followed (""
    when it was), "cuda_built": whether the CUDA kernels were compiled, "cpu_bf16_dot_products": whether the bf16
    attention kernel uses AVX512-BF16, "cpu_amx_attention": whether it computes its products on AMX tiles (CPUs
    with AMX-BF16 unless DTB_ATTENTION_AMX=0; head sizes that are multiples of 32), "cpu_amx_int8": whether the
    int8 Linear ops can run their GEMM on AMX tiles (CPUs with AMX-INT8; `int8_amx_usable`)}. Without the
    extension: {"kernels": False, "error": why it did not load}."""
    return {"kernels": _HAS_KERNELS, **_BUILD_INFO}


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
    """Run the pure-PyTorch reference ops inside the block even when the kernels are built: the baseline the
    benchmarks compare the kernels against, and a way to rule the kernels out when debugging. Process-wide (every
    thread sees it while the block runs), so do not use it while other threads serve requests."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


def kernels_enabled() -> bool:
    """True when the ops run the compiled kernels now: they are loaded and `reference_ops()` is not in effect."""
    return _HAS_KERNELS and not _reference_only



def _records_gradient(*tensors: Tensor | None) -> bool:
    """Whether autograd would record a graph through any of `tensors` (None ignored): the kernels have no backward,
    so the reference runs instead."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def softmax_with_significance(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """[B, H, L, L] scores and [B, L] mask -> ([B, H, L, L] probabilities, [B, L] float32 significance)."""
    if kernels_enabled():
        return torch.ops.dtb.softmax_with_significance(scores, mask)
    return reference.softmax_with_significance(scores, mask)


def select_and_gather(
    hidden: Tensor, significance: Tensor, mask: Tensor, keep: Tensor, max_keep: int, keep_first: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Kept hidden states [B, K, D], kept mask [B, K] and ascending kept positions [B, K] (PAD_POSITION past keep)."""
    if kernels_enabled():
        return torch.ops.dtb.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)
    return reference.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)


def restore(base: Tensor, src: Tensor, positions: Tensor) -> Tensor:
    """A copy of `base` [B, L0, D] with the rows of `src` [B, K, D] written at `positions` [B, K]."""
    if kernels_enabled():
        return torch.ops.dtb.restore(base, src, positions)
    return reference.restore(base, src, positions)


def attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """softmax(scale * query key^T over the keys where `mask` [B, n] is nonzero) value: [B, H, n, d] each ->
    [B, H, n, d].

    The CPU kernel runs for float32/bfloat16/float16 CPU tensors when no gradient is recorded (it has no backward);
    everything else runs the reference. `native_bf16_attention(query)` says whether the kernel takes its AVX512-BF16
    path, the case in which it beats torch's SDPA (the dynamic encoder checks it).
    """
    if _attention_kernel_applies(query, key, value):
        return torch.ops.dtb.attention(query, key, value, mask, scale)
    return reference.attention(query, key, value, mask, scale)


def attention_with_significance(query: Tensor, key: Tensor, value: Tensor, mask: Tensor,
                                scale: float) -> tuple[Tensor, Tensor]:
    """`attention` with a [B, n] mask, and the [B, n] float32 significance of `softmax_with_significance` (the
    attention each key receives from the valid queries, summed over heads) from the same pass. Kernel or reference
    under the same conditions as `attention`."""
    if _attention_kernel_applies(query, key, value):
        return torch.ops.dtb.attention_with_significance(query, key, value, mask, scale)
    return reference.attention_with_significance(query, key, value, mask, scale)


def quantize_rows(x: Tensor, divisor: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8 quantization: [M, K] float32/bfloat16 (divided by `divisor` [K] float32 if given) ->
    ([M, K] uint8 with zero point 128, [M] float32 scales); see `reference.quantize_rows`. Kernel on CPU tensors
    without a recorded gradient (quantization has none), the reference elsewhere."""
    if kernels_enabled() and x.device.type == "cpu" and not _records_gradient(x):
        return torch.ops.dtb.quantize_rows(x, divisor)
    return reference.quantize_rows(x, divisor)


def dequantize_rows(product: Tensor, scale: Tensor, bias: Tensor | None, residual: Tensor | None,
                    activation: str, dtype: torch.dtype) -> Tensor:
    """The float epilogue of an int8 matmul: [M, N] float32 product, [M] scales -> act(product * scale + bias) +
    residual as [M, N] `dtype`; see `reference.dequantize_rows`. Kernel on CPU tensors without a recorded gradient,
    the reference elsewhere."""
    if kernels_enabled() and product.device.type == "cpu" and not _records_gradient(product, scale, bias, residual):
        return torch.ops.dtb.dequantize_rows(product, scale, bias, residual, activation, dtype)
    return reference.dequantize_rows(product, scale, bias, residual, activation, dtype)


def dequantize_quantize_rows(product: Tensor, scale: Tensor, bias: Tensor | None, activation: str,
                             dtype: torch.dtype, divisor: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """An int8 matmul's epilogue quantized for the next int8 matmul: `quantize_rows(dequantize_rows(product, scale,
    bias, None, activation, dtype), divisor)` ([M, N] float32, [M] -> [M, N] uint8, [M] float32), bit for bit, in
    one pass per row (kernel on CPU tensors; quantization records no gradient)."""
    if kernels_enabled() and product.device.type == "cpu":
        return torch.ops.dtb.dequantize_quantize_rows(product, scale, bias, activation, dtype, divisor)
    return reference.quantize_rows(reference.dequantize_rows(product, scale, bias, None, activation, dtype), divisor)


def dequantize_layer_norm_rows(product: Tensor, scale: Tensor, bias: Tensor | None, residual: Tensor,
                               weight: Tensor | None, layer_norm_bias: Tensor | None, eps: float,
                               dtype: torch.dtype, quantize: bool,
                               divisor: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """An int8 output block's epilogue: [M, N] float32 product, [M] scales, [M, N] residual -> LayerNorm(product *
    scale + bias + residual) as [M, N] `dtype`, and with `quantize` that output quantized for the next int8 Linear
    ([M, N] uint8, [M] float32; else None, None); see `reference.dequantize_layer_norm_rows`. Kernel on CPU tensors
    without a recorded gradient, the reference elsewhere."""
    if (kernels_enabled() and product.device.type == "cpu"
            and not _records_gradient(product, scale, bias, residual, weight, layer_norm_bias)):
        out, quantized, quantized_scale = torch.ops.dtb.dequantize_layer_norm_rows(
            product, scale, bias, residual, weight, layer_norm_bias, eps, dtype, quantize, divisor)
        return (out, quantized, quantized_scale) if quantize else (out, None, None)
    return reference.dequantize_layer_norm_rows(product, scale, bias, residual, weight, layer_norm_bias, eps, dtype,
                                                quantize, divisor)


def int8_amx_usable() -> bool:
    """Whether the int8 Linear ops can run a weight packed by `int8_amx_pack_weight` (their GEMM on AMX tiles): the
    compiled kernels with the AVX512 set chosen, a CPU with AMX-INT8 and Linux's permission for the tile registers
    (`kernel_info()["cpu_amx_int8"]`). DTB_INT8_AMX is not read here (dtb_ext/precision/int8.py reads it)."""
    return _HAS_KERNELS and bool(_BUILD_INFO.get("cpu_amx_int8", False))


def int8_amx_pack_weight(weight: Tensor) -> Tensor:
    """[N, K] int8 weight (N a multiple of 16, K of 64) -> the weight packed for the int8 Linear ops' GEMM on AMX
    tiles, [N / 16, 16 K + 64] int8 (layout: `reference.int8_amx_pack_weight`); the ops run it where
    `int8_amx_usable()`. A layout only: the kernel packs on any CPU, the reference where the kernels are missing."""
    if _HAS_KERNELS:
        return torch.ops.dtb.int8_amx_pack_weight(weight)
    return reference.int8_amx_pack_weight(weight)


def int8_linear(quantized: Tensor, scale: Tensor, weight: Tensor, weight_scale: Tensor,
                weight_zero_points: Tensor, bias: Tensor | None, residual: Tensor | None, activation: str,
                dtype: torch.dtype) -> Tensor:
    """An int8 Linear from its quantized input: [M, K] uint8 rows and [M] scales (`quantize_rows`), a weight
    prepacked by `torch.ops.onednn.qlinear_prepack` or by `int8_amx_pack_weight` (the GEMM on AMX tiles, where
    `int8_amx_usable()`) with its [N] float32 scales and [N] int64 zero points (zeros) -> `dequantize_rows` of the
    int8 matmul, [M, N] `dtype` (the same bits from either packing). The kernel runs the matmul and the epilogue
    block of rows by block of rows, so the [M, N] float32 product is never in memory; the reference (also where a
    gradient is recorded) computes the product whole and `reference.dequantize_rows`."""
    if kernels_enabled() and not _records_gradient(scale, bias, residual):
        return torch.ops.dtb.int8_linear(quantized, scale, weight, weight_scale, weight_zero_points, bias, residual,
                                         activation, dtype)
    product = reference.int8_matmul(quantized, weight, weight_scale, weight_zero_points)
    return reference.dequantize_rows(product, scale, bias, residual, activation, dtype)


def int8_linear_quantize(quantized: Tensor, scale: Tensor, weight: Tensor, weight_scale: Tensor,
                         weight_zero_points: Tensor, bias: Tensor | None, activation: str, dtype: torch.dtype,
                         divisor: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`int8_linear` (no residual) quantized for the next int8 Linear: `dequantize_quantize_rows` of the int8
    matmul ([M, N] uint8, [M] float32), bit for bit, the matmul and the epilogue in blocks of rows as
    `int8_linear` (quantization records no gradient)."""
    if kernels_enabled():
        return torch.ops.dtb.int8_linear_quantize(quantized, scale, weight, weight_scale, weight_zero_points, bias,
                                                  activation, dtype, divisor)
    product = reference.int8_matmul(quantized, weight, weight_scale, weight_zero_points)
    return reference.quantize_rows(reference.dequantize_rows(product, scale, bias, None, activation, dtype), divisor)


def int8_linear_layer_norm(quantized: Tensor, scale: Tensor, weight: Tensor, weight_scale: Tensor,
                           weight_zero_points: Tensor, bias: Tensor | None, residual: Tensor,
                           layer_norm_weight: Tensor | None, layer_norm_bias: Tensor | None, eps: float,
                           dtype: torch.dtype, quantize: bool,
                           divisor: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """An int8 output block from its quantized input: `dequantize_layer_norm_rows` of the int8 matmul ([M, N]
    `dtype`, and with `quantize` that output quantized for the next int8 Linear, else None, None), the matmul and
    the epilogue in blocks of rows as `int8_linear`; the reference where a gradient is recorded."""
    if kernels_enabled() and not _records_gradient(scale, bias, residual, layer_norm_weight, layer_norm_bias):
        out, next_quantized, next_scale = torch.ops.dtb.int8_linear_layer_norm(
            quantized, scale, weight, weight_scale, weight_zero_points, bias, residual, layer_norm_weight,
            layer_norm_bias, eps, dtype, quantize, divisor)
        return (out, next_quantized, next_scale) if quantize else (out, None, None)
    product = reference.int8_matmul(quantized, weight, weight_scale, weight_zero_points)
    return reference.dequantize_layer_norm_rows(product, scale, bias, residual, layer_norm_weight, layer_norm_bias,
                                                eps, dtype, quantize, divisor)


def native_bf16_attention(query: Tensor) -> bool:
    """True when `attention` on `query` [B, H, n, d] runs the kernel's AVX512-BF16 dot products: a bf16 CPU tensor
    with d a multiple of 16, the AVX512 kernels chosen and a CPU with AVX512-BF16. Elsewhere the kernel computes in
    float32 FMAs, which is not faster than torch's SDPA."""
    return native_bf16_attention_applies(query.dtype, query.device.type, query.shape[-1])


def native_bf16_attention_applies(dtype: torch.dtype, device_type: str, head_size: int) -> bool:
    """`native_bf16_attention` for a query of `dtype` on `device_type` with heads of `head_size`."""
    return (kernels_enabled() and bool(_BUILD_INFO.get("cpu_bf16_dot_products", False)) and device_type == "cpu"
            and dtype == torch.bfloat16 and head_size % 16 == 0)


_ATTENTION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _attention_kernel_applies(query: Tensor, key: Tensor, value: Tensor) -> bool:
    """The attention kernels take CPU tensors of their dtypes and have no backward."""
    return (kernels_enabled() and query.device.type == "cpu" and query.dtype in _ATTENTION_DTYPES
            and not _records_gradient(query, key, value))


def _gather_rows(values: Tensor, positions: Tensor) -> Tensor:
    """Rows of `values` [B, L, D] at `positions` [B, K] -> [B, K, D], zero where the position is PAD_POSITION."""
    valid = positions >= 0
    index = positions.clamp(min=0)[:, :, None].expand(-1, -1, values.shape[2])
    return torch.gather(values, 1, index) * valid[:, :, None].to(values.dtype)


def _register_fake_and_autograd() -> None:
    @torch.library.register_fake("dtb::softmax_with_significance")
    def _(scores: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return torch.empty_like(scores), scores.new_empty((scores.shape[0], scores.shape[3]), dtype=torch.float32)

    @torch.library.register_fake("dtb::select_and_gather")
    def _(hidden, significance, mask, keep, max_keep, keep_first):
        batch, _, width = hidden.shape
        return (
            hidden.new_empty((batch, max_keep, width)),
            mask.new_empty((batch, max_keep)),
            keep.new_empty((batch, max_keep), dtype=torch.int64),
        )

    def attention_context(query: Tensor) -> Tensor:
        # The kernels' [B, H, n, d] output: a view of a [B, n, H, d] tensor.
        batch, heads, length, size = query.shape
        return query.new_empty((batch, length, heads, size)).transpose(1, 2)

    @torch.library.register_fake("dtb::attention")
    def _(query, key, value, mask, scale):
        return attention_context(query)

    @torch.library.register_fake("dtb::attention_with_significance")
    def _(query, key, value, mask, scale):
        return attention_context(query), query.new_empty((query.shape[0], query.shape[2]), dtype=torch.float32)

    @torch.library.register_fake("dtb::quantize_rows")
    def _(x, divisor):
        return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty((x.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("dtb::dequantize_rows")
    def _(product, scale, bias, residual, activation, dtype):
        return product.new_empty(product.shape, dtype=dtype)

    @torch.library.register_fake("dtb::dequantize_quantize_rows")
    def _(product, scale, bias, activation, dtype, divisor):
        return (product.new_empty(product.shape, dtype=torch.uint8),
                product.new_empty((product.shape[0],), dtype=torch.float32))

    @torch.library.register_fake("dtb::dequantize_layer_norm_rows")
    def _(product, scale, bias, residual, weight, layer_norm_bias, eps, dtype, quantize, divisor):
        rows = product.shape[0] if quantize else 0
        return (product.new_empty(product.shape, dtype=dtype),
                product.new_empty((rows, product.shape[1]), dtype=torch.uint8),
                product.new_empty((rows,), dtype=torch.float32))

    @torch.library.register_fake("dtb::int8_amx_pack_weight")
    def _(weight):
        out_features, in_features = weight.shape
        return weight.new_empty((out_features // reference.AMX_PACK_COLUMNS,
                                 reference.AMX_PACK_COLUMNS * in_features + reference.AMX_PACK_CORRECTION_BYTES))

    @torch.library.register_fake("dtb::restore")
    def _(base, src, positions):
        return torch.empty_like(base)

    def softmax_setup(ctx, inputs, output):
        _, mask = inputs
        ctx.save_for_backward(output[0], mask)

    def softmax_backward(ctx, grad_probs, grad_significance):
        probs, mask = ctx.saved_tensors
        # float32 at least, like the forward; float64 stays float64 for gradcheck.
        compute_dtype = torch.promote_types(probs.dtype, torch.float32)
        valid_query = mask.bool()[:, None, :, None]
        grad = grad_probs.to(compute_dtype) + grad_significance.to(compute_dtype)[:, None, None, :] * valid_query
        p = probs.to(compute_dtype)
        grad_scores = p * (grad - (grad * p).sum(dim=-1, keepdim=True))
        return grad_scores.to(probs.dtype), None

    torch.library.register_autograd("dtb::softmax_with_significance", softmax_backward, setup_context=softmax_setup)

    def select_setup(ctx, inputs, output):
        hidden = inputs[0]
        ctx.hidden_shape = hidden.shape
        ctx.save_for_backward(output[2])

    def select_backward(ctx, grad_kept_hidden, grad_kept_mask, grad_positions):
        (positions,) = ctx.saved_tensors
        zeros = grad_kept_hidden.new_zeros(ctx.hidden_shape)
        return torch.ops.dtb.restore(zeros, grad_kept_hidden, positions), None, None, None, None, None

    torch.library.register_autograd("dtb::select_and_gather", select_backward, setup_context=select_setup)

    def restore_setup(ctx, inputs, output):
        _, src, positions = inputs
        ctx.src_dtype = src.dtype
        ctx.src_shape = src.shape
        ctx.save_for_backward(positions)

    def restore_backward(ctx, grad_out):
        (positions,) = ctx.saved_tensors
        grad_base = torch.ops.dtb.restore(grad_out, grad_out.new_zeros(ctx.src_shape), positions)
        grad_src = _gather_rows(grad_out, positions).to(ctx.src_dtype)
        return grad_base, grad_src, None

    torch.library.register_autograd("dtb::restore", restore_backward, setup_context=restore_setup)


if _HAS_KERNELS:
    _register_fake_and_autograd()
