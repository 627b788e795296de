"""Length configurations: how many tokens each encoder layer keeps (docs/design.md §2.1).

A configuration is one value per layer, non-increasing, either absolute token counts or fractions of each
example's real input length. Keep counts depend only on an example's real input length, so they are computed
once per forward, on the host, for every layer and example: no device synchronisation between layers. (The
static-shape path looks the same counts up on the device instead: dtb_ext/models/static_counts.py.)
A MixedLengthConfig gives each example of a batch its own configuration (docs/design.md §2.8).
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
                raise ValueError(
                    f"a saved ratio length configuration has the single key 'ratios', got keys {sorted(data)}"
                )
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
        _check_input_lengths(input_lengths)
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


@dataclass(frozen=True)
class MixedLengthConfig:
    """One length configuration per example of a batch (docs/design.md §2.8): mixed budgets in one forward pass.

    `configs[b]` is example b's LengthConfig, or None for full length (it keeps every real token at every
    layer). Each example keeps exactly the tokens it would keep alone under its own configuration, so its output
    equals its output alone (to float tolerance). Build one with `MixedLengthConfig([cfg_0, cfg_1, ...])`; an
    entry may be None, a sequence of per-layer ints, a LengthConfig or its JSON form. `num_layers` is inferred
    from the entries; pass it when every entry is None (`as_length_config` does).
    """

    configs: tuple[LengthConfig | None, ...]
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.configs, (str, bytes, LengthConfig)) or not isinstance(self.configs, Sequence):
            raise ValueError(f"MixedLengthConfig takes a sequence of per-example configurations, got {self.configs!r}")
        if len(self.configs) == 0:
            raise ValueError("MixedLengthConfig needs one configuration per example, got an empty sequence")
        configs = tuple(_example_config(entry, index) for index, entry in enumerate(self.configs))
        object.__setattr__(self, "configs", configs)
        layer_counts = sorted({config.num_layers for config in configs if config is not None})
        if len(layer_counts) > 1:
            raise ValueError(f"every example's configuration needs the same number of layers, got {layer_counts}")
        if layer_counts and self.num_layers is not None and layer_counts[0] != self.num_layers:
            raise ValueError(
                f"the per-example configurations have {layer_counts[0]} layers, but num_layers={self.num_layers}"
            )
        if layer_counts:
            object.__setattr__(self, "num_layers", layer_counts[0])

    def __len__(self) -> int:
        return len(self.configs)

    def to_json(self) -> dict[str, list[Any]]:
        """`{"per_example": [...]}`, each entry None or its LengthConfig's JSON form; `from_json` reads it back."""
        return {"per_example": [None if config is None else config.to_json() for config in self.configs]}

    @classmethod
    def from_json(cls, data: Any) -> MixedLengthConfig:
        """Inverse of `to_json`."""
        if not isinstance(data, dict) or set(data) != {"per_example"} or not isinstance(data["per_example"], list):
            raise ValueError(f"a saved mixed length configuration is {{'per_example': [...]}}, got {data!r}")
        return cls(data["per_example"])

    def check_batch_size(self, batch_size: int) -> None:
        """ValueError unless the batch has one example per configuration."""
        if batch_size != len(self.configs):
            raise ValueError(
                f"a mixed length configuration has one configuration per example: got {len(self.configs)} "
                f"configurations for a batch of {batch_size} examples"
            )

    def keep_counts(self, input_lengths: Sequence[int]) -> list[list[int]]:
        """Tokens each example keeps at each layer, each under its own configuration.

        Args:
            input_lengths: [B] real (unmasked) input length of each example, each >= 1; B must be len(configs).

        Returns:
            [num_layers][B] keep counts, column b being what `configs[b]` keeps for example b alone.
        """
        self.check_batch_size(len(input_lengths))
        if self.num_layers is None:
            raise ValueError(
                "every entry of this mixed length configuration is full length, so its layer count is unknown: "
                "pass num_layers or resolve it with as_length_config(spec, num_layers)"
            )
        _check_input_lengths(input_lengths)
        columns = [
            [length] * self.num_layers if config is None else [row[0] for row in config.keep_counts([length])]
            for config, length in zip(self.configs, input_lengths)
        ]
        return [list(row) for row in zip(*columns)]


LengthSpec = Union[None, Sequence[int], LengthConfig, MixedLengthConfig]


def length_config_from_json(data: Any) -> LengthConfig | MixedLengthConfig:
    """A saved configuration: `LengthConfig.from_json`'s forms or a mixed one's `{"per_example": [...]}`."""
    if isinstance(data, dict) and "per_example" in data:
        return MixedLengthConfig.from_json(data)
    return LengthConfig.from_json(data)


def as_length_config(spec: LengthSpec, num_layers: int) -> LengthConfig | MixedLengthConfig | None:
    """Validate a user's length configuration against a model with `num_layers` layers.

    Args:
        spec: None (full length), a sequence of per-layer ints, a LengthConfig, or a MixedLengthConfig (one
            configuration per example of the batch).
        num_layers: the encoder's layer count.

    Returns:
        The LengthConfig or MixedLengthConfig (with its layer count set), or None for full length.
    """
    if spec is None:
        return None
    if isinstance(spec, MixedLengthConfig):
        if spec.num_layers is None:
            return MixedLengthConfig(spec.configs, num_layers)
        if spec.num_layers != num_layers:
            raise ValueError(
                f"the length configuration needs one value per layer: expected {num_layers}, got per-example "
                f"configurations of {spec.num_layers} layers"
            )
        return spec
    config = _single_config(spec, "a length configuration")
    if config.num_layers != num_layers:
        raise ValueError(
            f"the length configuration needs one value per layer: expected {num_layers}, got {config.num_layers} "
            f"({list(config.values)})"
        )
    return config


def _single_config(spec: Any, what: str) -> LengthConfig:
    """A LengthConfig from itself, a sequence of per-layer ints, or a NumPy array / tensor of them."""
    if hasattr(spec, "tolist") and not isinstance(spec, (Sequence, LengthConfig)):
        spec = spec.tolist()  # a NumPy array or a tensor of per-layer lengths (a scalar is rejected below)
    if isinstance(spec, LengthConfig):
        return spec
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
        raise ValueError(f"{what} is None, a sequence of per-layer ints or LengthConfig.ratios([...]), got {spec!r}")
    return LengthConfig.absolute(spec)


def _example_config(entry: Any, index: int) -> LengthConfig | None:
    """One entry of a MixedLengthConfig as a LengthConfig (None stays None, meaning full length)."""
    if entry is None:
        return None
    if isinstance(entry, MixedLengthConfig):
        raise ValueError(f"the configuration of example {index} is itself a MixedLengthConfig; give one per example")
    if isinstance(entry, dict):
        return LengthConfig.from_json(entry)
    return _single_config(entry, f"the configuration of example {index}")


def _check_input_lengths(input_lengths: Sequence[int]) -> None:
    for length in input_lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"every example needs at least one real token, got input lengths {list(input_lengths)}")


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
