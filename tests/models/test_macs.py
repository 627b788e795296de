"""count_macs against hand computations."""
from __future__ import annotations

import pytest
from transformers import BertConfig

from dtb_ext import LengthConfig, count_macs


def _config(layers: int, hidden: int, intermediate: int, heads: int) -> BertConfig:
    return BertConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
                      num_attention_heads=heads)


def test_tiny_encoder_by_hand():
    # D = 4, I = 8, 5 tokens in, layer 0 keeps 3, layer 1 keeps 2.
    macs = count_macs(_config(2, 4, 8, 2), [3, 2], 5)
    first, second = macs.layers
    # Layer 0 (5 in, 3 kept): QKV 3*5*4*4, scores 5*5*4, context 5*5*4, output 5*4*4, FFN 2*3*4*8.
    assert (first.qkv, first.scores, first.context, first.output, first.feed_forward) == (240, 100, 100, 80, 192)
    assert (first.tokens_in, first.tokens_kept, first.attention, first.total) == (5, 3, 520, 712)
    # Layer 1 (3 in, 2 kept): QKV 3*3*16, scores 9*4, context 9*4, output 3*16, FFN 2*2*4*8.
    assert (second.qkv, second.scores, second.context, second.output, second.feed_forward) == (144, 36, 36, 48, 128)
    assert (macs.attention, macs.feed_forward, macs.total) == (784, 320, 1104)


def test_bert_base_full_length_at_384():
    macs = count_macs(_config(12, 768, 3072, 12), None, 384)
    per_layer = 3 * 384 * 768**2 + 2 * 384**2 * 768 + 384 * 768**2 + 2 * 384 * 768 * 3072
    assert per_layer == 2_944_401_408
    assert macs.total == 12 * per_layer  # about 35.3 G multiply-accumulates


def test_ratios_and_absolute_lengths_beyond_the_input():
    config = _config(3, 4, 8, 2)
    # Absolute lengths above the input length keep every token: the same as full length.
    assert count_macs(config, [50, 40, 30], 10) == count_macs(config, None, 10)
    # ratios 0.5 of 10 -> 5 kept at every layer: layer 0 sees 10 tokens, layers 1 and 2 see 5.
    macs = count_macs(config, LengthConfig.ratios([0.5, 0.5, 0.5]), 10)
    assert [layer.tokens_in for layer in macs.layers] == [10, 5, 5]
    assert [layer.tokens_kept for layer in macs.layers] == [5, 5, 5]


@pytest.mark.parametrize("seq_len", [0, -1, 2.5, True])
def test_bad_sequence_length(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        count_macs(_config(1, 4, 8, 2), None, seq_len)


def test_wrong_layer_count():
    with pytest.raises(ValueError, match="expected 2, got 1"):
        count_macs(_config(2, 4, 8, 2), [3], 5)


def test_padded_input_runs_full_width_without_a_config_and_loses_the_padding_at_the_first_gather():
    config = _config(3, 4, 8, 2)
    unpadded = count_macs(config, None, 6)
    assert count_macs(config, None, 6, padded_to=6) == unpadded
    # Without a config all three layers run on the 10-wide padded input.
    assert count_macs(config, None, 6, padded_to=10) == count_macs(config, None, 10)
    # With one, layer 0's attention sees the 10 slots and its gather keeps min(l, 6) real tokens.
    macs = count_macs(config, [8, 8, 3], 6, padded_to=10)
    assert [layer.tokens_in for layer in macs.layers] == [10, 6, 6]
    assert [layer.tokens_kept for layer in macs.layers] == [6, 6, 3]
    assert macs.layers[0].feed_forward == 2 * 6 * 4 * 8


@pytest.mark.parametrize("padded_to", [5, 6.0, True])
def test_bad_padded_width(padded_to):
    with pytest.raises(ValueError, match="padded_to"):
        count_macs(_config(1, 4, 8, 2), None, 6, padded_to=padded_to)


def test_summed_macs_and_their_ratio_over_real_lengths():
    from dtb_ext.macs import macs_ratio, summed_macs

    config = _config(6, 32, 64, 2)
    ratios = LengthConfig.ratios([1, 1, 1, 1, 0.5, 0.5])
    lengths = [10, 40, 10]
    full = sum(count_macs(config, None, n).total for n in lengths)
    reduced = sum(count_macs(config, ratios, n).total for n in lengths)
    assert summed_macs(config, None, lengths) == full and summed_macs(config, ratios, lengths) == reduced
    assert macs_ratio(config, ratios, lengths) == pytest.approx(full / reduced)
    assert macs_ratio(config, None, lengths) == 1.0
    padded = sum(count_macs(config, ratios, n, 64).total for n in lengths)
    assert summed_macs(config, ratios, lengths, padded_to=64) == padded
