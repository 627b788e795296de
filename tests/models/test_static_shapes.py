"""The static-shape path (docs/design.md §2, "Static shapes"): keep counts looked up on the device equal the host
rule; the path equals the default one at every real position; it reads no tensor value on the host."""
from __future__ import annotations

import contextlib
import random

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import dtb_ext
from dtb_ext import ops
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.models.dynamic_encoder import static_shapes
from dtb_ext.models.packed_linear import PackedLinears
from dtb_ext.models.patching import dynamic_encoder, skip_layers
from dtb_ext.models.static_counts import KeepTables
from tiny_qa import alone, padded_qa_batch, tiny_qa_model

NUM_LAYERS = 6
# Ratios whose float product with a length lands just above an integer (0.7 * 10 = 7.000000000000001), or that are
# no short decimal at all (0.1 + 0.2, 1 / 3): a float ceil on the device would keep one token too many.
AWKWARD_RATIOS = [
    [0.7, 0.7, 0.35, 0.35, 0.15, 0.05],
    [0.1 + 0.2, 0.1 + 0.2, 0.1 + 0.2, 0.2, 0.1, 0.1],
    [1.0, 1 / 3, 1 / 3, 1 / 7, 1 / 9, 1 / 11],
    [0.9, 0.8, 0.6, 0.5, 0.35, 0.2],
    [1.0] * NUM_LAYERS,
    [0.001] * NUM_LAYERS,
]
ABSOLUTE = [[384, 300, 200, 91, 91, 1], [14, 12, 10, 8, 6, 4], [1] * NUM_LAYERS, [512] * NUM_LAYERS]


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    """[B, width] bool, the first lengths[b] positions of row b real."""
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]


def _random_ratios(rng: random.Random) -> LengthConfig:
    digits = rng.choice([1, 2, 3, 17])
    ratios = sorted((round(rng.uniform(0.001, 1.0), digits) or 0.001 for _ in range(NUM_LAYERS)), reverse=True)
    return LengthConfig.ratios(ratios)


def _random_absolute(rng: random.Random) -> LengthConfig:
    return LengthConfig.absolute(sorted((rng.randint(1, 520) for _ in range(NUM_LAYERS)), reverse=True))


def _configs() -> list[LengthConfig]:
    rng = random.Random(0)
    return ([LengthConfig.ratios(r) for r in AWKWARD_RATIOS] + [LengthConfig.absolute(a) for a in ABSOLUTE]
            + [_random_ratios(rng) for _ in range(40)] + [_random_absolute(rng) for _ in range(10)])


@pytest.mark.parametrize("width", [1, 10, 97, 384])
def test_device_keep_counts_equal_the_host_rule_for_every_length(width):
    """Every real length 1..width in one batch, with a padded copy of each row: the counts the static path looks
    up are those of `keep_counts`, exactly, and each layer's width is the largest count any length could get."""
    lengths = list(range(1, width + 1))
    for config in _configs():
        counts = KeepTables().counts(config, _mask(lengths, width), NUM_LAYERS)
        expected = config.keep_counts(lengths)
        assert counts.counts.dtype == torch.int64
        assert counts.counts.tolist() == expected, config
        assert list(counts.widths) == [max(row) for row in expected]
        wider = KeepTables().counts(config, _mask(lengths, width + 7), NUM_LAYERS)  # the same lengths, padded more
        assert wider.counts.tolist() == expected
        assert all(w >= max(row) for w, row in zip(wider.widths, expected, strict=True))


def test_device_keep_counts_equal_the_host_rule_for_mixed_configurations():
    rng = random.Random(1)
    pool = [None, *_configs()]
    for _ in range(20):
        lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 12))]
        mixed = MixedLengthConfig([rng.choice(pool) for _ in lengths], NUM_LAYERS)
        counts = KeepTables().counts(mixed, _mask(lengths, max(lengths) + rng.randint(0, 5)), NUM_LAYERS)
        expected = mixed.keep_counts(lengths)
        assert counts.counts.tolist() == expected
        assert all(w >= max(row) for w, row in zip(counts.widths, expected, strict=True))


def test_a_layer_drops_iff_its_rule_can_drop_at_some_length_up_to_the_padded_one():
    config = LengthConfig.absolute([30, 30, 20, 20, 20, 5])
    assert KeepTables().counts(config, _mask([10, 25], 25), NUM_LAYERS).drops == (
        False, False, True, False, False, True)
    assert KeepTables().counts(config, _mask([10, 40], 40), NUM_LAYERS).drops == (
        True, False, True, False, False, True)
    counts = KeepTables().counts(config, _mask([10, 40], 40), NUM_LAYERS)
    assert counts.drops_between(0, 1) is False and counts.drops_between(1, 3) is True  # layer 2 skipped
    assert counts.widths == (30, 30, 20, 20, 20, 5)


