"""The int8 Linear ops' GEMM on AMX tiles (csrc/cpu/int8_amx_gemm.cpp, issue 28): the same op with the weight packed
by dtb::int8_amx_pack_weight and by onednn::qlinear_prepack gives the same output, bit for bit, for the three ops,
float32 and bfloat16, row counts around the 16-row tiles and 32-row blocks, the MiniLM shapes and small ones (an odd
number of 16-column tiles), with and without bias, residual, divisor and GELU. The pack op's layout is the
reference's and its errors say what was expected. Int8 layers pack for AMX where the ops can run it, for oneDNN
under DTB_INT8_AMX=0, `gemm_packing("onednn")` or a shape the AMX GEMM does not take. Skipped where AMX-INT8 is not
usable (kernel_info()["cpu_amx_int8"]), except the pack op's layout and errors, which hold on any CPU.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from dtb_ext import ops, reference
from dtb_ext.precision import int8
from repo_paths import REPO_ROOT
from test_ops import require_kernels  # noqa: F401  (autouse: fails, or skips with DTB_ALLOW_NO_KERNELS=1, unbuilt)

needs_onednn = pytest.mark.skipif(not hasattr(torch.ops.onednn, "qlinear_prepack"), reason="no oneDNN int8 ops")
needs_amx = pytest.mark.skipif(not ops.int8_amx_usable(),
                               reason="AMX-INT8 is not usable here (kernel_info()['cpu_amx_int8'] is False)")

ROWS = [1, 7, 16, 17, 33, 182, 1000]
# (K, N): the MiniLM-L6 shapes, and small ones with an odd number of 16-column tiles.
SHAPES = [(384, 1152), (384, 384), (384, 1536), (1536, 384), (64, 16), (128, 48)]
# (bias, residual or divisor, activation)
OPTIONS = [(False, False, "none"), (True, True, "gelu")]


def _weight(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)


def _inputs(rows: int, in_features: int, out_features: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    quantized, scale = reference.quantize_rows(torch.randn(rows, in_features, generator=generator) * 2)
    weight_scale = torch.rand(out_features, generator=generator) * 1e-2 + 1e-3
    bias = torch.randn(out_features, generator=generator)
    return quantized, scale, weight_scale, torch.zeros(out_features, dtype=torch.int64), bias


def _both_packings(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.int8_amx_pack_weight(weight), torch.ops.onednn.qlinear_prepack(weight, None)


def _assert_same(got, expected) -> None:
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for value, wanted in zip(got, expected, strict=True):
        assert value.dtype == wanted.dtype and value.shape == wanted.shape
        assert torch.equal(value, wanted)


# ---- the pack op (any CPU) ----

@pytest.mark.parametrize("out_features,in_features", [(16, 64), (48, 128), (1152, 384), (384, 1536)])
def test_the_pack_op_gives_the_reference_layout(out_features: int, in_features: int) -> None:
    weight = _weight(out_features, in_features)
    packed = torch.ops.dtb.int8_amx_pack_weight(weight)
    assert packed.dtype == torch.int8 and packed.shape == (out_features // 16, 16 * in_features + 64)
    assert torch.equal(packed, reference.int8_amx_pack_weight(weight))
    assert torch.equal(reference.int8_amx_unpack_weight(packed), weight)
    corrections = packed[:, 16 * in_features:].contiguous().view(torch.int32).reshape(-1)
    assert torch.equal(corrections, weight.sum(dim=1, dtype=torch.int32) * 128)


def test_the_pack_op_takes_a_non_contiguous_weight() -> None:
    weight = _weight(64, 32).t()  # [32, 64] view
    assert torch.equal(torch.ops.dtb.int8_amx_pack_weight(weight), reference.int8_amx_pack_weight(weight.contiguous()))


@pytest.mark.parametrize("weight,message", [
    (torch.zeros(16, 64), r"weight must be an \[N, K\] int8 CPU tensor, got a Float tensor .* with shape \[16, 64\]"),
    (torch.zeros(16, 64, 1, dtype=torch.int8), r"int8 CPU tensor, got a Char tensor .* with shape \[16, 64, 1\]"),
    (torch.zeros(24, 64, dtype=torch.int8),
     r"N a positive multiple of 16 and K a positive multiple of 64 .*got N = 24 and K = 64"),
    (torch.zeros(16, 96, dtype=torch.int8), r"got N = 16 and K = 96"),
    (torch.zeros(0, 64, dtype=torch.int8), r"got N = 0 and K = 64"),
])
def test_the_pack_op_says_what_it_expected(weight: torch.Tensor, message: str) -> None:
    with pytest.raises(RuntimeError, match="dtb::int8_amx_pack_weight: .*" + message):
        torch.ops.dtb.int8_amx_pack_weight(weight)


# ---- the ops: AMX against oneDNN, bit for bit ----

@needs_amx
@needs_onednn
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "bias-residual-gelu"])
def test_int8_linear_on_amx_is_the_onednn_path(rows, in_features, out_features, dtype, options) -> None:
    with_bias, with_residual, activation = options
    quantized, scale, weight_scale, zero_points, bias = _inputs(rows, in_features, out_features, seed=rows)
    bias = bias if with_bias else None
    residual = torch.randn(rows, out_features).to(dtype) if with_residual else None
    amx, onednn = _both_packings(_weight(out_features, in_features))
    got, expected = (torch.ops.dtb.int8_linear(quantized, scale, weight, weight_scale, zero_points, bias, residual,
                                               activation, dtype) for weight in (amx, onednn))
    _assert_same(got, expected)


@needs_amx
@needs_onednn
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "bias-divisor-gelu"])
def test_int8_linear_quantize_on_amx_is_the_onednn_path(rows, in_features, out_features, dtype, options) -> None:
    with_bias, with_divisor, activation = options
    quantized, scale, weight_scale, zero_points, bias = _inputs(rows, in_features, out_features, seed=rows + 1)
    bias = bias if with_bias else None
    divisor = torch.rand(out_features) + 0.1 if with_divisor else None
    amx, onednn = _both_packings(_weight(out_features, in_features, seed=1))
    got, expected = (torch.ops.dtb.int8_linear_quantize(quantized, scale, weight, weight_scale, zero_points, bias,
                                                        activation, dtype, divisor) for weight in (amx, onednn))
    _assert_same(got, expected)


@needs_amx
@needs_onednn
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("in_features,out_features", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "bias-quantized-divisor"])
def test_int8_linear_layer_norm_on_amx_is_the_onednn_path(rows, in_features, out_features, dtype, options) -> None:
    with_bias, quantize, _ = options
    quantized, scale, weight_scale, zero_points, bias = _inputs(rows, in_features, out_features, seed=rows + 2)
    bias = bias if with_bias else None
    residual = torch.randn(rows, out_features).to(dtype)
    gamma, beta = (torch.randn(out_features).to(dtype) for _ in range(2))
    divisor = torch.rand(out_features) + 0.1 if quantize else None
    amx, onednn = _both_packings(_weight(out_features, in_features, seed=2))
    got, expected = (torch.ops.dtb.int8_linear_layer_norm(quantized, scale, weight, weight_scale, zero_points, bias,
                                                          residual, gamma, beta, 1e-12, dtype, quantize, divisor)
                     for weight in (amx, onednn))
    _assert_same(got, expected)


@needs_amx
def test_sums_past_float32s_integers_are_rounded_once_from_the_exact_sum() -> None:
    """Sums of magnitude 2^24 and more are not all float32 values. The AMX GEMM rounds the exact int32 sum of the int8
    rows once (then the product with the scale once): the documented result, as `torch._int_mm(...).float() *
    scale` gives it. oneDNN differs there: it converts its uint8 sum and the zero point's correction 128 * colsum(w)
    to float32 separately and subtracts them in float32 (in its full row blocks; some tail rows are exact), so the
    two paths agree bit for bit only while those stay below 2^24, as they do by far for real weights and
    activations (the tests above, and the MiniLM model in bench/REPORT-int8-amx-gemm.md)."""
    in_features, out_features, rows = 1536, 48, 33
    generator = torch.Generator().manual_seed(5)
    weight = torch.randint(120, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    weight[1::2] *= -1
    quantized = torch.randint(250, 256, (rows, in_features), generator=generator, dtype=torch.uint8)
    quantized[::3] = 256 - quantized[::3]  # int8 values near -127 too
    sums = (quantized.to(torch.int32) - 128) @ weight.to(torch.int32).t()
    assert int(sums.abs().max()) > 2 ** 24 and bool((sums % 2 != 0).any())
    scale, weight_scale = torch.ones(rows), torch.rand(out_features, generator=generator)
    zero_points = torch.zeros(out_features, dtype=torch.int64)
    got = torch.ops.dtb.int8_linear(quantized, scale, ops.int8_amx_pack_weight(weight), weight_scale, zero_points,
                                    None, None, "none", torch.float32)
    assert torch.equal(got, sums.float() * weight_scale)


@needs_amx
def test_no_rows_give_empty_outputs() -> None:
    quantized, scale, weight_scale, zero_points, bias = _inputs(0, 64, 16, seed=0)
    out = torch.ops.dtb.int8_linear(quantized, scale, ops.int8_amx_pack_weight(_weight(16, 64)), weight_scale,
                                    zero_points, bias, None, "none", torch.float32)
    assert out.shape == (0, 16)


@needs_amx
def test_non_contiguous_rows_and_the_reference_route() -> None:
    quantized, scale, weight_scale, zero_points, bias = _inputs(40, 128, 32, seed=3)
    weight = _weight(32, 128, seed=3)
    amx = ops.int8_amx_pack_weight(weight)
    wide = torch.zeros(40, 256, dtype=torch.uint8)
    wide[:, ::2] = quantized
    strided = wide[:, ::2]
    got = torch.ops.dtb.int8_linear(strided, scale, amx, weight_scale, zero_points, bias, None, "none", torch.float32)
    product = (quantized.to(torch.int32) - 128) @ weight.to(torch.int32).t()
    assert torch.equal(reference.int8_matmul(quantized, amx, weight_scale, zero_points),
                       product.float() * weight_scale)
    expected = torch.ops.dtb.dequantize_rows(product.float() * weight_scale, scale, bias, None, "none", torch.float32)
    assert torch.equal(got, expected)
    with ops.reference_ops():
        referenced = ops.int8_linear(quantized, scale, amx, weight_scale, zero_points, bias, None, "none",
                                     torch.float32)
    torch.testing.assert_close(referenced, got, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weight,message", [
    (torch.zeros(2, 64 * 16 + 64, dtype=torch.int8)[:, :-1], r"got a Char tensor of layout Strided on cpu and shape "
                                                            r"\[2, 1087\]"),
    (torch.zeros(2, 64 * 16 + 64, dtype=torch.int8).t(), r"\(not contiguous\)"),
    (torch.zeros(2, 64 * 16 + 64, dtype=torch.uint8), r"got a Byte tensor"),
    (torch.zeros(64, 32, dtype=torch.int8), r"shape \[64, 32\]"),
])
def test_a_weight_in_neither_layout_is_refused_naming_both(weight: torch.Tensor, message: str) -> None:
    quantized, scale, weight_scale, zero_points, _ = _inputs(4, 64, 32, seed=0)
    with pytest.raises(RuntimeError, match=r"dtb::int8_linear: weight must be an int8 weight prepacked either by "
                                           r"onednn::qlinear_prepack .* or by dtb::int8_amx_pack_weight .*" + message):
        torch.ops.dtb.int8_linear(quantized, scale, weight, weight_scale, zero_points, None, None, "none",
                                  torch.float32)


def test_an_amx_weight_of_another_k_is_refused() -> None:
    quantized, scale, weight_scale, zero_points, _ = _inputs(4, 64, 32, seed=0)
    with pytest.raises(RuntimeError, match="weight takes K = 128 input features, quantized has 64"):
        torch.ops.dtb.int8_linear_quantize(quantized, scale, ops.int8_amx_pack_weight(_weight(32, 128)),
                                           weight_scale, zero_points, None, "none", torch.float32, None)


# ---- which GEMM int8 layers pack for ----

def _layer(out_features: int, in_features: int) -> int8.Int8Linear:
    linear = torch.nn.Linear(in_features, out_features)
    torch.nn.init.normal_(linear.weight, std=0.05)
    return int8.Int8Linear.from_linear(linear)


def _packed_format(layer: int8.Int8Linear) -> str:
    weight = layer.packed_weight().weight
    return "none" if weight is None else "onednn" if weight.is_mkldnn else "amx"


@needs_amx
@needs_onednn
def test_layers_pack_for_amx_by_default_and_for_onednn_when_asked() -> None:
    x = torch.randn(3, 11, 384)
    with torch.inference_mode():
        default, onednn = _layer(1152, 384), _layer(1152, 384)
        onednn.load_state_dict(default.state_dict())
        with int8.gemm_packing("onednn"):
            assert _packed_format(onednn) == "onednn"
        assert _packed_format(default) == "amx"
        assert _packed_format(onednn) == "onednn"  # kept once packed
        assert torch.equal(default(x), onednn(x))
        assert torch.equal(int8.int8_linear(x.bfloat16(), default, "gelu"), int8.int8_linear(x.bfloat16(), onednn,
                                                                                               "gelu"))


@needs_onednn
def test_a_shape_the_amx_gemm_does_not_take_is_packed_for_onednn() -> None:
    x = torch.randn(5, 40)
    with torch.inference_mode():
        odd = _layer(24, 40)  # N not a multiple of 16, K not of 64
        with int8.gemm_packing("amx"):
            assert _packed_format(odd) == "onednn"
        quantized, scale = int8.quantize_input(x, odd)
        packed = odd.packed_weight()
        product = reference.int8_matmul(quantized, packed.weight, odd.weight_scale, packed.zero_points)
        expected = ops.dequantize_rows(product, scale, odd.bias, None, "none", torch.float32)
        assert torch.equal(odd(x), expected)


@needs_amx
def test_copies_and_pickles_drop_the_amx_packed_weight_and_pack_again() -> None:
    layer = _layer(48, 128)
    x = torch.randn(7, 128)
    with torch.inference_mode():
        expected = layer(x)
        assert _packed_format(layer) == "amx"
        for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert other._packed is None
            assert torch.equal(other(x), expected) and _packed_format(other) == "amx"


def test_gemm_packing_takes_only_its_choices() -> None:
    with pytest.raises(ValueError, match="gemm_packing must be one of auto, amx, onednn; got 'mkl'"):
        with int8.gemm_packing("mkl"):
            pass


def _python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("ATEN_CPU_CAPABILITY", "DTB_INT8_AMX")}
    environment.update(env, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


_FORMAT_OF_A_LAYER = """
import json, torch
from dtb_ext import ops
from dtb_ext.precision import int8
layer = int8.Int8Linear.from_linear(torch.nn.Linear(64, 32))
weight = layer.packed_weight().weight
print(json.dumps([ops.kernel_info()["cpu_amx_int8"], "none" if weight is None else "onednn" if weight.is_mkldnn
                  else "amx"]))
