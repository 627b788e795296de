"""Length configurations: how many tokens each encoder layer keeps (DESIGN.md §2.1).

A configuration is one value per layer, non-increasing, either absolute token counts or fractions of each
example's real input length. Keep counts depend only on an example's real input length, so they are computed
once per forward, on the host, for every layer and example: no device synchronisation between layers.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Union

ABSOLUTE = "absolute"
RATIO = "ratio"


@dataclass(frozen=True)
class LengthConfig:
    """Per-layer keep rule: `kind` is "absolute" (token counts) or "ratio" (fractions of the input length).

    Build one with `LengthConfig.absolute([...])` or `LengthConfig.ratios([...])`; both validate their values.
    """

    kind: str
    values: tuple[Union[int, float], ...]

    def __post_init__(self) -> None:
        if self.kind not in (ABSOLUTE, RATIO):
            raise ValueError(f"LengthConfig kind must be {ABSOLUTE!r} or {RATIO!r}, got {self.kind!r}")
        if len(self.values) == 0:
            raise ValueError("a length configuration needs one value per layer, got an empty sequence")
        if self.kind == ABSOLUTE:
            _check_absolute(self.values)
        else:
            _check_ratios(self.values)

    @classmethod
    def absolute(cls, lengths: Sequence[int]) -> LengthConfig:
        """Layer i keeps `min(lengths[i], n_b)` tokens, n_b the real tokens of example b entering it."""
        return cls(ABSOLUTE, tuple(_plain_number(value, numbers.Integral, int) for value in lengths))

    @classmethod
    def ratios(cls, ratios: Sequence[float]) -> LengthConfig:
        """Layer i keeps `max(1, ceil(ratios[i] * n_b0))` tokens, n_b0 the real input length of example b."""
        return cls(RATIO, tuple(_plain_number(value, numbers.Real, float) for value in ratios))

    @property
    def num_layers(self) -> int:
        return len(self.values)

    def to_json(self) -> Union[list[int], dict[str, list[float]]]:
        """A JSON-serialisable form: a list of ints (absolute) or `{"ratios": [...]}`; `from_json` reads it back."""
        if self.kind == ABSOLUTE:
            return list(self.values)
        return {"ratios": list(self.values)}

    @classmethod
    def from_json(cls, data: Any) -> LengthConfig:
        """Inverse of `to_json`."""
        if isinstance(data, dict):
            if set(data) != {"ratios"}:
                raise ValueError(f"a saved ratio length configuration has the single key 'ratios', got keys {sorted(data)}")
            return cls.ratios(data["ratios"])
        if isinstance(data, (list, tuple)):
            return cls.absolute(data)
        raise ValueError(f"a saved length configuration is a list of ints or {{'ratios': [...]}}, got {data!r}")

    def keep_counts(self, input_lengths: Sequence[int]) -> list[list[int]]:
        """Tokens each example keeps at each layer.

        Args:
            input_lengths: [B] real (unmasked) input length of each example, each >= 1.

        Returns:
            [num_layers][B] keep counts; row i is what layer i keeps, which is also what enters layer i+1.
        """
        for length in input_lengths:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"every example needs at least one real token, got input lengths {list(input_lengths)}")
        counts: list[list[int]] = []
        entering = list(input_lengths)
        for value in self.values:
            if self.kind == ABSOLUTE:
                kept = [min(value, n) for n in entering]
            else:
                ratio = _exact_ratio(value)
                # min() with the entering count only matters for a ratio of 1 (a no-op) given non-increasing ratios.
                kept = [min(n, max(1, math.ceil(ratio * n0))) for n, n0 in zip(entering, input_lengths)]
            counts.append(kept)
            entering = kept
        return counts


LengthSpec = Union[None, Sequence[int], LengthConfig]


def as_length_config(spec: LengthSpec, num_layers: int) -> LengthConfig | None:
    """Validate a user's length configuration against a model with `num_layers` layers.

    Args:
        spec: None (full length), a sequence of per-layer ints, or a LengthConfig.
        num_layers: the encoder's layer count.

    Returns:
        The LengthConfig, or None for full length.
    """
    if spec is None:
        return None
    if hasattr(spec, "tolist") and not isinstance(spec, (Sequence, LengthConfig)):
        spec = spec.tolist()  # a NumPy array or a tensor of per-layer lengths (a scalar is rejected below)
    if isinstance(spec, LengthConfig):
        config = spec
    elif isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise ValueError(
            f"a length configuration is None, a sequence of per-layer ints or LengthConfig.ratios([...]), got {spec!r}"
        )
    else:
        config = LengthConfig.absolute(spec)
    if config.num_layers != num_layers:
        raise ValueError(
            f"the length configuration needs one value per layer: expected {num_layers}, got {config.num_layers} "
            f"({list(config.values)})"
        )
    return config


def _plain_number(value: Any, kind: type, convert: type) -> Any:
    """NumPy and other registered numbers as plain Python ones (JSON needs them); anything else unchanged, for
    the validation to reject with a message."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return convert(value)
    return value


def _check_absolute(values: tuple) -> None:
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"absolute lengths must be ints, got {value!r} at layer {index} in {list(values)}")
        if value < 1:
            raise ValueError(f"lengths must be >= 1, got {value} at layer {index} in {list(values)}")
    _check_non_increasing(values, "lengths")


def _check_ratios(values: tuple) -> None:
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"ratios must be numbers, got {value!r} at layer {index} in {list(values)}")
        if not (0.0 < value <= 1.0):
            raise ValueError(f"ratios must lie in (0, 1], got {value} at layer {index} in {list(values)}")
    _check_non_increasing(values, "ratios")


def _check_non_increasing(values: tuple, what: str) -> None:
    for index in range(1, len(values)):
        if values[index] > values[index - 1]:
            raise ValueError(
                f"{what} must be non-increasing across layers, got {values[index - 1]} at layer {index - 1} "
                f"then {values[index]} at layer {index} in {list(values)}"
            )


def _exact_ratio(value: float) -> Fraction:
    """The ratio as the decimal the user wrote: ceil(0.7 * 10) must be 7, although 0.7 * 10 is 7.000000000000001
    in floating point."""
    return Fraction(repr(float(value)))