def test_a_mixed_batch_needs_one_configuration_per_example():
    mixed = MixedLengthConfig([None, [5] * NUM_LAYERS])
    with pytest.raises(ValueError, match="got 2 configurations for a batch of 3 examples"):
        KeepTables().counts(mixed, _mask([3, 4, 5], 5), NUM_LAYERS)


# --- the static path against the default path, on a tiny QA model ----------------------------------------------

VOCAB = 1000
MODEL_LAYERS = 4
LENGTHS = [37, 40, 23, 11, 40, 29, 1]  # padding in most rows, and an example of one token
MODEL_CONFIGS = {
    "ratios": LengthConfig.ratios([0.8, 0.6, 0.4, 0.2]),
    "absolute": LengthConfig.absolute([30, 20, 12, 5]),
    "absolute-late": LengthConfig.absolute([40, 40, 9, 1]),  # layers 0-1 drop nothing here, only padding goes
    "mixed": MixedLengthConfig([None, LengthConfig.absolute([30, 20, 12, 5]), LengthConfig.ratios([0.5] * 4),
                                LengthConfig.absolute([9, 9, 4, 1]), None, LengthConfig.ratios([0.8, 0.6, 0.4, 0.2]),
                                LengthConfig.absolute([2, 1, 1, 1])]),
    "full": None,
}
SOURCES = ["attention", "scorer", "attention+scorer"]


def _model(source: str) -> torch.nn.Module:
    """A patched 4-layer tiny QA model with a wide initialisation (dropping tokens visibly moves the logits) and,
    for the scorer sources, a scorer with random weights."""
    model = dtb_ext.patch(tiny_qa_model(VOCAB, initializer_range=0.5, num_hidden_layers=MODEL_LAYERS))
    if source != "attention":
        scorer = dtb_ext.add_relevance_scorer(model, source)
        with torch.no_grad():
            for parameter in scorer.parameters():
                parameter.normal_(0, 1)
    return model


@pytest.fixture(scope="module", params=SOURCES)
def model(request) -> torch.nn.Module:
    return _model(request.param)


def _logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], static: bool) -> torch.Tensor:
    """[2, B, L] start and end logits, on the static path or the default one."""
    with torch.no_grad(), static_shapes() if static else contextlib.nullcontext():
        output = model(**inputs)
    return torch.stack([output.start_logits, output.end_logits])


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_static_path_equals_the_default_path_at_every_real_position(model, name):
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    real = inputs["attention_mask"].bool()
    with dtb_ext.length_config(model, MODEL_CONFIGS[name]):
        expected = _logits(model, inputs, static=False)
        actual = _logits(model, inputs, static=True)
    torch.testing.assert_close(actual[:, real], expected[:, real], atol=1e-5, rtol=1e-4)
    if name != "full":  # the config really drops tokens, so a wrong selection would show
        assert not torch.allclose(expected[:, real], _logits(model, inputs, static=False)[:, real], atol=1e-3)


