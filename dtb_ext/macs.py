"""Analytic multiply-accumulate counts of a (dynamic) BERT encoder, the cost model of the length search.

Only the matrix products are counted (biases, softmax, LayerNorm, activations are lower-order). For layer i with
n_i tokens entering and k_i kept (n_i = k_{i-1}, n_0 the input length), D hidden size, I intermediate size:

    QKV projections  3 * n_i * D * D
    scores           n_i * n_i * D        (H heads of n_i x n_i x D/H)
    context          n_i * n_i * D
    output proj.     n_i * D * D          (the attention output block runs on every entering token)
    feed-forward     2 * k_i * D * I      (only the kept tokens)
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dtb_ext.config import LengthSpec, as_length_config


@dataclass(frozen=True)
class LayerMacs:
    """Multiply-accumulates of one layer, for `tokens_in` entering tokens of which `tokens_kept` are kept."""

    tokens_in: int
    tokens_kept: int
    qkv: int
    scores: int
    context: int
    output: int
    feed_forward: int

    @property
    def attention(self) -> int:
        return self.qkv + self.scores + self.context + self.output

    @property
    def total(self) -> int:
        return self.attention + self.feed_forward


@dataclass(frozen=True)
class EncoderMacs:
    """Per-layer and total multiply-accumulates of the encoder for one example."""

    layers: tuple[LayerMacs, ...]

    @property
    def attention(self) -> int:
        return sum(layer.attention for layer in self.layers)

    @property
    def feed_forward(self) -> int:
        return sum(layer.feed_forward for layer in self.layers)

    @property
    def total(self) -> int:
        return self.attention + self.feed_forward


def count_macs(config: Any, length_config: LengthSpec, seq_len: int, padded_to: int | None = None) -> EncoderMacs:
    """Encoder MACs for one example of `seq_len` real tokens, alone in its batch.

    Args:
        config: a Hugging Face BERT-family config (hidden_size, intermediate_size, num_hidden_layers are read).
        length_config: None (full length), per-layer ints, or a LengthConfig.
        seq_len: the example's real input length, >= 1.
        padded_to: the input width when the example is padded (the paper's protocol pads to 384), >= seq_len.
            Without a length config every layer then runs at that width; with one, the first layer's attention
            does and its gather drops the padding (the gathered width is the keep count, docs/design.md §2.1).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    if padded_to is not None and (isinstance(padded_to, bool) or not isinstance(padded_to, int) or padded_to < seq_len):
        raise ValueError(f"padded_to must be an int >= seq_len ({seq_len}), got {padded_to!r}")
    num_layers = config.num_hidden_layers
    hidden = config.hidden_size
    intermediate = config.intermediate_size
    resolved = as_length_config(length_config, num_layers)
    width = seq_len if padded_to is None else padded_to
    if resolved is None:
        kept_per_layer = [width] * num_layers
    else:
        kept_per_layer = [row[0] for row in resolved.keep_counts([seq_len])]
    layers = []
    entering = width
    for kept in kept_per_layer:
        layers.append(
            LayerMacs(
                tokens_in=entering,
                tokens_kept=kept,
                qkv=3 * entering * hidden * hidden,
                scores=entering * entering * hidden,
                context=entering * entering * hidden,
                output=entering * hidden * hidden,
                feed_forward=2 * kept * hidden * intermediate,
            )
        )
        entering = kept
    return EncoderMacs(tuple(layers))


def summed_macs(config: Any, length_config: LengthSpec, lengths: Iterable[int], padded_to: int | None = None) -> int:
    """Encoder MACs of one pass over examples of the given real `lengths`, each alone at its length (or padded to
    `padded_to`, see `count_macs`), summed: the cost of an evaluation at `length_config`."""
    counts = Counter(int(n) for n in lengths)
    return sum(count * count_macs(config, length_config, n, padded_to).total for n, count in counts.items())


def macs_ratio(config: Any, length_config: LengthSpec, lengths: Iterable[int], padded_to: int | None = None) -> float:
    """Full-length MACs over MACs under `length_config`, both `summed_macs` over `lengths`: the ideal speedup."""
    lengths = list(lengths)
    return summed_macs(config, None, lengths, padded_to) / summed_macs(config, length_config, lengths, padded_to)
