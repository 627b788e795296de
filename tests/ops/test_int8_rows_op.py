"""The int8 row kernels (dtb::quantize_rows, dtb::dequantize_rows, dtb::dequantize_quantize_rows) against
dtb_ext.reference, on CPU.

quantize_rows must match bit for bit (the int8 values feed an exact integer matmul); dequantize_rows within float32
rounding (the kernel fuses multiply-adds, its GELU is a polynomial), and within one bfloat16 rounding step when it
rounds to bfloat16; dequantize_quantize_rows must equal quantize_rows of dequantize_rows bit for bit (it is their
fusion, and the int8 feed-forward relies on it giving the unfused path's values).
"""
from __future__ import annotations

import pytest
import torch

from dtb_ext import ops, reference
from test_ops import require_kernels  # noqa: F401  (autouse: fails, or skips with DTB_ALLOW_NO_KERNELS=1, unbuilt)


# Widths: the model's (384, 1536), and ones that leave a scalar tail after the vector loop.
WIDTHS = [1, 7, 37, 384, 1536]


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothed", [False, True])
def test_quantize_rows_matches_the_reference_bit_for_bit(columns: int, dtype: torch.dtype, smoothed: bool) -> None:
    generator = torch.Generator().manual_seed(columns)
    x = (torch.randn(9, columns, generator=generator) * 3).to(dtype)
    x[2] = 0  # an all-zero row takes the minimum scale
    x[4, 0] = 500  # an outlier row
    divisor = torch.rand(columns, generator=generator) + 0.1 if smoothed else None
    quantized, scale = torch.ops.dtb.quantize_rows(x, divisor)
    expected_quantized, expected_scale = reference.quantize_rows(x, divisor)
    assert quantized.dtype == torch.uint8 and scale.dtype == torch.float32 and scale.shape == (9,)
    assert torch.equal(quantized, expected_quantized)
    assert torch.equal(scale, expected_scale)
    assert int(quantized.min()) >= 1 and int(quantized.max()) <= 255  # int8 values -127..127 plus 128


def test_quantize_rows_rounds_half_to_even_and_is_symmetric() -> None:
    # Row scale 1 (max |v| = 127): 2.5 -> 2, 3.5 -> 4, -2.5 -> -2, 0.5 -> 0.
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.5, -127.0]])
    quantized, scale = torch.ops.dtb.quantize_rows(x, None)
    assert (quantized.to(torch.int16) - 128).tolist() == [[127, 2, 4, -2, 0, -127]]
    assert scale.tolist() == [1.0]


def test_quantize_rows_accepts_non_contiguous_and_empty_inputs() -> None:
    x = torch.randn(24, 10).t()
    quantized, scale = torch.ops.dtb.quantize_rows(x, None)
    expected_quantized, expected_scale = reference.quantize_rows(x.contiguous(), None)
    assert torch.equal(quantized, expected_quantized) and torch.equal(scale, expected_scale)
    empty_quantized, empty_scale = torch.ops.dtb.quantize_rows(torch.empty(0, 16), None)
    assert empty_quantized.shape == (0, 16) and empty_scale.shape == (0,)


@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("columns", [7, 384, 1536])
def test_dequantize_rows_matches_the_reference(activation: str, dtype: torch.dtype, with_bias: bool,
                                               with_residual: bool, columns: int) -> None:
    generator = torch.Generator().manual_seed(columns)
    rows = 11
    product = torch.randn(rows, columns, generator=generator) * 40
    scale = torch.rand(rows, generator=generator) * 0.1
    bias = torch.randn(columns, generator=generator) if with_bias else None
    residual = torch.randn(rows, columns, generator=generator).to(dtype) if with_residual else None
    out = torch.ops.dtb.dequantize_rows(product, scale, bias, residual, activation, dtype)
    expected = reference.dequantize_rows(product.double(), scale.double(), None if bias is None else bias.double(),
                                         None if residual is None else residual.double(), activation, torch.float64)
    assert out.dtype == dtype and out.shape == (rows, columns)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    else:
        # One rounding to bfloat16 (relative step 2^-8), plus float32 rounding before it.
        torch.testing.assert_close(out.double(), expected, rtol=2 ** -8, atol=1e-5)


