"""Which configurations the demo measures: full length and the front's picks for three budgets (`pick`), and
the length config each runs with."""
from __future__ import annotations

import dataclasses
from typing import Any

from dtb_ext.config import LengthConfig

# the padding protocols of the latency loop: each feature at its real length, and padded to max_seq_length (the
# paper's protocol)
PADDINGS = ("dynamic", "max_length")
# "The fastest still above a stated F1": by default this fraction of the front's full-length F1.
DEFAULT_MIN_F1_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """One configuration to measure: its labels (the budgets that chose it) and its front point (None for a
    full-length config absent from the front)."""

    labels: tuple[str, ...]
    length_config: LengthConfig
    front_f1: float | None
    front_speedup: float | None

    @property
    def label(self) -> str:
        return " = ".join(self.labels)


def choose_configs(front: Any, min_f1: float | None = None) -> list[DemoConfig]:
    """Full length, then `pick`'s choices within 1 % and 3 % of the full-length F1 and the fastest config with
    search-split F1 >= min_f1 (default: 90 % of the full-length F1). A config chosen by several budgets is
    listed once, with every label; full length comes first, the others by increasing front speedup."""
    from dtb_ext.search.pick import pick

    full = front.full_length
    if min_f1 is None:
        min_f1 = DEFAULT_MIN_F1_FRACTION * full.f1
    if min_f1 > full.f1:
        raise ValueError(
            f"--min-f1 must not exceed the front's full-length F1 ({full.f1:.2f}, search split), got {min_f1:.2f}"
        )
    choices = [
        ("full length", full),
        ("F1 within 1%", pick(front, max_f1_drop_percent=1.0)),
        ("F1 within 3%", pick(front, max_f1_drop_percent=3.0)),
        (f"fastest F1 >= {min_f1:.1f}", pick(front, max_f1_drop=full.f1 - min_f1)),
    ]
    by_config: dict[LengthConfig, DemoConfig] = {}
    for label, point in choices:
        previous = by_config.get(point.length_config)
        labels = (label,) if previous is None else previous.labels + (label,)
        by_config[point.length_config] = DemoConfig(labels, point.length_config, point.f1, point.speedup)
    # full length first (it anchors the speedups), then by increasing front speedup
    return sorted(by_config.values(), key=lambda c: (c.length_config != full.length_config, c.front_speedup))


def sample_for_latency(features: Any, count: int) -> Any:
    """`count` features evenly spaced over the features sorted by length (short to long), as EvalFeatures."""
    if not 1 <= count <= len(features):
        raise ValueError(f"--latency-features must be between 1 and the sample's {len(features)} features, got {count}")
    return features.spread_by_length(count)


def run_spec(length_config: LengthConfig, full_length: LengthConfig | None) -> LengthConfig | None:
    """The length config a demo row runs (and counts MACs) with. Full length runs without one, as the unpatched
    model does: every layer at the input width, padding included (the baseline of the paper's protocol). Any
    config drops the padding at its first gather (docs/design.md §2.1)."""
    return None if length_config == full_length else length_config


