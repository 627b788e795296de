"""Registration checks of the compiled dtb ops: gradients (float64 gradcheck) and a torch.compile(fullgraph=True)
smoke test (torch.library.opcheck of every op: test_opcheck.py)."""
from __future__ import annotations

import os

import pytest
import torch

from dtb_ext import ops, reference

pytestmark = pytest.mark.skipif(
    not ops.has_kernels() and os.environ.get("DTB_ALLOW_NO_KERNELS") == "1",
    reason="dtb_ext._C is not built and DTB_ALLOW_NO_KERNELS=1",
)


def test_kernels_are_built() -> None:
    assert ops.has_kernels(), "dtb_ext._C is not built: run `pip install --no-build-isolation --no-deps -e .`"


def small_case(dtype: torch.dtype = torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch, heads, length, width = 3, 2, 7, 4
    scores = torch.randn(batch, heads, length, length, generator=generator, dtype=dtype)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1, 0]])
    hidden = torch.randn(batch, length, width, generator=generator, dtype=dtype)
    significance = torch.rand(batch, length, generator=generator)
    keep = torch.tensor([5, 2, 3])
    return scores, mask, hidden, significance, keep


def test_gradcheck_softmax_probs() -> None:
    scores, mask, *_ = small_case()
    scores.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: ops.softmax_with_significance(s, mask)[0], (scores,))


def test_significance_gradient_matches_reference_autograd() -> None:
    scores, mask, *_ = small_case()
    generator = torch.Generator().manual_seed(1)
    probs_weight = torch.randn(scores.shape, generator=generator, dtype=torch.float64)
    significance_weight = torch.randn(scores.shape[0], scores.shape[3], generator=generator)

    def gradient(function):
        leaf = scores.clone().requires_grad_()
        probs, significance = function(leaf, mask)
        ((probs * probs_weight).sum() + (significance * significance_weight).sum()).backward()
        return leaf.grad

    torch.testing.assert_close(
        gradient(ops.softmax_with_significance), gradient(reference.softmax_with_significance), rtol=1e-5, atol=1e-6
    )


def test_gradcheck_select_and_gather_hidden() -> None:
    _, mask, hidden, significance, keep = small_case()
    hidden.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda h: ops.select_and_gather(h, significance, mask, keep, 6, True)[0], (hidden,)
    )


def test_gradcheck_restore_base_and_src() -> None:
    _, mask, hidden, significance, keep = small_case()
    kept, _, positions = ops.select_and_gather(hidden, significance, mask, keep, 6, False)
    base = torch.randn(hidden.shape, dtype=torch.float64, requires_grad=True)
    src = kept.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda b, s: ops.restore(b, s, positions), (base, src))
    assert torch.autograd.gradgradcheck(lambda b, s: ops.restore(b, s, positions), (base, src))


def chain(scores: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One token-dropping step: attention significance, keep the top tokens, transform them, restore them."""
    _, significance = ops.softmax_with_significance(scores, mask)
    kept, kept_mask, positions = ops.select_and_gather(hidden, significance, mask, keep, 5, True)
    return ops.restore(hidden, kept * 2 + kept_mask[:, :, None], positions)


def test_torch_compile_fullgraph_chains_the_ops() -> None:
    scores, mask, hidden, _, keep = small_case(torch.float32)
    with torch.no_grad():
        compiled = torch.compile(chain, fullgraph=True)
        torch.testing.assert_close(compiled(scores, mask, hidden, keep), chain(scores, mask, hidden, keep))


def test_torch_compile_fullgraph_backward() -> None:
    # aot_eager traces forward and backward through the fake and autograd registrations without Inductor's
    # C++ code generation, which would take most of a minute here.
    scores, mask, hidden, _, keep = small_case(torch.float32)
    compiled = torch.compile(chain, fullgraph=True, backend="aot_eager")
    hidden_leaf = hidden.clone().requires_grad_()
    compiled(scores, mask, hidden_leaf, keep).sum().backward()
    eager_leaf = hidden.clone().requires_grad_()
    chain(scores, mask, eager_leaf, keep).sum().backward()
    torch.testing.assert_close(hidden_leaf.grad, eager_leaf.grad)
