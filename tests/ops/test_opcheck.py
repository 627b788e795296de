"""`torch.library.opcheck` on every op of `torch.ops.dtb`: schema (no undeclared mutation or aliasing), the fake
implementation (the shapes, dtypes and strides torch.compile plans with), the autograd registration, and AOT
dispatch, for each op on CPU in float32 and bfloat16, and on CUDA for the ops with a CUDA kernel (marked cuda).

Each op needs a case below (or a place in ONEDNN_WEIGHT_OPS, the ops opcheck cannot run): a new op without one
fails `test_every_registered_op_has_a_case`.
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.library import opcheck

from dtb_ext import ops
from test_ops import require_kernels  # noqa: F401  (autouse: fails, or skips with DTB_ALLOW_NO_KERNELS=1, unbuilt)

DTYPES = [torch.float32, torch.bfloat16]
# Ops whose kernels have a backward: opcheck also checks their autograd formula with inputs that require grad.
DIFFERENTIABLE = {"softmax_with_significance", "select_and_gather", "restore"}

Case = tuple  # the op's positional arguments


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _mask(device: str) -> torch.Tensor:
    return torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1, 0]], device=device)


def softmax_with_significance_case(dtype: torch.dtype, device: str) -> Case:
    scores = torch.randn(3, 2, 7, 7, generator=_generator()).to(device, dtype)
    return scores.requires_grad_(), _mask(device)


def select_and_gather_case(dtype: torch.dtype, device: str) -> Case:
    generator = _generator()
    hidden = torch.randn(3, 7, 4, generator=generator).to(device, dtype)
    significance = torch.rand(3, 7, generator=generator).to(device)
    return hidden.requires_grad_(), significance, _mask(device), torch.tensor([5, 2, 3], device=device), 6, True


def restore_case(dtype: torch.dtype, device: str) -> Case:
    hidden, significance, mask, keep, max_keep, _ = select_and_gather_case(dtype, device)
    kept, _, positions = ops.select_and_gather(hidden.detach(), significance, mask, keep, max_keep, False)
    return torch.randn_like(hidden).requires_grad_(), kept.requires_grad_(), positions


def _qkv(dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = _generator()
    # head size 32: the AMX / AVX512-BF16 paths of the bf16 kernel take multiples of 16 and 32
    return tuple(torch.randn(3, 2, 7, 32, generator=generator).to(device, dtype) for _ in range(3))


def attention_case(dtype: torch.dtype, device: str) -> Case:
    return (*_qkv(dtype, device), _mask(device), 32 ** -0.5)


def attention_with_significance_case(dtype: torch.dtype, device: str) -> Case:
    return (*_qkv(dtype, device), _mask(device), 32 ** -0.5)


def quantize_rows_case(dtype: torch.dtype, device: str) -> Case:
    generator = _generator()
    x = (torch.randn(9, 37, generator=generator) * 3).to(device, dtype)
    return x, torch.rand(37, generator=generator).to(device) + 0.1


def _product(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An int8 matmul's float32 sums [9, 37], row scales [9] and a bias [37]."""
    generator = _generator()
    product = torch.randint(-5000, 5000, (9, 37), generator=generator).float().to(device)
    scale = (torch.rand(9, generator=generator) * 1e-3).to(device)
    return product, scale, torch.randn(37, generator=generator).to(device)


def dequantize_rows_case(dtype: torch.dtype, device: str) -> Case:
    product, scale, bias = _product(device)
    residual = torch.randn(9, 37, generator=_generator()).to(device, dtype)
    return product, scale, bias, residual, "gelu", dtype


def dequantize_quantize_rows_case(dtype: torch.dtype, device: str) -> Case:
    product, scale, bias = _product(device)
    return product, scale, bias, "gelu", dtype, torch.rand(37, generator=_generator()).to(device) + 0.1


def dequantize_layer_norm_rows_case(dtype: torch.dtype, device: str, quantize: bool = True) -> Case:
    product, scale, bias = _product(device)
    generator = _generator()
    residual, weight, layer_norm_bias = (torch.randn(shape, generator=generator).to(device, dtype)
                                         for shape in ((9, 37), (37,), (37,)))
    return product, scale, bias, residual, weight, layer_norm_bias, 1e-12, dtype, quantize, None


def int8_amx_pack_weight_case(dtype: torch.dtype, device: str) -> Case:
    # a layout op on int8 weights: dtype plays no part (the CPU kernel packs on any CPU)
    return (torch.randint(-127, 128, (32, 128), generator=_generator(), dtype=torch.int8).to(device),)


CASES: dict[str, Callable[[torch.dtype, str], Case]] = {
    "softmax_with_significance": softmax_with_significance_case,
    "select_and_gather": select_and_gather_case,
    "restore": restore_case,
    "attention": attention_case,
    "attention_with_significance": attention_with_significance_case,
    "quantize_rows": quantize_rows_case,
    "dequantize_rows": dequantize_rows_case,
    "dequantize_quantize_rows": dequantize_quantize_rows_case,
    "dequantize_layer_norm_rows": dequantize_layer_norm_rows_case,
    "int8_amx_pack_weight": int8_amx_pack_weight_case,
}


# Ops whose weight is prepacked by oneDNN (a MkldnnCPU tensor without storage, CPU only): opcheck reads every
# input's data pointer in each of its checks, and fake tensors and torch.compile do not take such tensors, so these
# have no case; tests/ops/test_int8_linear_op.py checks what the schema declares (new outputs, inputs unchanged).
ONEDNN_WEIGHT_OPS = {"int8_linear", "int8_linear_quantize", "int8_linear_layer_norm"}


def registered_ops() -> set[str]:
    """The names of every op in the dtb namespace, as the dispatcher holds them."""
    return {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("dtb::")}


def _has_kernel(name: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dtb::{name}", dispatch_key)


def test_every_registered_op_has_a_case() -> None:
    assert registered_ops() == set(CASES) | ONEDNN_WEIGHT_OPS
    assert DIFFERENTIABLE <= set(CASES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck_on_cpu(name: str, dtype: torch.dtype) -> None:
    opcheck(getattr(torch.ops.dtb, name).default, CASES[name](dtype, "cpu"))


@pytest.mark.parametrize("quantize", [False, True])
def test_opcheck_layer_norm_rows_with_and_without_its_quantized_outputs(quantize: bool) -> None:
    # without `quantize` the second and third outputs are empty [0, N] and [0] tensors, which the fake must match
    opcheck(torch.ops.dtb.dequantize_layer_norm_rows.default,
            dequantize_layer_norm_rows_case(torch.float32, "cpu", quantize))


def test_opcheck_attention_without_a_mask() -> None:
    query, key, value = _qkv(torch.float32, "cpu")
    opcheck(torch.ops.dtb.attention.default, (query, key, value, None, 32 ** -0.5))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_opcheck_on_cuda(name: str, dtype: torch.dtype) -> None:
    if not _has_kernel(name, "CUDA"):
        pytest.skip(f"dtb::{name} has no CUDA kernel (CPU only)")
    opcheck(getattr(torch.ops.dtb, name).default, CASES[name](dtype, "cuda"))
