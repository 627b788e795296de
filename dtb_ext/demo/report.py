"""The demo's results: one measurement per configuration and precision, the rows they form, their JSON form and
the printed table."""
from __future__ import annotations

import dataclasses
from typing import Any

from dtb_ext.demo.configs import DemoConfig


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One configuration in one precision. Latencies are medians over the timed features, milliseconds per
    feature at batch 1, per padding protocol; speedup is fp32 full length's median over this one's, and
    speedup_same_precision full length's in this precision over this one's."""

    f1: float
    exact_match: float
    latency_ms: dict[str, float]
    speedup: dict[str, float]
    speedup_same_precision: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """Measured results of one configuration: `measurements` per precision (fp32 first); macs_ratio is the
    ideal speedup (full-length MACs / this config's MACs, summed over every evaluated feature) per padding
    protocol. The JSON form carries fp32's measurement at its top level and every precision's under
    "precisions"."""

    config: DemoConfig
    macs_ratio: dict[str, float]
    measurements: dict[str, Measurement]

    @property
    def fp32(self) -> Measurement:
        return self.measurements["fp32"]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.config.label,
            "length_config": self.config.length_config.to_json(),
            "front_f1": self.config.front_f1,
            "front_speedup": self.config.front_speedup,
            "f1": self.fp32.f1,
            "exact_match": self.fp32.exact_match,
            "latency_ms": self.fp32.latency_ms,
            "speedup": self.fp32.speedup,
            "macs_ratio": self.macs_ratio,
            "precisions": {name: m.to_json() for name, m in self.measurements.items()},
        }


@dataclasses.dataclass(frozen=True)
class DemoResult:
    rows: tuple[DemoRow, ...]
    settings: dict[str, Any]
    plot_path: str | None
    json_path: str | None


def format_table(result: DemoResult) -> str:
    """The demo's results as a text table, with a header saying what was measured and how."""
    s = result.settings
    lines = [
        f"{s['questions']} questions ({s['features']} features) of {s['data']}, sample seed "
        f"{s['sample_seed']}; {s['device']}, {s['threads']} threads, torch {s['torch']}, "
        f"{'compiled' if s['kernels'] else 'reference (no compiled)'} dtb kernels.",
        f"Latency: median ms per feature at batch 1 over {s['latency_features']} features evenly spaced in length "
        f"(mean {s['mean_latency_feature_length']:.0f} tokens); dynamic = each at its real length, "
        f"pad{s['max_seq_length']} = padded to {s['max_seq_length']} (the paper's protocol). "
        "Speedup (x): fp32 full length's latency / the config's; `prec x`: full length's in the same precision / "
        "the config's (dynamic padding). Full length runs without a config, like the unpatched model (padded: every "
        "layer at the padded width). MACs x: the ideal speedup from the MACs count under the same protocol.",
        "",
    ]
    header = (f"{'config':<28} {'prec':<5} {'F1':>6} {'EM':>6} {'dyn ms':>8} {'dyn x':>6} {'prec x':>6} "
              f"{'MACs x':>6} {'pad ms':>8} {'pad x':>6} {'MACs x':>6}  length config")
    lines.append(header)
    lines.append("-" * len(header))
    for row in result.rows:
        for index, (name, m) in enumerate(row.measurements.items()):
            label = row.config.label if index == 0 else ""
            lines.append(
                f"{label:<28} {name:<5} {m.f1:6.2f} {m.exact_match:6.2f} "
                f"{m.latency_ms['dynamic']:8.2f} {m.speedup['dynamic']:6.2f} "
                f"{m.speedup_same_precision['dynamic']:6.2f} {row.macs_ratio['dynamic']:6.2f} "
                f"{m.latency_ms['max_length']:8.2f} {m.speedup['max_length']:6.2f} "
                f"{row.macs_ratio['max_length']:6.2f}  {list(row.config.length_config.values) if index == 0 else ''}"
            )
    return "\n".join(lines)