@pytest.mark.parametrize("name", ["ratios", "absolute", "mixed"])
def test_static_path_restores_the_default_full_length_sequence_output(model, name):
    """The encoder's [B, L0, D] output, dropped tokens restored, at every real position."""
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    mask = inputs["attention_mask"].bool()
    encoder = dynamic_encoder(model)
    with torch.no_grad():
        hidden = model.bert.embeddings(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"])
        expected = encoder.encode(hidden, mask, MODEL_CONFIGS[name])
        actual = encoder.encode(hidden, mask, MODEL_CONFIGS[name], static=True)
    torch.testing.assert_close(actual[mask], expected[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["ratios", "absolute"])
def test_each_example_on_the_static_path_equals_it_alone(model, name):
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with dtb_ext.length_config(model, MODEL_CONFIGS[name]):
        batched = _logits(model, inputs, static=True)
        for row, length in enumerate(LENGTHS):
            single = alone(inputs, row, length)
            for static in (True, False):
                torch.testing.assert_close(batched[:, row, :length], _logits(model, single, static)[:, 0],
                                           atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("skipped", [[1], [1, 2]])
def test_static_path_equals_the_default_path_with_skipped_layers(skipped):
    """LayerDrop: a layer after a skipped one drops what the skipped one would have (40 -> 20 at layer 2 when
    layer 1 is skipped), although its own rule keeps as many tokens as layer 1's."""
    model = _model("attention")
    with dtb_ext.length_config(model, LengthConfig.absolute([40, 20, 20, 5])), skip_layers(model, skipped):
        _assert_static_equals_default(model, padded_qa_batch(LENGTHS, VOCAB))


def test_static_path_equals_the_default_path_on_the_reference_ops():
    model = _model("attention+scorer")
    with ops.reference_ops(), dtb_ext.length_config(model, MODEL_CONFIGS["ratios"]):
        _assert_static_equals_default(model, padded_qa_batch(LENGTHS, VOCAB))


def _assert_static_equals_default(model, inputs: dict) -> None:
    """The static path's logits equal the default path's at the real positions, in the caller's context."""
    real = inputs["attention_mask"].bool()
    expected = _logits(model, inputs, static=False)
    actual = _logits(model, inputs, static=True)
    torch.testing.assert_close(actual[:, real], expected[:, real], atol=1e-5, rtol=1e-4)


def test_an_example_without_a_real_token_is_nan_on_the_static_path_and_the_others_are_unchanged():
    model = _model("attention")
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    inputs["attention_mask"][2] = 0
    for name in ("ratios", "full"):
        with dtb_ext.length_config(model, MODEL_CONFIGS[name]):
            logits = _logits(model, inputs, static=True)
            with pytest.raises(ValueError, match="all-padding row"):
                _logits(model, inputs, static=False)
            others = [row for row in range(len(LENGTHS)) if row != 2]
            subset = {key: value[others] for key, value in inputs.items()}
            expected = _logits(model, subset, static=False)
        assert logits[:, 2].isnan().all()
        real = subset["attention_mask"].bool()
        torch.testing.assert_close(logits[:, others][:, real], expected[:, real], atol=1e-5, rtol=1e-4)


# --- no host reads: the static path under fake tensors ---------------------------------------------------------


class _NoHostData(TorchDispatchMode):
    """Raises on `torch.tensor(python data)` (aten.lift_fresh): on CUDA a host-to-device copy, which a stream being
    captured into a CUDA graph does not allow. Reads of tensor values (`.tolist()`, `.item()`, `bool()`) raise
    under FakeTensorMode itself (DataDependentOutputException)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default):
            raise AssertionError(f"a tensor made from host data during the forward pass ({func})")
        return func(*args, **(kwargs or {}))


def _fake_forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's start logits with `inputs` as fake tensors (no data: any read of a value raises)."""
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {name: mode.from_tensor(tensor) for name, tensor in inputs.items()}
        with _NoHostData():
            return model(**fake).start_logits


@pytest.fixture
def without_onednn_packing(monkeypatch):
    """The CPU-only prepacked oneDNN Linears (packed_linear.py) have no fake kernels; this runs their plain
    nn.Linear equivalent. They never run on CUDA, so nothing a CUDA graph captures is left out."""
    monkeypatch.setattr(PackedLinears, "can_prepack", staticmethod(lambda: False))


@pytest.mark.parametrize("name", ["ratios", "absolute", "mixed", "full"])
def test_static_path_reads_no_tensor_value_on_the_host(model, name, without_onednn_packing):
    """The CPU proxy of "capturable in a CUDA graph": the whole patched model (HF's embeddings and mask code
    included) runs on fake tensors. Hugging Face's sdpa mask builder skips its `padding_mask.all()` on fake tensors,
    as it does while a CUDA stream is being captured (transformers' `is_tracing`)."""
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with torch.no_grad(), dtb_ext.length_config(model, MODEL_CONFIGS[name]), static_shapes():
        model(**inputs)  # the warm-up: builds the keep-count tables (a host-to-device copy, once per shape)
        logits = _fake_forward(model, inputs)
    assert isinstance(logits, FakeTensor) and logits.shape == inputs["input_ids"].shape


def test_default_path_reads_tensor_values_on_the_host(without_onednn_packing):
    """The proxy above catches the default path's host reads (keep counts from `mask.sum(dim=1).tolist()`)."""
    model = _model("attention")
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with torch.no_grad(), dtb_ext.length_config(model, MODEL_CONFIGS["ratios"]):
        model(**inputs)
        with pytest.raises(DataDependentOutputException):
            _fake_forward(model, inputs)


class _NoValueReads(TorchDispatchMode):
    """Raises on aten._local_scalar_dense, the op behind `.item()` and `bool()` of a tensor (on CUDA a
    device-to-host copy and a synchronisation)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a tensor value was read on the host")
        return func(*args, **(kwargs or {}))


def test_a_4d_attention_mask_skips_hugging_faces_host_read_on_an_eager_static_run():
    """docs/design.md §2, "Static shapes": outside capture and tracing, transformers' sdpa mask builder calls
    `padding_mask.all()` on a [B, L] mask; it passes a [B, 1, 1, L] mask through untouched, and so does the static
    path (the dtb ops' own value checks, inside their kernels, are not seen here)."""
    model = _model("attention")
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with torch.no_grad(), dtb_ext.length_config(model, MODEL_CONFIGS["ratios"]), static_shapes():
        expected = model(**inputs).start_logits
        with pytest.raises(AssertionError, match="read on the host"), _NoValueReads():
            model(**inputs)
        four_d = {**inputs, "attention_mask": inputs["attention_mask"].bool()[:, None, None, :]}
        with _NoValueReads():
            actual = model(**four_d).start_logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual[real], expected[real])
