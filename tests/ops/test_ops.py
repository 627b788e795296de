"""The compiled dtb ops against the pure-PyTorch reference (dtb_ext.reference), on CPU.

Kernel-vs-reference tests need the compiled extension: they fail when it is missing, unless
DTB_ALLOW_NO_KERNELS=1 (then they are skipped).
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dtb_ext import ops, reference


@pytest.fixture(autouse=True)
def require_kernels() -> None:
    if ops.has_kernels():
        return
    if os.environ.get("DTB_ALLOW_NO_KERNELS") == "1":
        pytest.skip("dtb_ext._C is not built and DTB_ALLOW_NO_KERNELS=1")
    pytest.fail(
        "dtb_ext._C is not built: run `pip install --no-build-isolation --no-deps -e .` (or set DTB_ALLOW_NO_KERNELS=1)"
    )


def make_mask(lengths: list[int], length: int, dtype: torch.dtype = torch.long, device: str = "cpu") -> torch.Tensor:
    """[B, L] padding mask: example b has lengths[b] real tokens, then padding."""
    positions = torch.arange(length, device=device)
    return (positions[None, :] < torch.tensor(lengths, device=device)[:, None]).to(dtype)


def varied_mask(batch: int, length: int, generator: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """A mask mixing the cases the kernels branch on: full length, random padding, one real token, holes inside
    the sequence (a non-prefix mask) and, from batch 5 on, a fully masked example."""
    lengths = torch.randint(1, length + 1, (batch,), generator=generator).tolist()
    lengths[0] = length
    if batch > 1:
        lengths[1] = 1
    mask = make_mask(lengths, length, device=device)
    if batch > 2 and length > 2:
        mask[2] = (torch.rand(length, generator=generator) < 0.7).long().to(device)
        mask[2, 0] = 1
    if batch > 4:
        mask[4] = 0
    return mask


# (B, H, L): a handful spanning the required ranges (B 1-8, H 1-16, L 1-512).
SOFTMAX_SHAPES = [(1, 1, 1), (2, 3, 17), (5, 12, 64), (8, 2, 129), (3, 4, 384), (1, 16, 512)]


def max_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return (value.double() - truth.double()).abs().max().item() if value.numel() else 0.0


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_matches_reference(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    batch, heads, length = shape
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    scores = (torch.randn(batch, heads, length, length, generator=generator) * 3).to(dtype)
    mask = varied_mask(batch, length, generator)
    probs, significance = ops.softmax_with_significance(scores, mask)
    expected_probs, expected_significance = reference.softmax_with_significance(scores, mask)
    assert probs.dtype == dtype and probs.shape == scores.shape
    assert significance.dtype == torch.float32 and significance.shape == (batch, length)
    torch.testing.assert_close(probs, expected_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(significance, expected_significance, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 17), (4, 12, 128), (2, 2, 384)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_softmax_low_precision_error_within_twice_the_reference_error(shape, dtype: torch.dtype) -> None:
    batch, heads, length = shape
    generator = torch.Generator().manual_seed(length)
    scores = (torch.randn(batch, heads, length, length, generator=generator) * 3).to(dtype)
    mask = varied_mask(batch, length, generator)
    truth_probs, truth_significance = reference.softmax_with_significance(scores.double(), mask)
    probs, significance = ops.softmax_with_significance(scores, mask)
    reference_probs, reference_significance = reference.softmax_with_significance(scores, mask)
    assert probs.dtype == dtype
    assert max_error(probs, truth_probs) <= 2 * max_error(reference_probs, truth_probs) + 1e-6
    assert (
        max_error(significance, truth_significance) <= 2 * max_error(reference_significance, truth_significance) + 1e-4
    )


def test_softmax_masked_keys_and_fully_masked_rows_are_exact_zeros() -> None:
    scores = torch.randn(3, 2, 6, 6)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    probs, significance = ops.softmax_with_significance(scores, mask)
    assert not probs.isnan().any()
    assert (probs[0][..., [2, 4, 5]] == 0).all()
    assert (probs[1] == 0).all() and (significance[1] == 0).all()
    torch.testing.assert_close(probs[2][..., 0], torch.ones(2, 6))
    # Only the one valid query of example 2 counts, once per head.
    torch.testing.assert_close(significance[2], torch.tensor([2.0, 0, 0, 0, 0, 0]))


def test_softmax_accepts_bool_float_masks_and_non_contiguous_scores() -> None:
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 5, 6, 6, generator=generator).transpose(2, 3)
    assert not scores.is_contiguous()
    mask = make_mask([6, 3], 6)
    expected = reference.softmax_with_significance(scores, mask)
    for mask_variant in (mask, mask.bool(), mask.float()):
        for got, want in zip(ops.softmax_with_significance(scores, mask_variant), expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# (B, L, D): B 1-8, L 1-512, D up to 1024.
GATHER_SHAPES = [(1, 1, 1), (3, 17, 8), (8, 384, 64), (2, 512, 1024), (5, 100, 3)]


def assert_same_selection(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    kept_hidden, kept_mask, positions = got
    assert kept_mask.dtype == want[1].dtype and positions.dtype == torch.int64
    assert torch.equal(positions, want[2])
    assert torch.equal(kept_mask, want[1])
    assert torch.equal(kept_hidden, want[0])


@pytest.mark.parametrize("shape", GATHER_SHAPES)
@pytest.mark.parametrize("keep_first", [False, True])
@pytest.mark.parametrize("keep_rule", ["random", "all", "one"])
def test_select_and_gather_matches_reference(shape, keep_first: bool, keep_rule: str) -> None:
    batch, length, width = shape
    generator = torch.Generator().manual_seed(batch + length + width)
    hidden = torch.randn(batch, length, width, generator=generator)
    mask = varied_mask(batch, length, generator)
    # Coarse values so that many significances tie.
    significance = torch.randint(0, 4, (batch, length), generator=generator).float()
    if keep_rule == "all":
        keep = torch.full((batch,), length)
    elif keep_rule == "one":
        keep = torch.ones(batch, dtype=torch.long)
    else:
        keep = torch.randint(1, length + 1, (batch,), generator=generator)
    max_keep = int(keep.max())
    got = ops.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)
    assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_select_and_gather_dtypes_and_wider_outputs(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(4, 33, 16, generator=generator).to(dtype)
    significance = torch.rand(4, 33, generator=generator).to(dtype)
    mask = varied_mask(4, 33, generator).bool()
    keep = torch.tensor([3, 1, 20, 33])
    got = ops.select_and_gather(hidden, significance, mask, keep, 33, False)
    assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, 33, False))
    assert (got[2][0, 3:] == -1).all() and (got[0][0, 3:] == 0).all() and (got[1][0, 3:] == 0).all()


def test_select_prefers_real_tokens_lower_positions_and_forced_first() -> None:
    significance = torch.tensor([[0.0, 5.0, 5.0, 5.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    hidden = torch.arange(6.0).reshape(1, 6, 1)
    _, _, positions = ops.select_and_gather(hidden, significance, mask, torch.tensor([2]), 2, False)
    assert positions.tolist() == [[1, 2]]
    _, _, positions = ops.select_and_gather(hidden, significance, mask, torch.tensor([2]), 2, True)
    assert positions.tolist() == [[0, 1]]
    # More kept than real tokens: padding comes last, with mask 0.
    _, kept_mask, positions = ops.select_and_gather(hidden, significance, mask, torch.tensor([5]), 6, False)
    assert positions.tolist() == [[0, 1, 2, 3, 4, -1]]
    assert kept_mask.tolist() == [[1, 1, 1, 1, 0, 0]]


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float64])
def test_restore_matches_reference(src_dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    base = torch.randn(4, 50, 24, generator=generator)
    hidden = torch.randn(4, 50, 24, generator=generator)
    significance = torch.rand(4, 50, generator=generator)
    mask = varied_mask(4, 50, generator)
    keep = torch.tensor([10, 1, 50, 7])
    kept, _, positions = ops.select_and_gather(hidden, significance, mask, keep, 50, True)
    out = ops.restore(base, kept.to(src_dtype), positions)
    assert out.dtype == base.dtype and out.data_ptr() != base.data_ptr()
    assert torch.equal(out, reference.restore(base, kept.to(src_dtype), positions))
    # The gathered rows go back where they came from.
    assert torch.equal(ops.restore(base, kept, positions), reference.restore(base, kept, positions))
    assert torch.equal(ops.restore(hidden, kept, positions), hidden)


def test_empty_inputs() -> None:
    probs, significance = ops.softmax_with_significance(torch.empty(0, 2, 3, 3), torch.empty(0, 3))
    assert probs.shape == (0, 2, 3, 3) and significance.shape == (0, 3)
    kept, kept_mask, positions = ops.select_and_gather(
        torch.empty(0, 4, 2), torch.empty(0, 4), torch.empty(0, 4), torch.empty(0, dtype=torch.long), 2, False
    )
    assert kept.shape == (0, 2, 2) and kept_mask.shape == (0, 2) and positions.shape == (0, 2)
    base = torch.randn(2, 4, 3)
    assert torch.equal(ops.restore(base, torch.empty(2, 0, 3), torch.empty(2, 0, dtype=torch.long)), base)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 4),
    heads=st.integers(1, 3),
    length=st.integers(1, 24),
    width=st.integers(1, 9),
    keep_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ops_match_reference_property(batch, heads, length, width, keep_first, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, length, length, generator=generator)
    mask = (torch.rand(batch, length, generator=generator) < 0.75).long()
    probs, significance = ops.softmax_with_significance(scores, mask)
    expected_probs, expected_significance = reference.softmax_with_significance(scores, mask)
    torch.testing.assert_close(probs, expected_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(significance, expected_significance, rtol=1e-5, atol=1e-5)

    hidden = torch.randn(batch, length, width, generator=generator)
    keep = torch.randint(1, length + 1, (batch,), generator=generator)
    max_keep = int(torch.randint(int(keep.max()), length + 1, (), generator=generator))
    # Rounded significances: ties are common.
    rounded = (expected_significance * 2).round()
    got = ops.select_and_gather(hidden, rounded, mask, keep, max_keep, keep_first)
    assert_same_selection(got, reference.select_and_gather(hidden, rounded, mask, keep, max_keep, keep_first))

    base = torch.randn(batch, length, width, generator=generator)
    assert torch.equal(ops.restore(base, got[0], got[2]), reference.restore(base, got[0], got[2]))


def _call_select(length=8, batch=2, keep=None, max_keep=4, **changes):
    arguments = {
        "hidden": torch.randn(batch, length, 3),
        "significance": torch.rand(batch, length),
        "mask": torch.ones(batch, length),
        "keep": torch.full((batch,), 2) if keep is None else keep,
    }
    arguments.update(changes)
    return ops.select_and_gather(
        arguments["hidden"], arguments["significance"], arguments["mask"], arguments["keep"], max_keep, False
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.softmax_with_significance(torch.randn(2, 3, 4), torch.ones(2, 4)),
         r"scores must be \[B, H, L, L\]"),
        (lambda: ops.softmax_with_significance(torch.randn(2, 3, 4, 5), torch.ones(2, 5)),
         r"scores must be \[B, H, L, L\]"),
        (lambda: ops.softmax_with_significance(torch.randn(2, 3, 4, 4), torch.ones(3, 4)),
         r"mask must be \[B, L\] = \[2, 4\]"),
        (lambda: ops.softmax_with_significance(torch.randn(2, 3, 4, 4), torch.ones(2, 5)), r"mask must be \[B, L\]"),
        (lambda: ops.softmax_with_significance(torch.ones(2, 3, 4, 4, dtype=torch.long), torch.ones(2, 4)),
         "floating-point"),
        (lambda: _call_select(hidden=torch.randn(2, 8)), r"hidden must be \[B, L, D\]"),
        (lambda: _call_select(significance=torch.rand(3, 8)), r"significance must be \[B, L\] = \[2, 8\]"),
        (lambda: _call_select(mask=torch.ones(2, 7)), r"mask must be \[B, L\] = \[2, 8\]"),
        (lambda: _call_select(keep=torch.full((3,), 2)), r"keep must be \[B\] = \[2\]"),
        (lambda: _call_select(keep=torch.full((2,), 2, dtype=torch.int32)), "keep must be int64"),
        (lambda: _call_select(keep=torch.tensor([0, 2])),
         r"every keep count must be in \[1, L\] = \[1, 8\], got counts from 0"),
        (lambda: _call_select(keep=torch.tensor([9, 2]), max_keep=8), r"every keep count must be in \[1, L\]"),
        (lambda: _call_select(max_keep=9), r"max_keep must be in \[0, L\] = \[0, 8\], got 9"),
        (lambda: _call_select(max_keep=-1), r"max_keep must be in \[0, L\]"),
        (lambda: _call_select(keep=torch.tensor([5, 2]), max_keep=4),
         r"max_keep must be at least max\(keep\) = 5, got 4"),
        (lambda: ops.restore(torch.randn(2, 8), torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)),
         r"base must be \[B, L0, D\]"),
        (lambda: ops.restore(torch.randn(2, 8, 4), torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)),
         r"src must be \[B, K, D\] with B = 2 and D = 4"),
        (lambda: ops.restore(torch.randn(2, 8, 4), torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long)),
         r"positions must be \[B, K\] = \[2, 3\]"),
        (lambda: ops.restore(torch.randn(2, 8, 4), torch.randn(2, 1, 4), torch.tensor([[8], [0]])),
         r"positions must be -1 \(skip\) or in \[0, L0\) = \[0, 8\), got values from 0 to 8"),
        (lambda: ops.restore(torch.randn(2, 8, 4), torch.randn(2, 1, 4), torch.tensor([[-2], [0]])),
         r"got values from -2"),
        (lambda: ops.restore(torch.randn(1, 8, 4), torch.randn(1, 2, 4), torch.tensor([[3, 3]])),
         "positions must be distinct"),
        (lambda: ops.restore(torch.randn(1, 8, 4), torch.randn(1, 1, 4), torch.tensor([[3]], dtype=torch.int32)),
         "positions must be int64"),
    ],
)
def test_bad_input_raises_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()


def test_select_and_restore_accept_non_contiguous_inputs() -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 8, 20, generator=generator).transpose(1, 2)  # [3, 20, 8], strided
    significance = torch.rand(20, 3, generator=generator).t()
    mask = varied_mask(3, 20, generator).t().contiguous().t()
    keep = torch.tensor([4, 0, 1, 0, 9, 0])[::2]  # [4, 1, 9], strided
    assert not hidden.is_contiguous() and not significance.is_contiguous() and not keep.is_contiguous()
    got = ops.select_and_gather(hidden, significance, mask, keep, 9, True)
    assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, 9, True))
    base = torch.randn(8, 3, 20, generator=generator).permute(1, 2, 0)
    assert torch.equal(ops.restore(base, got[0], got[2]), reference.restore(base, got[0], got[2]))


def test_reference_ops_context_routes_every_op_to_the_reference(monkeypatch) -> None:
    calls: list[str] = []
    for name in ("softmax_with_significance", "select_and_gather", "restore"):
        original = getattr(reference, name)

        def recording(*args, _name=name, _original=original):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(reference, name, recording)
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(2, 3, 7, 7, generator=generator)
    mask = make_mask([7, 4], 7)
    hidden = torch.randn(2, 7, 5, generator=generator)

    def run_ops():
        probs, significance = ops.softmax_with_significance(scores, mask)
        kept, _, positions = ops.select_and_gather(hidden, significance, mask, torch.tensor([3, 2]), 3, False)
        return probs, significance, kept, ops.restore(hidden, kept, positions)

    with_kernels = run_ops()
    assert calls == []
    with ops.reference_ops():
        with_reference = run_ops()
    assert calls == ["softmax_with_significance", "select_and_gather", "restore"]
    run_ops()
    assert len(calls) == 3  # the context ended: kernels again
    for kernel_output, reference_output in zip(with_kernels, with_reference):
        torch.testing.assert_close(kernel_output, reference_output)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_softmax_nan_score_at_a_valid_key_makes_the_row_nan_up_to_the_last_valid_key(dtype: torch.dtype) -> None:
    """The rule the CUDA kernel copies (issue 15): NaN at every key before the example's last valid key, holes
    included, 0 after it; the significance of those keys is NaN only when a valid query's row is; a NaN at a masked
    key changes nothing."""
    generator = torch.Generator().manual_seed(8)
    scores = torch.randn(2, 2, 10, 10, generator=generator)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]])
    scores[0, 1, 4, 5] = float("nan")  # a valid query of example 0
    scores[1, 0, 8, 3] = float("nan")  # a padding query of example 1
    scores[1, 1, :, 7] = float("nan")  # a masked key of example 1
    probs, significance = ops.softmax_with_significance(scores.to(dtype), mask)
    nan_probs = torch.zeros(2, 2, 10, 10, dtype=torch.bool)
    nan_probs[0, 1, 4, :7] = True
    nan_probs[1, 0, 8, :6] = True
    assert torch.equal(probs.isnan(), nan_probs)
    assert (probs[0, 1, 4, 7:] == 0).all() and (probs[1, 0, 8, 6:] == 0).all()
    nan_significance = torch.zeros(2, 10, dtype=torch.bool)
    nan_significance[0, :7] = True
    assert torch.equal(significance.isnan(), nan_significance)
