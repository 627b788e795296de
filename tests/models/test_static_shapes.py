"""The static-shape path (docs/design.md §2, "Static shapes"): keep counts looked up on the device equal the host
rule; the path equals the default one at every real position; it reads no tensor value on the host."""
from __future__ import annotations

import random

import pytest
import torch

from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.models.static_counts import KeepTables

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
