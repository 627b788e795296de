"""The dtb CUDA kernels against the reference, on the GPU (skipped without one; see the repository's conftest.py).

float16/bfloat16 tolerance is relative to the reference's own error in the same dtype: against a float64
computation, the kernel may err at most about twice as much as the PyTorch reference does."""
from __future__ import annotations

import pytest
import torch

from dtb_ext import ops, reference
from test_ops import assert_same_selection, max_error, varied_mask

pytestmark = pytest.mark.cuda

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def require_kernels() -> None:
    assert ops.has_kernels(), "dtb_ext._C is not built"


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (2, 3, 17), (5, 12, 64), (8, 2, 129), (4, 12, 384), (1, 16, 512), (1, 1, 2000)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_softmax_matches_reference(shape, dtype: torch.dtype) -> None:
    batch, heads, length = shape
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    scores = (torch.randn(batch, heads, length, length, generator=generator) * 3).to(DEVICE, dtype)
    mask = varied_mask(batch, length, generator).to(DEVICE)
    probs, significance = ops.softmax_with_significance(scores, mask)
    assert probs.dtype == dtype and probs.device.type == "cuda" and significance.dtype == torch.float32
    if dtype in (torch.float32, torch.float64):
        expected_probs, expected_significance = reference.softmax_with_significance(scores, mask)
        torch.testing.assert_close(probs, expected_probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(significance, expected_significance, rtol=1e-5, atol=1e-4)
        return
    truth_probs, truth_significance = reference.softmax_with_significance(scores.double(), mask)
    reference_probs, reference_significance = reference.softmax_with_significance(scores, mask)
    assert max_error(probs, truth_probs) <= 2 * max_error(reference_probs, truth_probs) + 1e-6
    assert (
        max_error(significance, truth_significance) <= 2 * max_error(reference_significance, truth_significance) + 1e-4
    )


def test_softmax_fully_masked_rows_are_zero() -> None:
    scores = torch.randn(2, 2, 5, 5, device=DEVICE)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 0, 1, 0, 0]], device=DEVICE)
    probs, significance = ops.softmax_with_significance(scores, mask)
    assert not probs.isnan().any()
    assert (probs[0] == 0).all() and (significance[0] == 0).all()
    assert (probs[1][..., [1, 3, 4]] == 0).all()


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 17, 8), (8, 384, 64), (2, 512, 1024), (5, 100, 3), (1, 4096, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("keep_first", [False, True])
def test_select_and_gather_matches_reference(shape, dtype: torch.dtype, keep_first: bool) -> None:
    batch, length, width = shape
    generator = torch.Generator().manual_seed(batch + length + width)
    hidden = torch.randn(batch, length, width, generator=generator).to(DEVICE, dtype)
    mask = varied_mask(batch, length, generator).to(DEVICE)
    significance = torch.randint(0, 4, (batch, length), generator=generator).float().to(DEVICE)
    for keep in (
        torch.randint(1, length + 1, (batch,), generator=generator),
        torch.full((batch,), length),
        torch.ones(batch, dtype=torch.long),
    ):
        keep = keep.to(DEVICE)
        max_keep = int(keep.max())
        got = ops.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first)
        assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, max_keep, keep_first))
        base = torch.randn(batch, length, width, generator=generator).to(DEVICE, dtype)
        assert torch.equal(ops.restore(base, got[0], got[2]), reference.restore(base, got[0], got[2]))


