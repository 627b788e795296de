"""dtb::attention (csrc/cpu/attention.cpp) against the float64 reference (dtb_ext.reference.attention), on CPU.

The kernel's paths are covered: float32 FMAs (float32, float16, and bf16 where the AVX512-BF16 path is not
chosen), the AVX512-BF16 dot products (bf16 with a head size that is a multiple of 16, on a CPU that has them) and,
on a CPU with AMX, AMX tiles (bf16 with a head size that is a multiple of 32; the shapes with d = 16 and 48 take
the dot products there, and tests/ops/test_cpu_capability.py reruns this file with DTB_ATTENTION_AMX=0).
Tolerances follow docs/design.md §4: in reduced precision the kernel's error against float64 must be at most twice the
error of torch's own SDPA in that precision on the same inputs. tests/ops/test_cpu_capability.py reruns this file
under every instruction set this CPU runs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dtb_ext import ops, reference
from test_ops import make_mask, require_kernels, varied_mask  # noqa: F401  (require_kernels is autouse)

# (B, H, n, d): batch 1 to 5, odd and even lengths around the kernel's 16/32-key steps and 16-row AMX tiles, head
# sizes on and off the bf16 paths (d % 16, d % 32), BERT-base's d = 64, MiniLM's d = 32, and d = 128 (four AMX tiles
# deep).
SHAPES = [(1, 12, 184, 32), (1, 12, 183, 32), (2, 3, 17, 16), (5, 4, 64, 64), (1, 2, 1, 32), (3, 2, 33, 48),
          (2, 4, 40, 10), (1, 12, 384, 32), (2, 2, 50, 128)]


def _qkv(shape: tuple[int, int, int, int], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """query, key, value [B, H, n, d] as the dynamic encoder sees them: strided views of one fused projection."""
    batch, heads, length, size = shape
    generator = torch.Generator().manual_seed(seed)
    fused = torch.randn(batch, length, 3 * heads * size, generator=generator).to(dtype)
    return tuple(part.view(batch, length, heads, size).transpose(1, 2) for part in fused.split(heads * size, dim=-1))


def _sdpa(query, key, value, mask, scale):
    """torch's SDPA, the bound's yardstick. Under ATEN_CPU_CAPABILITY below avx512 on a CPU with AMX (the forced-ISA
    rerun of tests/ops/test_cpu_capability.py), torch 2.13's CPU flash attention fails in bf16 ("pack_vnni2 is only
    supported when avx512 is supported"); there its math backend, the other CPU implementation, is the yardstick."""
    attn_mask = None if mask is None else mask.bool()[:, None, None, :]
    try:
        return F.scaled_dot_product_attention(query, key, value, scale=scale, attn_mask=attn_mask)
    except RuntimeError as error:
        if "pack_vnni2" not in str(error):
            raise
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(query, key, value, scale=scale, attn_mask=attn_mask)


def _max_error(value: torch.Tensor, truth: torch.Tensor, rows: torch.Tensor) -> float:
    """Largest absolute error over the query rows of examples that have a valid key ([B] bool `rows`)."""
    return (value.double() - truth.double())[rows].abs().max().item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_float64_within_twice_sdpa_error(shape, dtype, masked) -> None:
    query, key, value = _qkv(shape, dtype, seed=shape[2] * 7 + shape[3])
    scale = shape[3] ** -0.5
    mask = varied_mask(shape[0], shape[2], torch.Generator().manual_seed(shape[2])) if masked else None
    # An example without any valid key is covered by its own test; SDPA gives NaN there.
    rows = torch.ones(shape[0], dtype=torch.bool) if mask is None else mask.bool().any(dim=1)
    truth = reference.attention(query.double(), key.double(), value.double(), mask, scale)
    with torch.inference_mode():
        output = ops.attention(query, key, value, mask, scale)
        pytorch = _sdpa(query, key, value, mask, scale)
    assert output.dtype == dtype and output.shape == query.shape
    # SDPA's own error, floored at a few ulps of the dtype: in float32 both are at rounding level.
    floor = 8 * torch.finfo(dtype).eps
    assert _max_error(output, truth, rows) <= 2 * max(_max_error(pytorch, truth, rows), floor)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_with_significance_matches_float64(shape, dtype) -> None:
    """The context as `attention` gives it, and the significance within twice the error of the unfused chain in
    this dtype (matmul, softmax_with_significance) against float64."""
    query, key, value = _qkv(shape, dtype, seed=shape[2] + shape[3])
    scale = shape[3] ** -0.5
    mask = varied_mask(shape[0], shape[2], torch.Generator().manual_seed(shape[2] + 1))
    truth_context, truth_significance = reference.attention_with_significance(
        query.double(), key.double(), value.double(), mask, scale)
    with torch.inference_mode():
        context, significance = ops.attention_with_significance(query, key, value, mask, scale)
        plain = ops.attention(query, key, value, mask, scale)
        _, unfused = ops.softmax_with_significance(torch.matmul(query, key.transpose(-1, -2)) * scale, mask)
    assert torch.equal(context, plain)
    assert significance.dtype == torch.float32 and significance.shape == mask.shape
    floor = 64 * torch.finfo(torch.float32).eps * shape[1] * shape[2]  # float32 sums of H x n probabilities
    error = (significance.double() - truth_significance).abs().max().item()
    assert error <= 2 * max((unfused.double() - truth_significance).abs().max().item(), floor)
    # Padding keys receive nothing; an example without valid keys has zero significance everywhere.
    assert torch.equal(significance[~mask.bool()], torch.zeros_like(significance[~mask.bool()]))


