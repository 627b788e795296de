"""`dtb demo`: the bundled default QA model on a fixed sample of SQuAD dev-a, at full length and at the
configurations its shipped front offers for three budgets, in fp32 and in a second precision (default: the
fastest this machine runs natively, `--precision auto`), measured side by side.

For each configuration and precision it reports F1/EM on the same questions, the median latency of one feature
at batch 1 under two padding protocols (dynamic: the feature at its real length; max_length: padded to 384, the
paper's protocol), the speedup over fp32 at full length under each, and the ideal speedup from MACs at the real
lengths. It writes a plot of F1 against speedup (the shipped front and the measured points) and a JSON record.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Sequence

from dtb_ext.config import LengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR, DEV_FILE
from dtb_ext.help_format import HelpFormatter
from dtb_ext.macs import macs_ratio
from dtb_ext.precision import PRECISION_CHOICES
from dtb_ext.qa.model import HOW_TO_MAKE_A_MODEL

FRONT_FILE = "front.json"
DEFAULT_OUT = os.path.join("runs", "demo")
# Measured (MiniLM-L6 QA, 4 configs, 1 thread, CPU seconds): 0.19 s per question for the four F1/EM passes,
# 0.48 s per timed feature for the eight batch-1 forwards, ~3 s of loading. 500 questions and 64 timed
# features come to about 130 CPU-seconds, near 2 minutes on the 2 idle cores here and within about 5 minutes
# when the machine is shared; the F1 standard error on 500 questions is about 2 points, and the configs are
# scored on the same questions, so their differences are much steadier than that.
DEFAULT_QUESTIONS = 500
# Features (evenly spaced in length) timed per configuration and padding protocol, one batch-1 forward each.
DEFAULT_LATENCY_FEATURES = 64
# "The fastest still above a stated F1": by default this fraction of the front's full-length F1.
DEFAULT_MIN_F1_FRACTION = 0.9
PADDINGS = ("dynamic", "max_length")

MAKE_DEFAULT_MODEL = f"To make it, {HOW_TO_MAKE_A_MODEL}.\n"
MAKE_DEFAULT_FRONT = """\
Search it from the repository root (an hour or more on a 2-core CPU, see docs/search.md):
  .venv/bin/python -m dtb_ext.cli search --model dtb_ext/default_model --out runs/default-search \\
      --reevaluate-on dtb_ext/data/squad/dev-a-v1.1.json
  cp runs/default-search/front.json runs/default-search/front.csv runs/default-search/front.png dtb_ext/default_model/
