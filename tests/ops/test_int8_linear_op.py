"""The int8 Linear ops (dtb::int8_linear, dtb::int8_linear_quantize, dtb::int8_linear_layer_norm), which run
oneDNN's int8 matmul and an epilogue kernel block of rows by block of rows on each thread, against the matmul whole
(`reference.int8_matmul`) followed by the epilogue kernels on its product (tests/ops/test_int8_rows_op.py checks those
against the reference): bit for bit, since the int32 sums are exact and each output row depends on its own row only.
Row counts below and above a block and a thread's share (blocks of at most 1 MiB of float32 product: 160 rows at
N = 1536), and one that leaves a short last block.
"""
from __future__ import annotations

import pytest
import torch

from dtb_ext import ops, reference
from test_ops import require_kernels  # noqa: F401  (autouse: fails, or skips with DTB_ALLOW_NO_KERNELS=1, unbuilt)

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_prepack"), reason="no oneDNN int8 ops")

ROWS = [0, 1, 37, 184, 1001]


def _layer(rows: int, in_features: int, out_features: int, seed: int = 0):
    """Quantized input rows [rows, K] with their scales, an int8 weight prepacked for oneDNN with its scales and
    zero points, and a bias."""
    generator = torch.Generator().manual_seed(seed)
    quantized, scale = reference.quantize_rows(torch.randn(rows, in_features, generator=generator) * 2)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(out_features, generator=generator) * 1e-2 + 1e-3
    packed = torch.ops.onednn.qlinear_prepack(weight, None)
    bias = torch.randn(out_features, generator=generator)
    return quantized, scale, packed, weight_scale, torch.zeros(out_features, dtype=torch.int64), bias


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation,with_residual", [("none", True), ("gelu", False), ("gelu_tanh", False)])
def test_int8_linear_is_the_matmul_then_dequantize_rows(rows: int, dtype: torch.dtype, activation: str,
                                                         with_residual: bool) -> None:
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(rows, 384, 1536)
    residual = torch.randn(rows, 1536).to(dtype) if with_residual else None
    out = torch.ops.dtb.int8_linear(quantized, scale, packed, weight_scale, zero_points, bias, residual, activation,
                                    dtype)
    product = reference.int8_matmul(quantized, packed, weight_scale, zero_points)
    expected = torch.ops.dtb.dequantize_rows(product, scale, bias, residual, activation, dtype)
    assert out.dtype == dtype and torch.equal(out, expected)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("smoothed", [False, True])
def test_int8_linear_quantize_is_the_matmul_then_dequantize_quantize_rows(rows: int, smoothed: bool) -> None:
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(rows, 384, 1536, seed=1)
    divisor = torch.rand(1536) + 0.1 if smoothed else None
    out, out_scale = torch.ops.dtb.int8_linear_quantize(quantized, scale, packed, weight_scale, zero_points, bias,
                                                        "gelu", torch.bfloat16, divisor)
    product = reference.int8_matmul(quantized, packed, weight_scale, zero_points)
    expected, expected_scale = torch.ops.dtb.dequantize_quantize_rows(product, scale, bias, "gelu", torch.bfloat16,
                                                                      divisor)
    assert torch.equal(out, expected) and torch.equal(out_scale, expected_scale)


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantize", [False, True])
def test_int8_linear_layer_norm_is_the_matmul_then_dequantize_layer_norm_rows(rows: int, dtype: torch.dtype,
                                                                               quantize: bool) -> None:
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(rows, 1536, 384, seed=2)
    residual = torch.randn(rows, 384).to(dtype)
    gamma, beta = (torch.randn(384).to(dtype) for _ in range(2))
    divisor = torch.rand(384) + 0.1 if quantize else None
    got = torch.ops.dtb.int8_linear_layer_norm(quantized, scale, packed, weight_scale, zero_points, bias, residual,
                                               gamma, beta, 1e-12, dtype, quantize, divisor)
    product = reference.int8_matmul(quantized, packed, weight_scale, zero_points)
    expected = torch.ops.dtb.dequantize_layer_norm_rows(product, scale, bias, residual, gamma, beta, 1e-12, dtype,
                                                        quantize, divisor)
    for value, wanted in zip(got, expected):
        assert torch.equal(value, wanted)


def test_the_ops_leave_their_inputs_unchanged_and_return_new_tensors() -> None:
    """What opcheck's schema check would verify (it cannot read a oneDNN tensor's data pointer): no input is
    written and no output aliases an input, as the schemas declare."""
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(37, 64, 48, seed=4)
    residual, gamma, beta = torch.randn(37, 48), torch.randn(48), torch.randn(48)
    inputs = (quantized, scale, weight_scale, zero_points, bias, residual, gamma, beta)
    saved = [tensor.clone() for tensor in inputs]
    outputs = [torch.ops.dtb.int8_linear(quantized, scale, packed, weight_scale, zero_points, bias, residual, "gelu",
                                         torch.float32),
               *torch.ops.dtb.int8_linear_quantize(quantized, scale, packed, weight_scale, zero_points, bias, "gelu",
                                                   torch.float32, None),
               *torch.ops.dtb.int8_linear_layer_norm(quantized, scale, packed, weight_scale, zero_points, bias,
                                                     residual, gamma, beta, 1e-12, torch.float32, True, None)]
    assert all(torch.equal(tensor, copy) for tensor, copy in zip(inputs, saved))
    pointers = {tensor.data_ptr() for tensor in inputs}
    assert not any(output.data_ptr() in pointers for output in outputs)


def test_the_reference_route_gives_the_kernels_values() -> None:
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(37, 384, 384, seed=3)
    residual = torch.randn(37, 384).bfloat16()
    kernel = ops.int8_linear(quantized, scale, packed, weight_scale, zero_points, bias, residual, "none",
                             torch.bfloat16)
    with ops.reference_ops():
        expected = ops.int8_linear(quantized, scale, packed, weight_scale, zero_points, bias, residual, "none",
                                   torch.bfloat16)
    # both round once to bfloat16; the reference's float32 arithmetic may differ from the kernel's in the last bit
    assert torch.allclose(kernel.float(), expected.float(), rtol=2 ** -7, atol=1e-6)


def _weight_args() -> tuple:
    quantized, scale, packed, weight_scale, zero_points, bias = _layer(4, 8, 6)
    return quantized, scale, packed, weight_scale, zero_points


@pytest.mark.parametrize("call,message", [
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear(q.float(), s, w, ws, z, None, None, "none", torch.float32),
     r"dtb::int8_linear: quantized must be \[M, K\] uint8"),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear(q[:, :7], s, w, ws, z, None, None, "none", torch.float32),
     "weight takes K = 8 input features, quantized has 7"),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear(q, s, w, ws[:5], z, None, None, "none", torch.float32),
     r"weight_scale must be \[N\] = \[6\] float32"),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear(q, s, w, ws, z.int(), None, None, "none", torch.float32),
     r"weight_zero_points must be \[N\] = \[6\] int64"),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear(q, s[:3], w, ws, z, None, None, "none", torch.float32),
     r"dtb::int8_linear: scale must be \[M\] = \[4\]"),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear_quantize(q, s, w, ws, z, None, "relu", torch.float32, None),
     'activation must be "none", "gelu" or "gelu_tanh", got "relu"'),
    (lambda q, s, w, ws, z: torch.ops.dtb.int8_linear_layer_norm(q, s, w, ws, z, None, torch.ones(4, 5), None, None,
                                                                 1e-5, torch.float32, False, None),
     "dtb::int8_linear_layer_norm: residual must have product's shape"),
])
def test_bad_input_raises_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call(*_weight_args())
