"""The dtb CUDA kernels against the reference, on the GPU (skipped without one; see tests/conftest.py).

float16/bfloat16 tolerance is relative to the reference's own error in the same dtype: against a float64
computation, the kernel may err at most about twice as much as the PyTorch reference does."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from dtb_ext import ops, reference
from test_ops import assert_same_selection, max_error, varied_mask

pytestmark = pytest.mark.cuda

DEVICE = "cuda"


@pytest.fixture(autouse=True)
def require_kernels() -> None:
    assert ops.has_kernels(), "dtb_ext._C is not built"


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (5, 12, 64), (8, 2, 129), (4, 12, 384), (1, 16, 512), (1, 1, 2000)])
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
    assert max_error(significance, truth_significance) <= 2 * max_error(reference_significance, truth_significance) + 1e-4


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


def test_gradients_and_opcheck_on_cuda() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, 6, 6, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0]], device=DEVICE)
    assert torch.autograd.gradcheck(lambda s: ops.softmax_with_significance(s, mask)[0], (scores,))
    hidden = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64).to(DEVICE).requires_grad_()
    significance = torch.rand(2, 6, generator=generator).to(DEVICE)
    keep = torch.tensor([4, 2], device=DEVICE)
    assert torch.autograd.gradcheck(lambda h: ops.select_and_gather(h, significance, mask, keep, 4, True)[0], (hidden,))
    opcheck(torch.ops.dtb.softmax_with_significance.default, (scores, mask))
    opcheck(torch.ops.dtb.select_and_gather.default, (hidden, significance, mask, keep, 4, True))
    kept, _, positions = ops.select_and_gather(hidden.detach(), significance, mask, keep, 4, False)
    opcheck(torch.ops.dtb.restore.default, (torch.randn_like(hidden).requires_grad_(), kept.requires_grad_(), positions))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.softmax_with_significance(torch.randn(1, 1, 3, 3, device=DEVICE), torch.ones(1, 3)), "mask must be on the device of scores"),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4, 2, device=DEVICE), torch.rand(1, 4, device=DEVICE), torch.ones(1, 4, device=DEVICE), torch.tensor([2]), 2, False
            ),
            "keep must be on the device of hidden",
        ),
        (lambda: ops.restore(torch.randn(1, 4, 2, device=DEVICE), torch.randn(1, 1, 2), torch.tensor([[0]], device=DEVICE)), "src must be on the device of base"),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4, 2, device=DEVICE), torch.rand(1, 4, device=DEVICE), torch.ones(1, 4, device=DEVICE),
                torch.tensor([0], device=DEVICE), 2, False,
            ),
            r"every keep count must be in \[1, L\]",
        ),
        (lambda: ops.restore(torch.randn(1, 4, 2, device=DEVICE), torch.randn(1, 1, 2, device=DEVICE), torch.tensor([[4]], device=DEVICE)), r"positions must be -1 \(skip\) or in \[0, L0\)"),
        (
            lambda: ops.select_and_gather(
                torch.randn(1, 4097, 1, device=DEVICE), torch.rand(1, 4097, device=DEVICE), torch.ones(1, 4097, device=DEVICE),
                torch.tensor([1], device=DEVICE), 1, False,
            ),
            "on CUDA, L must be at most 4096",
        ),
    ],
)
def test_bad_input_raises_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()