"""
OWN_MODEL = "or run the demo on a model and front of your own: dtb demo --model DIR [--front FRONT.json]"


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


def missing_default_files(model_dir: str, front_path: str) -> list[str]:
    """The files the demo needs that are not there (the model's config.json, the front)."""
    needed = [os.path.join(model_dir, "config.json"), front_path]
    return [path for path in needed if not os.path.isfile(path)]


def missing_message(model_dir: str, front_path: str, missing: Sequence[str]) -> str:
    """What is missing and, for the bundled default model, how to make it."""
    if os.path.abspath(model_dir) != os.path.abspath(DEFAULT_MODEL_DIR):
        return ("missing: " + ", ".join(missing) + " (a QA model directory and the front.json that `dtb search` "
                "wrote for it are needed)")
    model_missing = os.path.join(model_dir, "config.json") in missing
    what = "the bundled default model is not there yet" if model_missing else \
        "the bundled default model has no shipped front yet"
    steps = (MAKE_DEFAULT_MODEL if model_missing else "") + (MAKE_DEFAULT_FRONT if front_path in missing else "")
    return f"{what} (missing: {', '.join(missing)}).\n{steps}{OWN_MODEL}"


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


def measure_latency(
    models: dict[str, Any], features: Any, configs: Sequence[DemoConfig], full_length: tuple[int, ...],
    progress: bool = True,
) -> dict[tuple[str, tuple[int, ...]], dict[str, float]]:
    """Median milliseconds of one batch-1 forward per feature, for every precision (`models`: precision ->
    patched model), config and padding protocol.

    Every feature is run under every (precision, config) and protocol in turn (`Interleaved`: the order rotating
    from feature to feature), so a change of machine load during the measurement hits all of them alike. One
    untimed pass of every feature through every case and protocol comes first: the steady state a serving process
    reaches (oneDNN compiles a kernel per matmul shape on first use, and token dropping makes a new shape at every
    layer). Returns {(precision, config): {padding: ms}}."""
    import torch

    from dtb_ext.models.patching import length_config
    from dtb_ext.timing import Interleaved

    device = next(next(iter(models.values())).parameters()).device
    inputs = {
        padding: [{k: v.to(device) for k, v in batch.items()} for _, batch in features.batches(1, padding)]
        for padding in PADDINGS
    }
    cases = [(precision, config.length_config) for precision in models for config in configs]

    def forward(precision: str, config: LengthConfig, padding: str) -> Callable[[int], None]:
        """The batch-1 forward of feature `index` for one case and protocol, as Interleaved times it."""
        model = models[precision]

        def run(index: int) -> None:
            with length_config(model, run_spec(config, full_length)):
                model(**inputs[padding][index])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

        return run

    for model in models.values():
        model.eval()
    timer = Interleaved({(case, padding): forward(*case, padding) for case in cases for padding in PADDINGS},
                        range(len(features)))
    with torch.inference_mode():
        timer.warm_up(progress)
        timer.run_round(progress)
    medians = timer.summary()
    return {case: {padding: medians[case, padding]["median_ms"] for padding in PADDINGS} for case in cases}


def run_demo(
    model_dir: str | None = None,
    front_path: str | None = None,
    data: str | None = None,
    questions: int | None = DEFAULT_QUESTIONS,
    sample_seed: int = 0,
    latency_features: int | None = None,
    min_f1: float | None = None,
    batch_size: int = 32,
    out_dir: str | None = DEFAULT_OUT,
    device: str = "cpu",
    progress: bool = True,
    precision: str = "auto",
) -> DemoResult:
    """Measure the model at full length and its front's picks on a fixed dev sample (see the module docstring).

    model_dir: a QA model directory loadable by `dtb eval --model` (None: dtb_ext/default_model).
    front_path: a front JSON written by `dtb search` (None: MODEL_DIR/front.json).
    data: the SQuAD file (None: dev-a, shipped in the package: data_paths.DEV_FILE); questions: fixed random sample
        of it, chosen by sample_seed (None: every question).
    latency_features: features (evenly spaced in length) timed per config and padding protocol (None: 64, or
        every feature of a smaller sample, said in one line).
    out_dir: where demo.png and demo.json go (None: nothing written).
    precision: the precision measured beside fp32 ("auto": the fastest this machine runs natively; when it
        is fp32, fp32 alone is measured).
    """
    import copy

    import torch

    import dtb_ext
    from dtb_ext.qa import evaluate_qa, load_squad, prepare_eval_features
    from dtb_ext.precision import prepare_for_precision, resolve_precision
    from dtb_ext.qa.model import load_qa_model
    from dtb_ext.search.front import load_front
    from dtb_ext.search.qa_objective import sample_questions

    model_dir = model_dir or DEFAULT_MODEL_DIR
    front_path = front_path or os.path.join(model_dir, FRONT_FILE)
    missing = missing_default_files(model_dir, front_path)
    if missing:
        raise ValueError(missing_message(model_dir, front_path, missing))
    data = data or DEV_FILE
    if not os.path.isfile(data):
        raise ValueError(f"SQuAD file not found: {data}")
    if progress:
        print(f"data: {data}", file=sys.stderr)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    second = resolve_precision(precision, device)
    started = time.perf_counter()
    front = load_front(front_path)
    model, tokenizer = load_qa_model(model_dir, device)
    dtb_ext.patch(model)
    models = {"fp32": model}
    if second != "fp32":
        models[second] = prepare_for_precision(copy.deepcopy(model), second)
    num_layers = model.config.num_hidden_layers
    if front.full_length.length_config.num_layers != num_layers:
        raise ValueError(
            f"the front {front_path} holds {front.full_length.length_config.num_layers}-layer configs, the model has "
            f"{num_layers} layers: was it searched on another model?"
        )
    configs = choose_configs(front, min_f1)
    examples = sample_questions(load_squad(data), questions, sample_seed)
    max_seq_length = int(front.identity.get("max_seq_length", 384))
    doc_stride = int(front.identity.get("doc_stride", 128))
    max_query_length = int(front.identity.get("max_query_length", 64))
    features = prepare_eval_features(examples, tokenizer, max_seq_length, doc_stride, max_query_length)
    if len(features) == 0:
        raise ValueError(f"none of the {len(examples)} sampled questions could be featurised")

    if latency_features is None:
        latency_features = min(DEFAULT_LATENCY_FEATURES, len(features))
        if latency_features < DEFAULT_LATENCY_FEATURES:
            print(f"timing all {latency_features} features of the sample (fewer than the default "
                  f"{DEFAULT_LATENCY_FEATURES})", file=sys.stderr)
    timed = sample_for_latency(features, latency_features)
    scores = {}
    for name, candidate in models.items():
        for config in configs:
            if progress:
                print(f"F1/EM at {config.label} {list(config.length_config.values)}, {name}", file=sys.stderr)
            scores[name, config.length_config] = evaluate_qa(
                candidate, features, length_config=run_spec(config.length_config, None), batch_size=batch_size,
                padding="dynamic", progress=progress,
            )
    full = front.full_length.length_config
    latency = measure_latency(models, timed, configs, full, progress)

    def measurement(name: str, config: DemoConfig) -> Measurement:
        own = latency[name, config.length_config]
        return Measurement(
            f1=float(scores[name, config.length_config]["f1"]),
            exact_match=float(scores[name, config.length_config]["exact_match"]),
            latency_ms=own,
            speedup={p: latency["fp32", full][p] / own[p] for p in PADDINGS},
            speedup_same_precision={p: latency[name, full][p] / own[p] for p in PADDINGS},
        )

    rows = tuple(
        DemoRow(
            config=config,
            macs_ratio={
                "dynamic": macs_ratio(model.config, run_spec(config.length_config, full), features.lengths),
                "max_length": macs_ratio(
                    model.config, run_spec(config.length_config, full), features.lengths, max_seq_length
                ),
            },
            measurements={name: measurement(name, config) for name in models},
        )
        for config in configs
    )
    settings = {
        "model": os.path.abspath(model_dir),
        "front": os.path.abspath(front_path),
        "data": os.path.abspath(data),
        "questions": len(examples),
        "features": len(features),
        "sample_seed": sample_seed,
        "latency_features": len(timed),
        "mean_latency_feature_length": float(timed.lengths.mean()),
        "max_seq_length": max_seq_length,
        "device": device,
        "precisions": list(models),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": dtb_ext.has_kernels(),
        "cpu_capability": dtb_ext.kernel_info().get("cpu_capability"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    plot_path = json_path = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        plot_path = os.path.join(out_dir, "demo.png")
        plot_demo(front, rows, plot_path, settings)
        json_path = os.path.join(out_dir, "demo.json")
        with open(json_path, "w") as handle:
            json.dump({"settings": settings, "rows": [row.to_json() for row in rows]}, handle, indent=2)
            handle.write("\n")
    return DemoResult(rows, settings, plot_path, json_path)


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


def plot_demo(front: Any, rows: Sequence[DemoRow], path: str, settings: dict[str, Any]) -> None:
    """F1 vs speedup: the shipped front (search-split F1 vs MACs speedup, plus its dev F1 when re-evaluated)
    and the demo's measured points (dev-sample F1 vs measured speedup under both padding protocols)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 5.0))
    axes = figure.subplots()
    axes.scatter([p.speedup for p in front.points], [p.f1 for p in front.points], s=12, c="0.75",
                 label="searched configs (search split, MACs speedup)")
    shipped = sorted(front.front, key=lambda p: p.speedup)
    axes.plot([p.speedup for p in shipped], [p.f1 for p in shipped], "o-", c="tab:blue", ms=4,
              label="shipped front (search split, MACs speedup)")
    rescored = [p for p in shipped if p.dev_f1 is not None]
    if rescored:
        axes.plot([p.speedup for p in rescored], [p.dev_f1 for p in rescored], "s--", c="tab:cyan", ms=4,
                  mfc="none", label="shipped front (dev F1, MACs speedup)")
    sample = f"{settings['questions']} dev questions"
    for padding, marker, colours, name in (("dynamic", "D", ("tab:red", "tab:purple", "tab:brown"), "dynamic padding"),
                                           ("max_length", "^", ("tab:green", "tab:olive", "tab:gray"),
                                            f"padded to {settings['max_seq_length']}")):
        for colour, precision in zip(colours, settings["precisions"]):
            measured = [row.measurements[precision] for row in rows]
            axes.scatter([m.speedup[padding] for m in measured], [m.f1 for m in measured], marker=marker, s=60,
                         c=colour, zorder=3, label=f"measured {precision}: {sample}, B=1, {name}")
    for row in rows:
        axes.annotate(row.config.label, (row.fp32.speedup["dynamic"], row.fp32.f1), textcoords="offset points",
                      xytext=(6, 4), fontsize=7)
    axes.set_xlabel("speedup vs fp32 full length")
    axes.set_ylabel("F1")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the default QA model on a dev sample: F1/EM, latency and speedup at full length and front picks",
        description="Runs a span-QA model (default: the bundled dtb_ext/default_model) on a fixed sample of SQuAD "
        "dev-a at full length and at the configs its front (front.json from `dtb search`) offers within 1%% and "
        "3%% of the full-length F1 and for a minimum F1, in fp32 and in --precision; prints F1, EM, batch-1 "
        "latency with dynamic padding and padded to 384, speedups and MACs ratios; writes demo.png and demo.json.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--model", default=None, help="QA model directory (default: dtb_ext/default_model)")
    demo.add_argument("--front", default=None, help="front JSON from `dtb search` (default: MODEL/front.json)")
    demo.add_argument("--data", default=None,
                      help="SQuAD file (default: dev-a, shipped in the package as dtb_ext/data/squad/dev-a-v1.1.json)")
    demo.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS, help="questions in the fixed sample")
    demo.add_argument("--full", action="store_true", help="score every question of the file (4,961 for dev-a); "
                      "latency still uses --latency-features features")
    demo.add_argument("--sample-seed", type=int, default=0, help="seed of the question sample")
    demo.add_argument("--latency-features", type=int, default=None,
                      help=f"features timed at batch 1 per config and padding protocol (default: "
                           f"{DEFAULT_LATENCY_FEATURES}, or every feature of a smaller sample)")
    demo.add_argument("--min-f1", type=float, default=None,
                      help="the last pick is the fastest config with search-split F1 at least this "
                           f"(default: {DEFAULT_MIN_F1_FRACTION * 100:g}%% of the full-length F1)")
    demo.add_argument("--batch-size", type=int, default=32, help="batch size of the F1/EM passes")
    demo.add_argument("--out", default=DEFAULT_OUT, help="folder for demo.png and demo.json")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                      help="the precision measured beside fp32: bf16, int8 (CPU), fp32 (fp32 alone) or auto (the "
                           "fastest this machine runs natively, printed)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    try:
        result = run_demo(
            args.model, args.front, args.data, questions=None if args.full else args.questions,
            sample_seed=args.sample_seed, latency_features=args.latency_features, min_f1=args.min_f1,
            batch_size=args.batch_size, out_dir=args.out, device=args.device, progress=not args.no_progress,
            precision=args.precision,
        )
    except ValueError as error:
        print(f"dtb demo: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"\nplot: {result.plot_path}\nresults: {result.json_path}\n({result.settings['seconds']:.0f} s in all)")
    return 0
