"""The patched model on a GPU (skipped without one; see conftest.py): the dynamic encoder's contract of
tests/models/test_encoder.py and tests/models/test_mixed_configs.py, on the CUDA kernels and SDPA's CUDA kernels,
and the whole model captured in a CUDA graph (the static-shape path).

Random-weight models (no weights package needed), so this file runs on a bare GPU machine with torch and
transformers; the bundled default model (in the repository) joins them for the CUDA-graph capture. Matmuls stay
in full float32 (no TF32) for the float32 comparisons: the CUDA default.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForQuestionAnswering

import dtb_ext
from dtb_ext import ops
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.qa.model import load_qa_model
from tiny_qa import alone, padded_qa_batch

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
VOCAB = 2000
NUM_LAYERS = 4
CONFIGS = [
    LengthConfig.absolute([30, 20, 12, 5]),
    LengthConfig.ratios([0.8, 0.6, 0.4, 0.2]),
    LengthConfig.absolute([9, 9, 4, 1]),
    LengthConfig.ratios([1.0, 0.5, 0.5, 0.5]),
]
CONFIG_IDS = ["absolute", "ratios", "absolute-short", "ratio-late"]
LENGTHS = [37, 40, 23, 11, 40, 29]  # padding in most rows


@pytest.fixture(autouse=True)
def require_kernels() -> None:
    assert ops.has_kernels(), "dtb_ext._C is not built"
    assert ops.kernel_info()["cuda_built"], "dtb_ext._C was built without its CUDA kernels"


def _qa_model(seed: int = 0) -> BertForQuestionAnswering:
    """A 4-layer, 64-wide QA model with a wide initialisation, so that dropping tokens visibly moves the logits."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, initializer_range=0.5)
    return BertForQuestionAnswering._from_config(config, attn_implementation="sdpa").eval()


