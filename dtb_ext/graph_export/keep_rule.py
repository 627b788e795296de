"""The per-layer keep rule as inputs of an exported graph, and the keep counts the graph computes from them.

An exported graph takes the rule as two int64 inputs, one row per example (so a batch may mix budgets, docs/design.md
§2.8) and one column per layer:

- `keep_ratio_basis_points` [B, n_layers]: the ratio r_i in basis points, an integer (r_i * 10^4);
- `keep_lengths` [B, n_layers]: the absolute length l_i.

Inside the graph, example b keeps at layer i

    kept_i = min(entering_i, max(1, ceil(basis_points_i * n_b0 / 10^4)), l_i),    entering_0 = n_b0,

n_b0 being its real input length (from the attention mask), entering_{i+1} = kept_i. A ratio configuration sets
l_i = NO_LENGTH_LIMIT, an absolute one sets every ratio to 1 (10^4 basis points), so this is exactly docs/design.md
§2.1: `min(l_i, n_b)` for absolute lengths, `max(1, ceil(r_i * n_b0))` for ratios (the entering count only matters
for a ratio of 1).

The ceiling must be exact: `LengthConfig` takes `ceil(0.7 * 10)` as 7, the decimal the user wrote, where a float
product gives 8. Runtimes may run integer arithmetic in float32 (OpenVINO's CPU plugin turned an int64 floor
division into a float one, off by one at 10^6 scale), so the graph counts instead of dividing:
`ceil(p * n / 10^4) = #{k >= 0 : k * 10^4 < p * n}`, with every operand below 2^24 (exact in float32) for inputs up
to MAX_EXACT_LENGTH tokens. Hence ratios fed to a graph have at most 4 decimals.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dtb_ext.config import RATIO, LengthConfig, MixedLengthConfig, as_length_config, length_config_from_json

RATIO_SCALE = 10**4
# Products p * n stay below 2^24 (exact in float32) up to this input length.
MAX_EXACT_LENGTH = 2**24 // RATIO_SCALE
# l_i of a ratio configuration: larger than any sequence a BERT-family model reads.
NO_LENGTH_LIMIT = 2**31 - 1
INPUT_NAMES = ("keep_ratio_basis_points", "keep_lengths")


def keep_rule_arrays(spec: Any, batch_size: int, num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """The graph inputs for a length configuration: ([B, n_layers] basis points, [B, n_layers] lengths), int64.

    Args:
        spec: None (full length), a sequence of per-layer ints, a LengthConfig, a MixedLengthConfig (one entry per
            example) or the saved JSON form of any of them; validated as `dtb_ext.set_length_config` does.
        batch_size: B, the examples of the batch the inputs go with.
        num_layers: the exported model's layer count.

    Raises:
        ValueError: a configuration of the wrong length, out-of-range or increasing values, a mixed configuration
            with another number of examples than the batch, or a ratio with more than 4 decimals.
    """
    if isinstance(spec, dict):
        spec = length_config_from_json(spec)
    config = as_length_config(spec, num_layers)
    if isinstance(config, MixedLengthConfig):
        config.check_batch_size(batch_size)
        rows = [_row(entry, num_layers) for entry in config.configs]
    else:
        rows = [_row(config, num_layers)] * batch_size
    basis_points = np.array([row[0] for row in rows], dtype=np.int64).reshape(batch_size, num_layers)
    lengths = np.array([row[1] for row in rows], dtype=np.int64).reshape(batch_size, num_layers)
    return basis_points, lengths


def _row(config: LengthConfig | None, num_layers: int) -> tuple[list[int], list[int]]:
    """One example's (basis points, lengths) per layer."""
    if config is None:
        return [RATIO_SCALE] * num_layers, [NO_LENGTH_LIMIT] * num_layers
    if config.kind == RATIO:
        return [_basis_points(value, index, config.values) for index, value in enumerate(config.values)], \
            [NO_LENGTH_LIMIT] * num_layers
    return [RATIO_SCALE] * num_layers, list(config.values)


def _basis_points(ratio: float, index: int, values: tuple) -> int:
    exact = Fraction(repr(float(ratio))) * RATIO_SCALE
    if exact.denominator != 1:
        raise ValueError(f"an exported graph takes ratios with at most 4 decimals (it computes keep counts exactly, "
                         f"in basis points), got {ratio!r} at layer {index} in {list(values)}: round it")
    return int(exact)


def falling_ratios(num_layers: int) -> dict[str, list[float]]:
    """A ratio configuration (JSON form) that drops tokens at every layer of any example of a few tokens or more:
    ratios falling evenly from 1 to 1 / (num_layers + 1). The example inputs of a trace and int8 calibration use it,
    so that every layer's token selection runs."""
    return {"ratios": [round(1 - (index + 1) / (num_layers + 1), 4) for index in range(num_layers)]}


def keep_counts(real_lengths: Tensor, basis_points: Tensor, lengths: Tensor, width: int) -> Tensor:
    """Tokens each example keeps at each layer, in graph ops (traced into the exported graph).

    Args:
        real_lengths: [B] int64 real input length n_b0 of each example.
        basis_points, lengths: [B, n_layers] int64, the keep rule (see the module docstring).
        width: L0, the padded input length (at least every n_b0).

    Returns:
        [B, n_layers] int64; column i is what layer i keeps, which also enters layer i + 1.
    """
    # ceil(p * n / S) for p <= S and n <= L0 is the number of k in [0, L0) with k * S < p * n (see above).
    steps = torch.arange(width, device=real_lengths.device) * RATIO_SCALE
    by_ratio = (steps[None, None, :] < (basis_points * real_lengths[:, None])[:, :, None]).sum(dim=2)
    caps = torch.minimum(by_ratio.clamp(min=1), lengths)
    entering = real_lengths
    columns = []
    for layer in range(caps.shape[1]):
        entering = torch.minimum(entering, caps[:, layer])
        columns.append(entering)
    return torch.stack(columns, dim=1)
