"""`run_demo`: load the model and its front, choose the configurations, score and time them, write the plot and
the JSON record (the package docstring says what is measured)."""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from typing import Sequence

from dtb_ext.data_paths import DEFAULT_MODEL_DIR, DEV_FILE
from dtb_ext.demo.configs import choose_configs, run_spec, sample_for_latency
from dtb_ext.demo.measure import measure_latency, measure_scores
from dtb_ext.demo.plot import plot_demo
from dtb_ext.demo.report import DemoResult, build_rows
from dtb_ext.demo.runners import build_runners, check_runtimes
from dtb_ext.graph_export.calibration import DEFAULT_CALIBRATION_WINDOWS
from dtb_ext.graph_export.runtimes import RUNTIMES
from dtb_ext.macs import macs_ratio
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
# Where the model runs unless --runtime says otherwise: PyTorch alone. The exported graphs' rows are asked for
# (--runtime torch,openvino): exporting to OpenVINO takes tens of seconds on 2 cores, longer than the whole demo on
# a small sample, and needs the openvino extra.
DEFAULT_RUNTIMES = ("torch",)

MAKE_DEFAULT_MODEL = f"To make it, {HOW_TO_MAKE_A_MODEL}.\n"
MAKE_DEFAULT_FRONT = """\
Search it from the repository root (an hour or more on a 2-core CPU, see docs/search.md):
  .venv/bin/python -m dtb_ext.cli search --model dtb_ext/default_model --out runs/default-search \\
      --reevaluate-on dtb_ext/data/squad/dev-a-v1.1.json
  cp runs/default-search/front.json runs/default-search/front.csv runs/default-search/front.png dtb_ext/default_model/
"""
OWN_MODEL = "or run the demo on a model and front of your own: dtb demo --model DIR [--front FRONT.json]"


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
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    calibration_data: str | None = None,
    calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS,
) -> DemoResult:
    """Measure the model at full length and its front's picks on a fixed dev sample (see the package docstring).

    model_dir: a QA model directory loadable by `dtb eval --model` (None: dtb_ext/default_model).
    front_path: a front JSON written by `dtb search` (None: MODEL_DIR/front.json).
    data: the SQuAD file (None: dev-a, shipped in the package: data_paths.DEV_FILE); questions: fixed random sample
        of it, chosen by sample_seed (None: every question).
    latency_features: features (evenly spaced in length) timed per config and padding protocol (None: 64, or
        every feature of a smaller sample, said in one line).
    out_dir: where demo.png and demo.json go (None: nothing written).
    precision: the precision measured beside fp32 ("auto": the fastest this machine runs natively; when it
        is fp32, fp32 alone is measured).
    runtimes: where the model runs, of RUNTIMES: torch (the patched model), openvino, onnxruntime (its exported
        graph, one per precision for every config; CPU only, the openvino extra). Each runs fp32 and `precision`
        where it offers it; speedups are against the first one's fp32 at full length.
    calibration_data, calibration_windows: the SQuAD training file and windows OpenVINO's int8 graph is calibrated
        on (None: the shared training subset beside a checkout); used only for openvino at int8.
    """
    import functools
    import tempfile

    import torch

    import dtb_ext
    from dtb_ext.graph_export.calibration import training_calibration_inputs
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.precision import resolve_precision
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
    precisions = ["fp32"] if second == "fp32" else ["fp32", second]
    check_runtimes(runtimes, precisions, device)
    started = time.perf_counter()
    front = load_front(front_path)
    model, tokenizer = load_qa_model(model_dir, device)
    dtb_ext.patch(model)
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
    calibration = functools.partial(
        training_calibration_inputs, tokenizer, num_layers, calibration_windows, calibration_data,
        max_seq_length=max_seq_length, doc_stride=doc_stride, max_query_length=max_query_length)
    full = front.full_length.length_config
    with tempfile.TemporaryDirectory(prefix="dtb-demo-") as exports:
        runners = build_runners(model, runtimes, precisions, exports, calibration, progress)
        scores = measure_scores(runners, features, configs, batch_size, progress)
        latency = measure_latency(runners, timed, configs, full, progress)
    macs = {
        config.length_config: {
            "dynamic": macs_ratio(model.config, run_spec(config.length_config, full), features.lengths),
            "max_length": macs_ratio(model.config, run_spec(config.length_config, full), features.lengths,
                                     max_seq_length),
        }
        for config in configs
    }
    rows = build_rows(configs, runners, scores, latency, full, macs)
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
        "precisions": precisions,
        "runtimes": sorted({runner.runtime for runner in runners}, key=RUNTIMES.index),
        "variants": [runner.name for runner in runners],
        "reference": runners[0].name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runtime_versions": {runtime: importlib.metadata.version(runtime)
                             for runtime in RUNTIMES if runtime != "torch" and runtime in runtimes},
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