def test_dequantize_rows_accepts_non_contiguous_and_empty_inputs() -> None:
    product = torch.randn(16, 5).t()
    scale = torch.rand(5)
    bias = torch.randn(32)[::2]
    out = torch.ops.dtb.dequantize_rows(product, scale, bias, None, "gelu", torch.float32)
    expected = reference.dequantize_rows(product.contiguous(), scale, bias.contiguous(), None, "gelu", torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    empty = torch.ops.dtb.dequantize_rows(torch.empty(0, 8), torch.empty(0), None, None, "none", torch.bfloat16)
    assert empty.shape == (0, 8) and empty.dtype == torch.bfloat16


@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothed", [False, True])
@pytest.mark.parametrize("columns", [7, 37, 50, 384, 1536])
def test_dequantize_quantize_rows_is_the_two_kernels_bit_for_bit(activation: str, dtype: torch.dtype,
                                                                 smoothed: bool, columns: int) -> None:
    generator = torch.Generator().manual_seed(columns + 1)
    rows = 13
    product = torch.randn(rows, columns, generator=generator) * 40
    product[4] = 0  # an all-zero row gets the minimum scale
    scale = torch.rand(rows, generator=generator) * 0.1
    bias = torch.randn(columns, generator=generator)
    divisor = torch.rand(columns, generator=generator) + 0.25 if smoothed else None
    quantized, quantized_scale = torch.ops.dtb.dequantize_quantize_rows(product, scale, bias, activation, dtype,
                                                                        divisor)
    dequantized = torch.ops.dtb.dequantize_rows(product, scale, bias, None, activation, dtype)
    expected_quantized, expected_scale = torch.ops.dtb.quantize_rows(dequantized, divisor)
    assert quantized.dtype == torch.uint8 and quantized.shape == (rows, columns)
    assert torch.equal(quantized, expected_quantized) and torch.equal(quantized_scale, expected_scale)


def test_dequantize_quantize_rows_accepts_non_contiguous_inputs_and_matches_the_reference() -> None:
    product = torch.randn(40, 9).t() * 20
    scale = torch.rand(9) * 0.1
    quantized, quantized_scale = torch.ops.dtb.dequantize_quantize_rows(product, scale, None, "gelu",
                                                                        torch.bfloat16, None)
    with ops.reference_ops():
        expected_quantized, expected_scale = ops.dequantize_quantize_rows(product, scale, None, "gelu",
                                                                          torch.bfloat16)
    # The reference's GELU is torch's: a bfloat16 rounding can differ, and move a value by one int8 level.
    assert (quantized.int() - expected_quantized.int()).abs().max() <= 1
    torch.testing.assert_close(quantized_scale, expected_scale, rtol=2 ** -8, atol=0)
    empty = torch.ops.dtb.dequantize_quantize_rows(torch.empty(0, 8), torch.empty(0), None, "none", torch.float32,
                                                   None)
    assert empty[0].shape == (0, 8) and empty[1].shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("columns", [7, 37, 384])
def test_dequantize_layer_norm_rows_matches_the_reference(dtype: torch.dtype, quantize: bool, affine: bool,
                                                          columns: int) -> None:
    generator = torch.Generator().manual_seed(columns + 2)
    rows = 9
    product = torch.randn(rows, columns, generator=generator) * 40
    scale = torch.rand(rows, generator=generator) * 0.1
    bias = torch.randn(columns, generator=generator)
    residual = (torch.randn(rows, columns, generator=generator) * 3 + 1).to(dtype)
    weight = (torch.rand(columns, generator=generator) + 0.5).to(dtype) if affine else None
    norm_bias = torch.randn(columns, generator=generator).to(dtype) if affine else None
    divisor = torch.rand(columns, generator=generator) + 0.25 if quantize else None
    out, quantized, quantized_scale = torch.ops.dtb.dequantize_layer_norm_rows(
        product, scale, bias, residual, weight, norm_bias, 1e-12, dtype, quantize, divisor)
    # The oracle in float64 from the same rounded sum (dequantize_rows' kernel: the rounding both start from).
    summed = torch.ops.dtb.dequantize_rows(product, scale, bias, residual, "none", dtype)
    expected = torch.nn.functional.layer_norm(summed.double(), (columns,),
                                              None if weight is None else weight.double(),
                                              None if norm_bias is None else norm_bias.double(), 1e-12)
    assert out.dtype == dtype and out.shape == (rows, columns)
    # One rounding to dtype (2^-8 for bfloat16) plus float32 LayerNorm arithmetic.
    tolerance = 2 ** -8 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    if quantize:
        expected_quantized, expected_scale = torch.ops.dtb.quantize_rows(out, divisor)
        assert torch.equal(quantized, expected_quantized) and torch.equal(quantized_scale, expected_scale)
    else:
        assert quantized.shape == (0, columns) and quantized_scale.shape == (0,)
    with ops.reference_ops():
        reference_out, _, _ = ops.dequantize_layer_norm_rows(product, scale, bias, residual, weight, norm_bias,
                                                             1e-12, dtype, False)
    torch.testing.assert_close(out.double(), reference_out.double(), rtol=2 * tolerance, atol=2 * tolerance)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: torch.ops.dtb.quantize_rows(torch.randn(2, 3, 4), None), r"x must be \[M, K\] \(2-D\)"),
    (lambda: torch.ops.dtb.quantize_rows(torch.randn(2, 4).double(), None), "x must be float32 or bfloat16"),
    (lambda: torch.ops.dtb.quantize_rows(torch.randn(2, 4), torch.ones(5)), r"divisor must be \[K\] = \[4\]"),
    (lambda: torch.ops.dtb.quantize_rows(torch.randn(2, 4), torch.ones(4).double()), "divisor must be float32"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(3), None, None, "none", torch.float32),
     r"scale must be \[M\] = \[2\]"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4).bfloat16(), torch.ones(2), None, None, "none",
                                           torch.float32), "product must be float32"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(2), torch.ones(3), None, "none",
                                           torch.float32), r"bias must be \[N\] = \[4\]"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 4), "none",
                                           torch.bfloat16), "residual must be BFloat16"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 5), "none",
                                           torch.float32), "residual must have product's shape"),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(2), None, None, "relu", torch.float32),
     'activation must be "none", "gelu" or "gelu_tanh", got "relu"'),
    (lambda: torch.ops.dtb.dequantize_rows(torch.randn(2, 4), torch.ones(2), None, None, "none", torch.float16),
     "dtype must be float32 or bfloat16"),
    (lambda: torch.ops.dtb.dequantize_quantize_rows(torch.randn(2, 4), torch.ones(2), None, "gelu", torch.float32,
                                                    torch.ones(5)),
     r"dtb::dequantize_quantize_rows: divisor must be \[K\] = \[4\]"),
    (lambda: torch.ops.dtb.dequantize_quantize_rows(torch.randn(2, 4), torch.ones(3), None, "gelu", torch.float32,
                                                    None), r"dtb::dequantize_quantize_rows: scale must be \[M\]"),
    (lambda: torch.ops.dtb.dequantize_quantize_rows(torch.randn(2, 4), torch.ones(2), None, "relu", torch.float32,
                                                    None), 'activation must be "none", "gelu" or "gelu_tanh"'),
    (lambda: torch.ops.dtb.dequantize_layer_norm_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 4),
                                                      torch.ones(5), None, 1e-5, torch.float32, False, None),
     r"dtb::dequantize_layer_norm_rows: LayerNorm weight must be \[N\] = \[4\]"),
    (lambda: torch.ops.dtb.dequantize_layer_norm_rows(torch.randn(2, 4), torch.ones(2), None,
                                                      torch.ones(2, 4).bfloat16(), None, torch.ones(4), 1e-5,
                                                      torch.bfloat16, False, None),
     "LayerNorm bias must be BFloat16"),
    (lambda: torch.ops.dtb.dequantize_layer_norm_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 4),
                                                      None, None, -1.0, torch.float32, False, None),
     "eps must be >= 0, got -1"),
    (lambda: torch.ops.dtb.dequantize_layer_norm_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 4),
                                                      None, None, 1e-5, torch.float32, False, torch.ones(4)),
     "a divisor is only used with quantize=True"),
    (lambda: torch.ops.dtb.dequantize_layer_norm_rows(torch.randn(2, 4), torch.ones(2), None, torch.ones(2, 3),
                                                      None, None, 1e-5, torch.float32, False, None),
     "residual must have product's shape"),
])
def test_bad_input_raises_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()


def test_the_reference_refuses_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation must be one of none, gelu, gelu_tanh; got 'relu'"):
        reference.dequantize_rows(torch.ones(1, 2), torch.ones(1), None, None, "relu", torch.float32)


def test_ops_route_to_the_reference_when_a_gradient_is_recorded() -> None:
    x = torch.randn(3, 8, requires_grad=True)
    quantized, scale = ops.quantize_rows(x)
    expected_quantized, expected_scale = reference.quantize_rows(x.detach())
    assert torch.equal(quantized, expected_quantized) and torch.equal(scale, expected_scale)
    product = torch.randn(3, 4, requires_grad=True)
    out = ops.dequantize_rows(product, scale, None, None, "gelu", torch.float32)
    assert out.requires_grad
