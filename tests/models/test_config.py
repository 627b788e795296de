"""LengthConfig: validation, keep counts (docs/design.md §2.1), JSON round trip."""
from __future__ import annotations

import json

import numpy as np

import pytest

from dtb_ext.config import LengthConfig, as_length_config


def test_absolute_keep_counts_are_capped_by_the_real_tokens_entering():
    config = LengthConfig.absolute([10, 8, 8, 3])
    # Example lengths 12, 9 and 2: min(l_i, n_b) where n_b is what entered the layer.
    assert config.keep_counts([12, 9, 2]) == [[10, 9, 2], [8, 8, 2], [8, 8, 2], [3, 3, 2]]


def test_ratio_keep_counts_use_the_input_length_and_keep_at_least_one():
    config = LengthConfig.ratios([1.0, 0.75, 0.5, 0.1])
    # max(1, ceil(r * n0)): n0 = 10 -> 10, 8, 5, 1; n0 = 3 -> 3, 3, 2, 1; n0 = 1 -> 1 everywhere.
    assert config.keep_counts([10, 3, 1]) == [[10, 3, 1], [8, 3, 1], [5, 2, 1], [1, 1, 1]]


@pytest.mark.parametrize(
    ("ratio", "length", "expected"),
    [(0.7, 10, 7), (0.1, 10, 1), (0.3, 10, 3), (0.29, 100, 29), (0.57, 100, 57), (1 / 3, 3, 1)],
)
def test_ratio_products_are_exact_where_floating_point_is_not(ratio, length, expected):
    # 0.7 * 10 == 7.000000000000001 and 0.57 * 100 == 56.99999999999999 in floating point.
    assert LengthConfig.ratios([ratio]).keep_counts([length]) == [[expected]]


@pytest.mark.parametrize(
    ("factory", "values", "message"),
    [
        (LengthConfig.absolute, [8, 9], "non-increasing"),
        (LengthConfig.absolute, [8, 0], ">= 1"),
        (LengthConfig.absolute, [-3], ">= 1"),
        (LengthConfig.absolute, [8, 2.5], "ints"),
        (LengthConfig.absolute, [True], "ints"),
        (LengthConfig.absolute, [], "one value per layer"),
        (LengthConfig.ratios, [0.5, 0.6], "non-increasing"),
        (LengthConfig.ratios, [1.5], r"\(0, 1\]"),
        (LengthConfig.ratios, [0.0], r"\(0, 1\]"),
        (LengthConfig.ratios, [-0.2], r"\(0, 1\]"),
        (LengthConfig.ratios, ["half"], "numbers"),
    ],
)
def test_invalid_configs_raise_value_error_naming_the_problem(factory, values, message):
    with pytest.raises(ValueError, match=message):
        factory(values)


def test_as_length_config_checks_the_layer_count_and_type():
    assert as_length_config(None, 6) is None
    assert as_length_config([5, 4, 3], 3) == LengthConfig.absolute([5, 4, 3])
    ratios = LengthConfig.ratios([0.5, 0.5])
    assert as_length_config(ratios, 2) is ratios
    with pytest.raises(ValueError, match="expected 6, got 3"):
        as_length_config([5, 4, 3], 6)
    with pytest.raises(ValueError, match="expected 2, got 3"):
        as_length_config(LengthConfig.ratios([1.0, 0.5, 0.5]), 2)
    with pytest.raises(ValueError, match="sequence of per-layer ints"):
        as_length_config("384", 1)
    with pytest.raises(ValueError, match="sequence of per-layer ints"):
        as_length_config(0.5, 1)
    with pytest.raises(ValueError, match="sequence of per-layer ints"):
        as_length_config(np.float64(0.5), 1)


def test_keep_counts_reject_empty_examples():
    with pytest.raises(ValueError, match="at least one real token"):
        LengthConfig.absolute([4]).keep_counts([5, 0])


@pytest.mark.parametrize("config", [LengthConfig.absolute([9, 7, 7]), LengthConfig.ratios([0.9, 0.5, 0.25])])
def test_json_round_trip(config):
    text = json.dumps(config.to_json())
    assert LengthConfig.from_json(json.loads(text)) == config


def test_from_json_rejects_unknown_forms():
    with pytest.raises(ValueError, match="single key 'ratios'"):
        LengthConfig.from_json({"ratio": [0.5]})
    with pytest.raises(ValueError, match="list of ints"):
        LengthConfig.from_json("9,7,7")


def test_numpy_numbers_become_plain_python_numbers():

    absolute = LengthConfig.absolute(np.array([9, 7, 7]))
    ratios = LengthConfig.ratios(np.array([0.5, 0.25]))
    assert json.loads(json.dumps(absolute.to_json())) == [9, 7, 7]
    assert json.loads(json.dumps(ratios.to_json())) == {"ratios": [0.5, 0.25]}
    assert all(type(value) is int for value in absolute.values)
    assert as_length_config(np.array([9, 7, 7]), 3) == absolute
