"""Mixed budgets in one forward pass (docs/design.md §2.8): MixedLengthConfig's keep counts and validation, and each
example of a mixed, padded batch equal to that example run alone under its own configuration."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch
from transformers import BertConfig

import dtb_ext
from dtb_ext import ops
from dtb_ext.config import LengthConfig, MixedLengthConfig, as_length_config, length_config_from_json
from dtb_ext.macs import count_macs
from tiny_qa import alone, padded_qa_batch, tiny_qa_model

NUM_LAYERS = 4
VOCAB = 2000


def test_each_column_is_what_its_config_keeps_alone():
    absolute = LengthConfig.absolute([10, 8, 5, 2])
    ratios = LengthConfig.ratios([0.9, 0.5, 0.5, 0.25])
    mixed = MixedLengthConfig([absolute, None, ratios, [3, 3, 2, 1]])
    lengths = [12, 9, 20, 7]
    counts = mixed.keep_counts(lengths)
    assert len(counts) == NUM_LAYERS and all(len(row) == len(lengths) for row in counts)
    assert [row[0] for row in counts] == [row[0] for row in absolute.keep_counts([12])]
    assert [row[1] for row in counts] == [9, 9, 9, 9]  # None: every real token at every layer
    assert [row[2] for row in counts] == [row[0] for row in ratios.keep_counts([20])]
    assert [row[3] for row in counts] == [3, 3, 2, 1]


def test_the_batch_size_must_match_the_number_of_configs():
    mixed = MixedLengthConfig([[4, 2], None, [3, 1]])
    with pytest.raises(ValueError, match="3 configurations for a batch of 2 examples"):
        mixed.keep_counts([5, 6])
    with pytest.raises(ValueError, match="at least one real token"):
        mixed.keep_counts([5, 0, 4])


def test_bad_mixed_configs_are_rejected():
    with pytest.raises(ValueError, match="same number of layers"):
        MixedLengthConfig([[4, 2], [4, 3, 2]])
    with pytest.raises(ValueError, match="empty sequence"):
        MixedLengthConfig([])
    with pytest.raises(ValueError, match="sequence of per-example"):
        MixedLengthConfig(LengthConfig.absolute([4, 2]))
    with pytest.raises(ValueError, match="example 1"):
        MixedLengthConfig([[4, 2], "4,2"])
    with pytest.raises(ValueError, match="non-increasing"):
        MixedLengthConfig([[4, 5]])
    with pytest.raises(ValueError, match="itself a MixedLengthConfig"):
        MixedLengthConfig([MixedLengthConfig([[4, 2]])])
    with pytest.raises(ValueError, match="layer count is unknown"):
        MixedLengthConfig([None, None]).keep_counts([3, 4])


def test_as_length_config_binds_and_checks_the_layer_count():
    all_full = as_length_config(MixedLengthConfig([None, None]), 3)
    assert all_full.num_layers == 3
    assert all_full.keep_counts([3, 5]) == [[3, 5]] * 3
    mixed = MixedLengthConfig([[4, 2], None])
    assert as_length_config(mixed, 2) is mixed
    with pytest.raises(ValueError, match="expected 3, got per-example configurations of 2 layers"):
        as_length_config(mixed, 3)


def test_json_round_trip():
    mixed = MixedLengthConfig([[9, 7, 7], None, LengthConfig.ratios([0.9, 0.5, 0.25])])
    text = json.dumps(mixed.to_json())
    assert MixedLengthConfig.from_json(json.loads(text)) == mixed
    assert length_config_from_json(json.loads(text)) == mixed
    assert length_config_from_json([9, 7, 7]) == LengthConfig.absolute([9, 7, 7])
    with pytest.raises(ValueError, match="per_example"):
        MixedLengthConfig.from_json({"per_example": [None], "extra": 1})


def test_count_macs_takes_a_one_example_mixed_config():
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3)
    single = [10, 6, 3]
    assert count_macs(config, MixedLengthConfig([single]), 12).total == count_macs(config, single, 12).total
    assert count_macs(config, MixedLengthConfig([None], 3), 12).total == count_macs(config, [12] * 3, 12).total
    with pytest.raises(ValueError, match="2 configurations for a batch of 1"):
        count_macs(config, MixedLengthConfig([single, None]), 12)


# --- the encoder: a mixed batch equals each example alone ------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    # A wide initialisation, so that dropping tokens visibly moves the logits (the test can fail).
    return dtb_ext.patch(tiny_qa_model(VOCAB, initializer_range=0.5, num_hidden_layers=NUM_LAYERS))


def _ops_path(source: str) -> contextlib.AbstractContextManager:
    if source == "kernels":
        if not dtb_ext.has_kernels():
            pytest.skip("dtb_ext._C is not built")
        return contextlib.nullcontext()
    return ops.reference_ops()


CONFIGS = [
    None,
    LengthConfig.absolute([30, 20, 12, 5]),
    LengthConfig.ratios([0.8, 0.6, 0.4, 0.2]),
    LengthConfig.absolute([40, 40, 40, 40]),  # keeps every real token of every example here
    LengthConfig.absolute([9, 9, 4, 1]),
    LengthConfig.ratios([0.5, 0.5, 0.5, 0.5]),
]
LENGTHS = [37, 40, 23, 11, 40, 29]  # padding in most rows


@pytest.mark.parametrize("source", ["kernels", "reference"])
def test_each_example_of_a_mixed_batch_equals_it_alone_under_its_config(model, source):
    inputs = padded_qa_batch(LENGTHS, VOCAB)
    with torch.no_grad(), _ops_path(source):
        with dtb_ext.length_config(model, MixedLengthConfig(CONFIGS)):
            mixed = model(**inputs)
        changed = 0
        for row, (config, length) in enumerate(zip(CONFIGS, LENGTHS)):
            single = alone(inputs, row, length)
            with dtb_ext.length_config(model, config):
                by_itself = model(**single)
            full = model(**single)
            for name in ("start_logits", "end_logits"):
                torch.testing.assert_close(
                    getattr(mixed, name)[row, :length], getattr(by_itself, name)[0], atol=1e-5, rtol=1e-4
                )
            changed += not torch.allclose(by_itself.start_logits, full.start_logits, atol=1e-3)
    assert changed >= 3  # the reduced configs really drop tokens, so a wrong assignment would show


def test_set_length_config_takes_a_mixed_config_and_saves_its_json(model):
    inputs = padded_qa_batch(LENGTHS[:3], VOCAB)
    mixed = MixedLengthConfig(CONFIGS[:3])
    try:
        dtb_ext.set_length_config(model, mixed)
        assert dtb_ext.get_length_config(model) == mixed
        assert model.config.dtb_length_config == mixed.to_json()
        with torch.no_grad():
            expected = model(**inputs).start_logits
            dtb_ext.set_length_config(model, json.loads(json.dumps(model.config.dtb_length_config)))
            torch.testing.assert_close(model(**inputs).start_logits, expected)
        with pytest.raises(ValueError, match="3 configurations for a batch of 2 examples"), torch.no_grad():
            model(**padded_qa_batch(LENGTHS[:2], VOCAB))
    finally:
        dtb_ext.set_length_config(model, None)