def test_significance_does_not_depend_on_the_thread_count() -> None:
    query, key, value = _qkv((3, 12, 97, 32), torch.bfloat16, seed=6)
    mask = make_mask([97, 50, 3], 97)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with torch.inference_mode():
                results.append(ops.attention_with_significance(query, key, value, mask, 0.17))
    finally:
        torch.set_num_threads(threads)
    for context, significance in results[1:]:
        assert torch.equal(context, results[0][0]) and torch.equal(significance, results[0][1])


def test_output_is_a_view_whose_transpose_back_is_free() -> None:
    query, key, value = _qkv((2, 3, 17, 16), torch.bfloat16, seed=0)
    with torch.inference_mode():
        output = ops.attention(query, key, value, None, 0.25)
    assert output.transpose(1, 2).is_contiguous()


def test_fully_masked_example_gets_zeros_and_others_are_unaffected() -> None:
    query, key, value = _qkv((3, 2, 20, 32), torch.bfloat16, seed=1)
    mask = make_mask([20, 0, 7], 20)
    with torch.inference_mode():
        output = ops.attention(query, key, value, mask, 0.2)
        alone = ops.attention(query[2:], key[2:], value[2:], mask[2:], 0.2)
    assert torch.equal(output[1], torch.zeros_like(output[1]))
    assert torch.equal(output[2], alone[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_invariant_and_padding_invariant(dtype) -> None:
    """An example's output does not depend on the other examples, nor on the padding past its last real key."""
    query, key, value = _qkv((4, 12, 64, 32), dtype, seed=2)
    mask = make_mask([64, 30, 1, 45], 64)
    with torch.inference_mode():
        batched = ops.attention(query, key, value, mask, 32 ** -0.5)
        for b, length in enumerate([64, 30, 1, 45]):
            alone = ops.attention(query[b:b + 1, :, :length], key[b:b + 1, :, :length], value[b:b + 1, :, :length],
                                  None, 32 ** -0.5)
            assert torch.equal(batched[b, :, :length], alone[0])


def test_masked_keys_get_no_weight() -> None:
    """Changing a masked key's key and value vectors changes nothing."""
    query, key, value = _qkv((2, 4, 40, 32), torch.bfloat16, seed=3)
    mask = varied_mask(2, 40, torch.Generator().manual_seed(4))
    mask[0, 5] = 0
    noisy_key, noisy_value = key.clone(), value.clone()
    noisy_key[~mask.bool()[:, None, :].expand(-1, 4, -1)] = 100.0
    noisy_value[~mask.bool()[:, None, :].expand(-1, 4, -1)] = -100.0
    with torch.inference_mode():
        assert torch.equal(
            ops.attention(query, key, value, mask, 0.2), ops.attention(query, noisy_key, noisy_value, mask, 0.2)
        )


def test_with_gradient_it_runs_the_differentiable_reference() -> None:
    query, key, value = (t.float().requires_grad_() for t in _qkv((1, 2, 9, 16), torch.float32, seed=5))
    output = ops.attention(query, key, value, None, 0.25)
    output.sum().backward()
    assert query.grad is not None and key.grad is not None and value.grad is not None


def test_native_bf16_attention_reports_the_bf16_dot_product_path() -> None:
    query = torch.zeros(1, 2, 8, 32, dtype=torch.bfloat16)
    native = ops.kernel_info()["cpu_bf16_dot_products"]
    assert ops.native_bf16_attention(query) is native
    assert ops.native_bf16_attention(query.float()) is False
    assert ops.native_bf16_attention(torch.zeros(1, 2, 8, 40, dtype=torch.bfloat16)) is False
    with ops.reference_ops():
        assert ops.native_bf16_attention(query) is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 8, 16), torch.zeros(2, 8, 16), torch.zeros(2, 8, 16), None), "query must be \\[B, H, n, d\\]"),
        ((torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 9, 16), torch.zeros(1, 2, 8, 16), None),
         "must have the query's shape"),
        ((torch.zeros(1, 2, 8, 16, dtype=torch.float64),) * 3 + (None,), "float32, bfloat16 or float16"),
        ((torch.zeros(1, 2, 8, 16), torch.zeros(1, 2, 8, 16).bfloat16(), torch.zeros(1, 2, 8, 16), None),
         "like the query"),
        ((torch.zeros(1, 2, 8, 15),) * 3 + (None,), "head size \\(last dim\\) must be even"),
        ((torch.zeros(1, 2, 8, 16),) * 3 + (torch.ones(1, 9),), "mask must be \\[B, n\\] = \\[1, 8\\]"),
    ],
)
def test_bad_inputs_raise_with_what_was_expected(args, message) -> None:
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dtb.attention(*args, 0.5)
    if args[3] is not None:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.dtb.attention_with_significance(*args, 0.5)
