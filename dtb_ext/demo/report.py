"""The demo's results: one measurement per configuration, runtime and precision, the rows they form, their JSON
form and the printed table."""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from dtb_ext.config import LengthConfig
from dtb_ext.demo.configs import PADDINGS, DemoConfig
from dtb_ext.demo.runners import QARunner


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One configuration in one runtime and precision. Latencies are medians over the timed features, milliseconds
    per feature at batch 1, per padding protocol; speedup is the reference's (the first runner's: torch fp32 when
    torch runs) full-length median over this one's, and speedup_same_precision full length's in this runtime and
    precision over this one's."""

    runtime: str
    precision: str
    f1: float
    exact_match: float
    latency_ms: dict[str, float]
    speedup: dict[str, float]
    speedup_same_precision: dict[str, float]

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DemoRow:
    """Measured results of one configuration: `measurements` by runner name ("torch fp32", "openvino bf16", ...;
    the reference first); macs_ratio is the ideal speedup (full-length MACs / this config's MACs, summed over every
    evaluated feature) per padding protocol. The JSON form carries the reference's measurement at its top level and
    every runner's under "variants"."""

    config: DemoConfig
    macs_ratio: dict[str, float]
    measurements: dict[str, Measurement]

    @property
    def reference(self) -> Measurement:
        return next(iter(self.measurements.values()))

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.config.label,
            "length_config": self.config.length_config.to_json(),
            "front_f1": self.config.front_f1,
            "front_speedup": self.config.front_speedup,
            "f1": self.reference.f1,
            "exact_match": self.reference.exact_match,
            "latency_ms": self.reference.latency_ms,
            "speedup": self.reference.speedup,
            "macs_ratio": self.macs_ratio,
            "variants": {name: m.to_json() for name, m in self.measurements.items()},
        }


def build_rows(configs: Sequence[DemoConfig], runners: Sequence[QARunner],
               scores: dict[tuple[str, LengthConfig], dict[str, Any]],
               latency: dict[tuple[str, LengthConfig], dict[str, float]], full_length: LengthConfig,
               macs_ratios: dict[LengthConfig, dict[str, float]]) -> tuple[DemoRow, ...]:
    """One row per config, one measurement per runner (the first is the reference of every speedup), from the
    demo's loops (measure.py: keyed by runner name and config) and each config's MACs ratio per padding."""
    reference = latency[runners[0].name, full_length]

    def measurement(runner: QARunner, config: LengthConfig) -> Measurement:
        own = latency[runner.name, config]
        return Measurement(
            runtime=runner.runtime,
            precision=runner.precision,
            f1=float(scores[runner.name, config]["f1"]),
            exact_match=float(scores[runner.name, config]["exact_match"]),
            latency_ms=own,
            speedup={p: reference[p] / own[p] for p in PADDINGS},
            speedup_same_precision={p: latency[runner.name, full_length][p] / own[p] for p in PADDINGS},
        )

    return tuple(DemoRow(config, macs_ratios[config.length_config],
                         {runner.name: measurement(runner, config.length_config) for runner in runners})
                 for config in configs)


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
    ]
    if s["runtime_versions"]:
        lines.append(
            f"{' and '.join(f'{runtime} {version}' for runtime, version in s['runtime_versions'].items())}: the "
            "model's exported "
            "graph, compiled once per precision for every config (the keep rule is a graph input), "
            f"{s['threads']} threads (OpenVINO: LATENCY hint); their F1 is on the same questions."
        )
    lines += [
        f"Latency: median ms per feature at batch 1 over {s['latency_features']} features evenly spaced in length "
        f"(mean {s['mean_latency_feature_length']:.0f} tokens); dynamic = each at its real length, "
        f"pad{s['max_seq_length']} = padded to {s['max_seq_length']} (the paper's protocol). "
        f"Speedup (x): {s['reference']} full length's latency / the config's; `own x`: full length's in the same "
        "runtime and precision / the config's (dynamic padding). Full length runs without a config, like the "
        "unpatched model (padded: every layer at the padded width). MACs x: the ideal speedup from the MACs count "
        "under the same protocol.",
        "",
    ]
    header = (f"{'config':<28} {'runtime':<11} {'prec':<5} {'F1':>6} {'EM':>6} {'dyn ms':>8} {'dyn x':>6} "
              f"{'own x':>6} {'MACs x':>6} {'pad ms':>8} {'pad x':>6} {'MACs x':>6}  length config")
    lines.append(header)
    lines.append("-" * len(header))
    for row in result.rows:
        for index, m in enumerate(row.measurements.values()):
            label = row.config.label if index == 0 else ""
            lines.append(
                f"{label:<28} {m.runtime:<11} {m.precision:<5} {m.f1:6.2f} {m.exact_match:6.2f} "
                f"{m.latency_ms['dynamic']:8.2f} {m.speedup['dynamic']:6.2f} "
                f"{m.speedup_same_precision['dynamic']:6.2f} {row.macs_ratio['dynamic']:6.2f} "
                f"{m.latency_ms['max_length']:8.2f} {m.speedup['max_length']:6.2f} "
                f"{row.macs_ratio['max_length']:6.2f}  {list(row.config.length_config.values) if index == 0 else ''}"
            )
    return "\n".join(lines)