def test_gradients_on_cuda() -> None:
    # opcheck of every op with a CUDA kernel: test_opcheck.py
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, 6, 6, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0]], device=DEVICE)
    assert torch.autograd.gradcheck(lambda s: ops.softmax_with_significance(s, mask)[0], (scores,))
    hidden = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    significance = torch.rand(2, 6, generator=generator).to(DEVICE)
    keep = torch.tensor([4, 2], device=DEVICE)
    assert torch.autograd.gradcheck(lambda h: ops.select_and_gather(h, significance, mask, keep, 4, True)[0], (hidden,))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.softmax_with_significance(torch.randn(1, 1, 3, 3, device=DEVICE), torch.ones(1, 3)),
         "mask must be on the device of scores"),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4, 2, device=DEVICE), torch.rand(1, 4, device=DEVICE), torch.ones(1, 4, device=DEVICE),
                torch.tensor([2]), 2, False
            ),
            "keep must be on the device of hidden",
        ),
        (
            lambda: ops.restore(
                torch.randn(1, 4, 2, device=DEVICE), torch.randn(1, 1, 2), torch.tensor([[0]], device=DEVICE)
            ),
            "src must be on the device of base",
        ),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4, 2, device=DEVICE), torch.rand(1, 4, device=DEVICE), torch.ones(1, 4, device=DEVICE),
                torch.tensor([0], device=DEVICE), 2, False,
            ),
            r"every keep count must be in \[1, L\]",
        ),
        (
            lambda: ops.restore(
                torch.randn(1, 4, 2, device=DEVICE), torch.randn(1, 1, 2, device=DEVICE),
                torch.tensor([[4]], device=DEVICE),
            ),
            r"positions must be -1 \(skip\) or in \[0, L0\)",
        ),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4097, 1, device=DEVICE), torch.rand(1, 4097, device=DEVICE),
                torch.ones(1, 4097, device=DEVICE), torch.tensor([1], device=DEVICE), 1, False,
            ),
            "on CUDA, L must be at most 4096",
        ),
    ],
)
def test_bad_input_raises_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()


# --- non-finite scores: the CPU op's rule (issue 15, fix 1) ---------------------------------------------------

# Tolerances for comparing the CUDA op with the CPU op on the finite entries (the kernels differ in exp and in
# summation order; float16/bfloat16 results may differ by one rounding step).
CPU_TOLERANCES = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.float64: {"rtol": 1e-5, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-5},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-5},
}