def _on(inputs: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {name: tensor.to(device) for name, tensor in inputs.items()}


@pytest.fixture(scope="module")
def models() -> tuple[BertForQuestionAnswering, BertForQuestionAnswering, BertForQuestionAnswering]:
    """(unpatched on the GPU, patched on the GPU, patched on the CPU), one set of weights."""
    reference = _qa_model()
    patched = dtb_ext.patch(copy.deepcopy(reference))
    return reference.to(DEVICE), copy.deepcopy(patched).to(DEVICE), patched


def test_full_length_matches_hugging_face_on_cuda(models):
    reference, patched, _ = models
    inputs = _on(padded_qa_batch(LENGTHS, VOCAB), DEVICE)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        expected = reference(**inputs)
        for config in (None, [max(LENGTHS)] * NUM_LAYERS, LengthConfig.ratios([1.0] * NUM_LAYERS)):
            with dtb_ext.length_config(patched, config):
                actual = patched(**inputs)
            for name in ("start_logits", "end_logits"):
                torch.testing.assert_close(getattr(actual, name)[real], getattr(expected, name)[real])


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_reduced_config_on_cuda_equals_the_cpu_model(models, config):
    """The CUDA kernels select the same tokens as the CPU kernels: the same logits to float tolerance."""
    _, on_gpu, on_cpu = models
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        with dtb_ext.length_config(on_cpu, config):
            expected = on_cpu(**inputs)
        with dtb_ext.length_config(on_gpu, config):
            actual = on_gpu(**_on(inputs, DEVICE))
        full = on_cpu(**inputs)
    assert not torch.allclose(expected.start_logits[real], full.start_logits[real], atol=1e-3)  # it really drops
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(getattr(actual, name).cpu()[real], getattr(expected, name)[real],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_example_alone_equals_example_in_padded_batch_on_cuda(models, config):
    _, patched, _ = models
    inputs = _on(padded_qa_batch(LENGTHS, VOCAB), DEVICE)
    with torch.no_grad(), dtb_ext.length_config(patched, config):
        batched = patched(**inputs)
        for row, length in enumerate(LENGTHS):
            single = patched(**alone(inputs, row, length))
            for name in ("start_logits", "end_logits"):
                torch.testing.assert_close(getattr(batched, name)[row, :length], getattr(single, name)[0],
                                           atol=1e-5, rtol=1e-4)


def test_each_example_of_a_mixed_batch_equals_it_alone_under_its_config_on_cuda(models):
    _, patched, _ = models
    configs = [None, *CONFIGS, LengthConfig.absolute([40] * NUM_LAYERS)]
    inputs = _on(padded_qa_batch(LENGTHS, VOCAB), DEVICE)
    with torch.no_grad():
        with dtb_ext.length_config(patched, MixedLengthConfig(configs)):
            mixed = patched(**inputs)
        for row, (config, length) in enumerate(zip(configs, LENGTHS, strict=True)):
            with dtb_ext.length_config(patched, config):
                single = patched(**alone(inputs, row, length))
            torch.testing.assert_close(mixed.start_logits[row, :length], single.start_logits[0], atol=1e-5, rtol=1e-4)


def _relative_error(actual: torch.Tensor, truth: torch.Tensor) -> float:
    return float((actual.double() - truth.double()).norm() / truth.double().norm())


def test_bf16_full_length_errs_no_more_than_hugging_face_bf16_on_cuda(models):
    """Against the float32 model, the patched bf16 model's error is at most about twice HF bf16's own."""
    reference, patched, _ = models
    inputs = _on(padded_qa_batch(LENGTHS, VOCAB), DEVICE)
    real = inputs["attention_mask"].bool()
    reference_bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    patched_bf16 = dtb_ext.prepare_for_precision(copy.deepcopy(patched), "bf16")
    with torch.no_grad():
        truth = reference(**inputs).start_logits[real]
        theirs = reference_bf16(**inputs).start_logits[real]
        ours = patched_bf16(**inputs).start_logits[real]
    assert ours.dtype == torch.bfloat16
    assert _relative_error(ours, truth) <= 2 * _relative_error(theirs, truth) + 1e-3


@pytest.mark.parametrize("config", CONFIGS[:2], ids=CONFIG_IDS[:2])
def test_bf16_reduced_config_is_batch_invariant_on_cuda(models, config):
    """In bf16 an example's selection and logits inside a padded batch stay those it gets alone, to bf16
    tolerance (the significance is accumulated in float32)."""
    _, patched, _ = models
    patched_bf16 = dtb_ext.prepare_for_precision(copy.deepcopy(patched), "bf16")
    inputs = _on(padded_qa_batch(LENGTHS, VOCAB), DEVICE)
    with torch.no_grad(), dtb_ext.length_config(patched_bf16, config):
        batched = patched_bf16(**inputs).start_logits.float()
        for row, length in enumerate(LENGTHS):
            single = patched_bf16(**alone(inputs, row, length)).start_logits.float()
            scale = float(single.abs().max())
            torch.testing.assert_close(batched[row, :length], single[0], atol=0.05 * scale, rtol=0.05)


def test_gradients_flow_through_a_reduced_config_on_cuda():
    model = dtb_ext.patch(_qa_model(seed=1)).to(DEVICE).train()
    inputs = _on(padded_qa_batch(LENGTHS[:3], VOCAB), DEVICE)
    with dtb_ext.length_config(model, CONFIGS[1]):
        output = model(**inputs)
    (output.start_logits.square().mean() + output.end_logits.square().mean()).backward()
    gradients = [parameter.grad for parameter in model.parameters() if parameter.requires_grad]
    assert all(gradient is not None and torch.isfinite(gradient).all() for gradient in gradients[:10])
    assert model.bert.encoder.layer[-1].output.dense.weight.grad.abs().sum() > 0


# --- the whole patched model captured in a CUDA graph (the static-shape path, docs/design.md §2) -----------------

# Three batches of one shape, [6, 40]: the graph is captured on the first and replayed on the others.
GRAPH_LENGTHS = [[37, 40, 23, 11, 40, 29], [40, 12, 33, 1, 25, 39], [5, 17, 40, 40, 2, 31]]
GRAPH_CASES = {
    "ratios": ("attention", LengthConfig.ratios([0.8, 0.6, 0.4, 0.2])),
    "absolute": ("attention", LengthConfig.absolute([30, 20, 12, 5])),
    "scorer": ("scorer", LengthConfig.ratios([0.8, 0.6, 0.4, 0.2])),
    "attention+scorer-mixed": ("attention+scorer", MixedLengthConfig(
        [None, *CONFIGS, LengthConfig.absolute([2, 1, 1, 1])])),
}


def _graph_model(source: str) -> BertForQuestionAnswering:
    """The patched QA model on the GPU; for the scorer sources with a scorer of random weights."""
    model = dtb_ext.patch(_qa_model(seed=2))
    if source != "attention":
        scorer = dtb_ext.add_relevance_scorer(model, source)
        with torch.no_grad():
            for parameter in scorer.parameters():
                parameter.normal_(0, 1)
    return model.to(DEVICE)


def _capture(model: BertForQuestionAnswering, inputs: dict[str, torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """(graph, its output) of one forward pass on `inputs`, after the usual warm-up on a side stream, run under
    static_shapes() so that it builds the keep-count tables the capture reads. The capture itself runs outside
    static_shapes(): a capturing stream takes the static path by itself."""
    with dtb_ext.static_shapes():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model(**inputs)
        torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = model(**inputs)
    return graph, output


def _replay(graph: torch.cuda.CUDAGraph, static_inputs: dict[str, torch.Tensor],
            inputs: dict[str, torch.Tensor]) -> None:
    for name, tensor in static_inputs.items():
        tensor.copy_(inputs[name])
    graph.replay()
    torch.cuda.synchronize()


def _assert_replay_equals_eager(model, captured, inputs: dict[str, torch.Tensor], atol: float) -> None:
    """The replayed logits equal an eager run of the default path at every real position."""
    real = inputs["attention_mask"].bool()
    expected = model(**inputs)
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(getattr(captured, name)[real], getattr(expected, name)[real],
                                   atol=atol, rtol=1e-4)


def _captured_replays_equal_eager(model, config, batches: list[dict], atol: float):
    """Capture `model` under `config` on a copy of batches[0], replay it on each later batch and then batches[0]
    again, and check every replay against an eager run; returns the captured outputs (batches[0]'s replay)."""
    static_inputs = {name: tensor.clone() for name, tensor in batches[0].items()}
    with torch.no_grad(), dtb_ext.length_config(model, config):
        graph, captured = _capture(model, static_inputs)
        for inputs in [*batches[1:], batches[0]]:
            _replay(graph, static_inputs, inputs)
            _assert_replay_equals_eager(model, captured, inputs, atol=atol)
    return captured


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_the_whole_patched_model_is_captured_in_a_cuda_graph_and_replays_new_inputs(case):
    source, config = GRAPH_CASES[case]
    model = _graph_model(source)
    batches = [_on(padded_qa_batch(lengths, VOCAB, seed=seed), DEVICE) for seed, lengths in enumerate(GRAPH_LENGTHS)]
    captured = _captured_replays_equal_eager(model, config, batches, atol=1e-4)
    with torch.no_grad():
        full = model(**batches[0])
    real = batches[0]["attention_mask"].bool()
    assert not torch.allclose(captured.start_logits[real], full.start_logits[real], atol=1e-3)  # it really drops


def test_a_replayed_example_without_a_real_token_is_nan_and_the_others_are_unchanged():
    model = _graph_model("attention")
    batches = [_on(padded_qa_batch(lengths, VOCAB, seed=seed), DEVICE) for seed, lengths in enumerate(GRAPH_LENGTHS)]
    static_inputs = {name: tensor.clone() for name, tensor in batches[0].items()}
    inputs = {name: tensor.clone() for name, tensor in batches[1].items()}
    inputs["attention_mask"][3] = 0
    others = [row for row in range(len(GRAPH_LENGTHS[1])) if row != 3]
    with torch.no_grad(), dtb_ext.length_config(model, GRAPH_CASES["ratios"][1]):
        graph, captured = _capture(model, static_inputs)
        _replay(graph, static_inputs, inputs)
        assert captured.start_logits[3].isnan().all() and captured.end_logits[3].isnan().all()
        subset = {name: tensor[others] for name, tensor in inputs.items()}
        expected = model(**subset)
    real = subset["attention_mask"].bool()
    torch.testing.assert_close(captured.start_logits[others][real], expected.start_logits[real], atol=1e-4,
                               rtol=1e-4)


@pytest.mark.skipif(not os.path.isfile(os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")),
                    reason="the bundled default model is not in this checkout")
@pytest.mark.parametrize("config", [LengthConfig.ratios([0.9, 0.8, 0.6, 0.5, 0.35, 0.2]),
                                    LengthConfig.absolute([300, 250, 200, 150, 120, 91])], ids=["ratios", "absolute"])
def test_the_default_model_with_its_scorer_is_captured_in_a_cuda_graph(config):
    """The shipped model (6 layers, its trained relevance scorer selecting), at SQuAD's 384 tokens."""
    model, _ = load_qa_model(DEFAULT_MODEL_DIR, DEVICE)
    model = dtb_ext.patch(model).eval()
    lengths = [[384, 200, 97, 311], [150, 384, 384, 12], [384, 64, 250, 384]]
    batches = [_on(padded_qa_batch(each, model.config.vocab_size, seed=seed), DEVICE)
               for seed, each in enumerate(lengths)]
    _captured_replays_equal_eager(model, config, batches, atol=1e-3)