"""


@needs_amx
@needs_onednn
def test_dtb_int8_amx_0_packs_for_onednn() -> None:
    assert json.loads(_python(_FORMAT_OF_A_LAYER)) == [True, "amx"]
    # the hardware still allows it (kernel_info), the layers pack for oneDNN
    assert json.loads(_python(_FORMAT_OF_A_LAYER, DTB_INT8_AMX="0")) == [True, "onednn"]


@needs_amx
@needs_onednn
def test_without_the_avx512_kernels_amx_is_not_used_and_an_amx_weight_is_refused() -> None:
    assert json.loads(_python(_FORMAT_OF_A_LAYER, ATEN_CPU_CAPABILITY="avx2")) == [False, "onednn"]
    code = """
import torch
from dtb_ext import ops
weight = ops.int8_amx_pack_weight(torch.ones(16, 64, dtype=torch.int8))
try:
    torch.ops.dtb.int8_linear(torch.zeros(2, 64, dtype=torch.uint8), torch.ones(2), weight, torch.ones(16),
                              torch.zeros(16, dtype=torch.int64), None, None, "none", torch.float32)
except RuntimeError as error:
    print(str(error).splitlines()[0])
"""
    message = _python(code, ATEN_CPU_CAPABILITY="avx2")
    assert "dtb::int8_linear: weight is packed by dtb::int8_amx_pack_weight for AMX tiles, which this process " \
           "cannot use" in message