def assert_matches_cpu_op(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run softmax_with_significance on CUDA and on CPU (inputs given on the CPU); NaN where the CPU op has NaN,
    close elsewhere. Returns the CUDA outputs, on the CPU."""
    probs, significance = (t.cpu() for t in ops.softmax_with_significance(scores.to(DEVICE), mask.to(DEVICE)))
    cpu_probs, cpu_significance = ops.softmax_with_significance(scores, mask)
    torch.testing.assert_close(probs, cpu_probs, equal_nan=True, **CPU_TOLERANCES[scores.dtype])
    torch.testing.assert_close(significance, cpu_significance, equal_nan=True, rtol=1e-5, atol=1e-4)
    return probs, significance


@pytest.mark.parametrize(
    "length, nan_key, masked_keys",
    [
        (17, 0, []),  # one lane owns every key: the NaN lane was merged away
        (64, 0, [32]),  # lane 0's other key is masked, so all its valid keys are NaN
        (64, 5, [37, 60, 61, 62, 63]),  # a hole (NaN on CPU too) and trailing padding (0 after the last valid key)
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_softmax_nan_score_makes_the_row_nan_as_on_cpu(
    length: int, nan_key: int, masked_keys: list[int], dtype
) -> None:
    generator = torch.Generator().manual_seed(length + nan_key)
    scores = torch.randn(2, 3, length, length, generator=generator)
    scores[0, :, :, nan_key] = float("nan")  # every row of example 0
    scores[1, 1, 2, nan_key] = float("nan")  # one row of example 1
    scores[1, 2, length - 1, nan_key] = float("nan")  # the last query, masked in the third case
    mask = torch.ones(2, length, dtype=torch.long)
    mask[:, masked_keys] = 0
    if masked_keys:
        scores[1, 0, :, masked_keys[0]] = float("nan")  # at a masked key: changes nothing
    scores = scores.to(dtype)
    probs, significance = assert_matches_cpu_op(scores, mask)
    key_end = int(mask[0].nonzero().max()) + 1
    assert probs[0, :, :, :key_end].isnan().all() and (probs[0, :, :, key_end:] == 0).all()
    assert probs[1, 1, 2, :key_end].isnan().all()
    assert not probs[1, 0].isnan().any() and not probs[1, 1, 3].isnan().any()
    # Where the reference is defined (valid keys of valid queries) it has NaN exactly where the kernel has.
    reference_probs, _ = reference.softmax_with_significance(scores, mask)
    defined = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]
    assert torch.equal(probs.isnan() & defined, reference_probs.isnan() & defined)
    assert significance[0, :key_end].isnan().all() and not significance[:, key_end:].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_positive_infinity_makes_the_row_nan(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(11)
    scores = torch.randn(2, 2, 40, 40, generator=generator).to(dtype)
    scores[0, 0, 3, 7] = float("inf")
    scores[1, 1, 5, 33] = float("inf")  # the same lane as key 1 ...
    scores[1, 1, 5, 1] = float("inf")  # ... and as key 33: two infinities in one lane
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 36:] = 0
    if dtype == torch.float64:
        # The CPU op's float64 path gives the same rows. (Its float32 one, with ATen's exp_u20, is NaN only at the
        # infinite keys: a CPU-side inconsistency the reference does not share.)
        probs, _ = assert_matches_cpu_op(scores, mask)
    else:
        probs = ops.softmax_with_significance(scores.to(DEVICE), mask.to(DEVICE))[0].cpu()
    reference_probs, _ = reference.softmax_with_significance(scores, mask)
    defined = mask.bool()[:, None, :, None] & mask.bool()[:, None, None, :]
    assert torch.equal(probs.isnan() & defined, reference_probs.isnan() & defined)
    assert probs[0, 0, 3].isnan().all() and probs[1, 1, 5, :36].isnan().all()
    assert probs.isnan().sum() == 40 + 36


def test_softmax_negative_infinity_is_an_ordinary_score() -> None:
    scores = torch.randn(1, 1, 33, 33)
    scores[..., 0] = float("-inf")
    scores[0, 0, 4] = float("-inf")  # a row with every key at -inf: all zeros, like a fully masked row
    probs, _ = assert_matches_cpu_op(scores, torch.ones(1, 33))
    assert not probs.isnan().any() and (probs[..., 0] == 0).all() and (probs[0, 0, 4] == 0).all()


# --- restore: duplicates rejected without a host sync in capture (fix 2) ---------------------------------------


@pytest.mark.parametrize(
    "positions, message",
    [
        ([[1, 1]], "example 0 has position 1 at slots 0 and 1"),
        ([[1, 5, 6], [2, -1, 2]], "example 1 has position 2 at slots 0 and 2"),
    ],
)
def test_restore_rejects_duplicate_positions_like_the_cpu_op(positions: list[list[int]], message: str) -> None:
    batch, slots = len(positions), len(positions[0])
    base = torch.randn(batch, 8, 4)
    src = torch.randn(batch, slots, 4)
    positions = torch.tensor(positions)
    expected = f"positions must be distinct within an example; {message}"
    with pytest.raises(RuntimeError, match=expected):
        ops.restore(base, src, positions)
    with pytest.raises(RuntimeError, match=expected):
        ops.restore(base.to(DEVICE), src.to(DEVICE), positions.to(DEVICE))


def test_restore_out_of_range_message_matches_the_cpu_op() -> None:
    base, src, positions = torch.randn(2, 8, 4), torch.randn(2, 1, 4), torch.tensor([[8], [-2]])
    expected = r"positions must be -1 \(skip\) or in \[0, L0\) = \[0, 8\), got values from -2 to 8"
    with pytest.raises(RuntimeError, match=expected):
        ops.restore(base, src, positions)
    with pytest.raises(RuntimeError, match=expected):
        ops.restore(base.to(DEVICE), src.to(DEVICE), positions.to(DEVICE))


def capture(function):
    """Capture `function()` in a CUDA graph (after one eager warm-up call on the capture's side stream, as
    torch.cuda.graph advises); returns (graph, the captured call's outputs)."""
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        function()
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = function()
    return graph, outputs


def test_restore_in_a_cuda_graph_poisons_examples_with_invalid_positions() -> None:
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(3, 8, 5, generator=generator).to(DEVICE)
    src = torch.randn(3, 2, 5, generator=generator).to(DEVICE)
    positions = torch.tensor([[1, 3], [2, 5], [-1, 0]], device=DEVICE)
    graph, out = capture(lambda: ops.restore(base, src, positions))
    for replayed_positions in ([[4, 6], [7, 0], [-1, -1]], [[1, 1], [2, 5], [-1, 0]], [[1, 8], [-2, 5], [0, 7]]):
        positions.copy_(torch.tensor(replayed_positions))
        graph.replay()
        torch.cuda.synchronize()
        for b, row in enumerate(replayed_positions):
            valid = all(-1 <= p < 8 for p in row) and len({p for p in row if p >= 0}) == sum(p >= 0 for p in row)
            if valid:
                assert torch.equal(out[b], reference.restore(base[b : b + 1], src[b : b + 1], positions[b : b + 1])[0])
            else:
                assert out[b].isnan().all(), (replayed_positions, b)
    # Outside capture the same inputs raise.
    with pytest.raises(RuntimeError, match=r"positions must be -1 \(skip\) or in \[0, L0\)"):
        ops.restore(base, src, positions)


def test_select_in_a_cuda_graph_poisons_examples_with_invalid_keep_counts() -> None:
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(3, 10, 6, generator=generator).to(DEVICE)
    significance = torch.rand(3, 10, generator=generator).to(DEVICE)
    mask = torch.ones(3, 10, device=DEVICE)
    keep = torch.tensor([2, 4, 3], device=DEVICE)
    graph, (kept, kept_mask, positions) = capture(
        lambda: ops.select_and_gather(hidden, significance, mask, keep, 4, False)
    )
    keep.copy_(torch.tensor([0, 4, 5]))  # 0 < 1 and 5 > max_keep = 4
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.select_and_gather(hidden[1:2], significance[1:2], mask[1:2], keep[1:2], 4, False)
    assert_same_selection((kept[1:2], kept_mask[1:2], positions[1:2]), expected)
    for b in (0, 2):
        assert kept[b].isnan().all() and (kept_mask[b] == 1).all() and positions[b].tolist() == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match=r"every keep count must be in \[1, L\]"):
        ops.select_and_gather(hidden, significance, mask, keep, 4, False)


# --- grid size limit (fix 3), checked on expanded views that allocate nothing ----------------------------------


@pytest.mark.parametrize("batch, heads", [(2**31, 1), (2**16, 2**15), (2**32, 1), (3 * 2**31, 1)])
def test_softmax_grid_above_the_cuda_limit_raises(batch: int, heads: int) -> None:
    # L = 1: one block per (example, head), so B * H blocks; 2^32 and 3 * 2^31 used to wrap to small grids.
    scores = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(batch, heads, 1, 1)
    mask = torch.ones(1, 1, device=DEVICE).expand(batch, 1)
    with pytest.raises(
        RuntimeError, match=rf"must be at most 2147483647 \(the CUDA grid limit, gridDim.x\), got {batch * heads}"
    ):
        ops.softmax_with_significance(scores, mask)


def test_select_grid_above_the_cuda_limit_raises() -> None:
    batch = 2**31
    hidden = torch.zeros(1, 1, 1, device=DEVICE).expand(batch, 1, 1)
    significance = torch.zeros(1, 1, device=DEVICE).expand(batch, 1)
    keep = torch.ones(1, dtype=torch.long, device=DEVICE).expand(batch)
    with pytest.raises(RuntimeError, match=r"B \(one block row per example\) must be at most 2147483647"):
        ops.select_and_gather(hidden, significance, significance, keep, 1, False)


# --- CUDA-graph capture of the ops a dynamic layer runs (fix 4) -------------------------------------------------


def test_dynamic_layer_ops_capture_in_a_cuda_graph_and_replay_with_new_inputs() -> None:
    """softmax_with_significance -> select_and_gather -> restore, the ops of one dynamic layer and the final
    restore, captured once and replayed on new inputs of the same shapes; each replay equals an eager run."""
    batch, heads, length, width, max_keep = 3, 4, 48, 32, 20
    generator = torch.Generator().manual_seed(9)
    scores = torch.empty(batch, heads, length, length, device=DEVICE)
    hidden = torch.empty(batch, length, width, device=DEVICE)
    mask = torch.empty(batch, length, dtype=torch.long, device=DEVICE)
    keep = torch.tensor([20, 7, 13], device=DEVICE)

    def fill_inputs() -> None:
        scores.copy_(torch.randn(batch, heads, length, length, generator=generator))
        hidden.copy_(torch.randn(batch, length, width, generator=generator))
        mask.copy_(varied_mask(batch, length, generator))

    def layer_step():
        probs, significance = ops.softmax_with_significance(scores, mask)
        kept, kept_mask, positions = ops.select_and_gather(hidden, significance, mask, keep, max_keep, True)
        return probs, kept_mask, ops.restore(hidden, kept * 2, positions)

    fill_inputs()
    graph, captured = capture(layer_step)
    for _ in range(3):
        fill_inputs()
        graph.replay()
        expected = layer_step()
        torch.cuda.synchronize()
        for got, want in zip(captured, expected):
            assert torch.equal(got, want)


# --- long rows: the 3-, 2- and 1-warp configurations up to the cap ---------------------------------------------


# Warps per block are floor(48 KiB / (5 bytes * L)), at most 4: 4 up to L = 2457, 3 up to 3276, 2 up to 4915, 1 up to
# the 8192 cap.
@pytest.mark.parametrize("length", [2457, 2458, 3276, 3277, 4915, 4916, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_softmax_long_rows_match_reference(length: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(length)
    scores = (torch.randn(1, 1, length, length, generator=generator) * 3).to(DEVICE, dtype)
    mask = torch.ones(1, length, dtype=torch.long)
    mask[0, length - 100 :] = 0
    mask[0, 1000:1010] = 0
    mask = mask.to(DEVICE)
    probs, significance = ops.softmax_with_significance(scores, mask)
    truth_probs, truth_significance = reference.softmax_with_significance(scores.double(), mask)
    reference_probs, reference_significance = reference.softmax_with_significance(scores, mask)
    assert max_error(probs, truth_probs) <= 2 * max_error(reference_probs, truth_probs) + 1e-6
    assert (
        max_error(significance, truth_significance) <= 2 * max_error(reference_significance, truth_significance) + 1e-4
    )


def test_softmax_above_the_length_cap_raises() -> None:
    scores = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(1, 1, 8193, 8193)
    with pytest.raises(RuntimeError, match=r"on CUDA, L must be at most 8192"):
        ops.softmax_with_significance(scores, torch.ones(1, 8193, device=DEVICE))


# --- copy units: 1-byte rows, odd alignment, and every wider unit ----------------------------------------------


@pytest.mark.parametrize("width, offset", [(3, 0), (17, 0), (16, 1), (5, 3)])
def test_select_copies_odd_byte_rows(width: int, offset: int) -> None:
    """uint8 rows of an odd number of bytes, or at an odd address: the 1-byte copy unit."""
    batch, length = 3, 21
    generator = torch.Generator().manual_seed(width + offset)
    storage = torch.randint(0, 256, (offset + batch * length * width,), generator=generator, dtype=torch.uint8)
    hidden = storage.to(DEVICE)[offset:].view(batch, length, width)
    assert width % 2 == 1 or hidden.data_ptr() % 2 == 1  # only a 1-byte unit divides the row and aligns the address
    significance = torch.rand(batch, length, generator=generator).to(DEVICE)
    mask = varied_mask(batch, length, generator).to(DEVICE)
    keep = torch.tensor([5, 1, 21], device=DEVICE)
    got = ops.select_and_gather(hidden, significance, mask, keep, 21, False)
    assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, 21, False))


@pytest.mark.parametrize(
    "dtype, width, offset",
    [
        (torch.float16, 5, 0),  # 10-byte rows: 2-byte unit
        (torch.float16, 8, 1),  # 16-byte rows at a 2-byte aligned address
        (torch.float32, 3, 0),  # 12-byte rows: 4-byte unit
        (torch.float64, 1, 0),  # 8-byte rows
        (torch.float32, 8, 0),  # 32-byte rows: 16-byte unit
    ],
)
def test_restore_copy_units(dtype: torch.dtype, width: int, offset: int) -> None:
    batch, length, slots = 2, 13, 6
    generator = torch.Generator().manual_seed(width)
    flat = torch.randn(offset + batch * length * width, generator=generator).to(DEVICE, dtype)
    base = flat[offset:].view(batch, length, width)
    src = torch.randn(batch, slots, width, generator=generator).to(DEVICE, dtype)
    positions = torch.tensor([[0, 2, 3, 7, 12, -1], [11, -1, 4, 5, 1, 9]], device=DEVICE)
    assert torch.equal(ops.restore(base, src, positions), reference.restore(base, src, positions))


# --- non-contiguous inputs and mask dtypes ---------------------------------------------------------------------


def test_ops_accept_non_contiguous_inputs_on_cuda() -> None:
    generator = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 5, 9, 9, generator=generator).to(DEVICE).transpose(2, 3)
    mask = varied_mask(2, 9, generator).to(DEVICE).t().contiguous().t()  # [2, 9], strided
    assert not scores.is_contiguous() and not mask.is_contiguous()
    for got, want in zip(
        ops.softmax_with_significance(scores, mask), reference.softmax_with_significance(scores, mask)
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    hidden = torch.randn(3, 8, 20, generator=generator).to(DEVICE).transpose(1, 2)  # [3, 20, 8]
    significance = torch.rand(20, 3, generator=generator).to(DEVICE).t()
    select_mask = varied_mask(3, 20, generator).to(DEVICE).t().contiguous().t()
    keep = torch.tensor([4, 0, 1, 0, 9, 0], device=DEVICE)[::2]  # [4, 1, 9]
    assert not hidden.is_contiguous() and not significance.is_contiguous() and not keep.is_contiguous()
    got = ops.select_and_gather(hidden, significance, select_mask, keep, 9, True)
    assert_same_selection(got, reference.select_and_gather(hidden, significance, select_mask, keep, 9, True))
    base = torch.randn(8, 3, 20, generator=generator).to(DEVICE).permute(1, 2, 0)
    src = got[0].transpose(0, 1).contiguous().transpose(0, 1)
    positions = got[2].t().contiguous().t()
    assert not base.is_contiguous() and not positions.is_contiguous()
    assert torch.equal(ops.restore(base, src, positions), reference.restore(base, src, positions))


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32, torch.float16, torch.int64])
def test_bool_and_float_masks_on_cuda(mask_dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(6)
    scores = torch.randn(4, 3, 30, 30, generator=generator).to(DEVICE)
    mask = varied_mask(4, 30, generator).to(DEVICE, mask_dtype)
    probs, significance = ops.softmax_with_significance(scores, mask)
    expected_probs, expected_significance = reference.softmax_with_significance(scores, mask)
    torch.testing.assert_close(probs, expected_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(significance, expected_significance, rtol=1e-5, atol=1e-4)
    hidden = torch.randn(4, 30, 7, generator=generator).to(DEVICE)
    keep = torch.tensor([30, 1, 12, 5], device=DEVICE)
    got = ops.select_and_gather(hidden, significance, mask, keep, 30, False)
    assert got[1].dtype == mask_dtype
    assert_same_selection(got, reference.select_and_gather(hidden, significance, mask, keep, 30, False))
