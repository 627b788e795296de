"""OpenVINO: the exported length-adaptive graph (one graph, every budget: dtb_ext.graph_export) against OpenVINO's
own unpatched model, in fp32, bf16 and int8, on identical inputs interleaved item by item (pytest-benchmark;
reported, not pass/fail).

Variants, per precision of DTB_BENCH_EXPORT_PRECISIONS (default fp32,bf16,int8):
- `ov-<p>-unpatched`: the Hugging Face model converted by `openvino.convert_model` (the strongest plain CPU
  baseline, issue 27);
- `ov-<p>-graph-full`: the exported graph of the patched model with every ratio 1 (full length: the graph's fixed
  cost);
- `ov-<p>-graph-pick1pct`: the same compiled graph at the shipped front's within-1 % pick
  (`dtb_ext.pick(front, max_f1_drop_percent=1.0)`).
fp32 and bf16 are the same IR compiled with INFERENCE_PRECISION_HINT f32 / bf16; int8 is NNCF post-training
quantization of each model, both calibrated on the same DTB_BENCH_EXPORT_CALIBRATION (default 300) SQuAD training
windows, compiled with OpenVINO's default inference precision for the rest (bf16 where the CPU runs it).

Every compiled model: INFERENCE_NUM_THREADS=2 (DTB_BENCH_EXPORT_THREADS), PERFORMANCE_HINT=LATENCY (one stream).
One benchmark per batch size: batch 1 (each feature) and 32 (length-grouped batches, dynamic padding), the variant
order rotating from item to item (bench/conftest.py `Interleaved`). `extra_info["variants"]` holds each variant's
median ms per item, median round ms, F1/EM on the sample from its own logits, and the MACs ratio; `bench/report.py`
renders them with speedups against the three unpatched baselines.

Model: DTB_BENCH_QA_MODEL (default dtb_ext/default_model, with its front.json), skipped when missing or without
openvino/nncf. Sample: DTB_BENCH_QA_QUESTIONS questions of dev-a (default 48), seed 0; rounds: DTB_BENCH_QA_ROUNDS
(default 3). Quick check: `DTB_BENCH_QA_QUESTIONS=8 DTB_BENCH_QA_ROUNDS=1 DTB_BENCH_EXPORT_CALIBRATION=16`.
Run: `.venv/bin/python -m pytest bench/test_bench_export.py --benchmark-only`.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import pytest
import torch

from dtb_ext.data_paths import DEFAULT_MODEL_DIR

MODEL_DIR = os.environ.get("DTB_BENCH_QA_MODEL", DEFAULT_MODEL_DIR)
FRONT = os.path.join(MODEL_DIR, "front.json")
QUESTIONS = int(os.environ.get("DTB_BENCH_QA_QUESTIONS", "48"))
ROUNDS = int(os.environ.get("DTB_BENCH_QA_ROUNDS", "3"))
PRECISIONS = os.environ.get("DTB_BENCH_EXPORT_PRECISIONS", "fp32,bf16,int8").split(",")
CALIBRATION_WINDOWS = int(os.environ.get("DTB_BENCH_EXPORT_CALIBRATION", "300"))
THREADS = int(os.environ.get("DTB_BENCH_EXPORT_THREADS", "2"))
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# OpenVINO's INFERENCE_PRECISION_HINT per precision (int8: OpenVINO's default for the float part).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}

pytestmark = [
    pytest.mark.skipif(not os.path.isfile(FRONT), reason=f"no QA model with a front at {MODEL_DIR}"),
]

Logits = tuple[torch.Tensor, torch.Tensor]


@lru_cache(maxsize=1)
def _setup(directory: str) -> dict[str, Any]:
    """The exported graphs and unpatched OpenVINO models of every precision (written under `directory`), the
    sample's features, the pick, and the model config."""
    import openvino as ov

    import dtb_ext
    from dtb_ext.graph_export.calibration import training_calibration_inputs
    from dtb_ext.graph_export.convert import quantize_int8
    from dtb_ext.models.patching import patch
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.data import default_squad_file
    from dtb_ext.qa.model import load_qa_model
    from dtb_ext.search.qa_objective import sample_questions

    model, tokenizer = load_qa_model(MODEL_DIR)
    unpatched, _ = load_qa_model(MODEL_DIR)
    patch(model).eval()
    pick = dtb_ext.pick(dtb_ext.load_front(FRONT), max_f1_drop_percent=1.0)
    calibration = training_calibration_inputs(tokenizer, model.config.num_hidden_layers, CALIBRATION_WINDOWS)
    examples = sample_questions(load_squad(default_squad_file("dev-a-v1.1.json")), QUESTIONS, 0)
    features = prepare_eval_features(examples, tokenizer)
    sample = next(iter(features.batches(1)))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = ov.convert_model(unpatched.eval(), example_input={name: sample[name] for name in TEXT_INPUTS})
    paths = {}
    for precision in sorted(set(PRECISIONS)):
        graph_path = os.path.join(directory, f"graph-{precision}")
        dtb_ext.export(model, graph_path, "openvino", "int8" if precision == "int8" else "fp32",
                       calibration_inputs=calibration if precision == "int8" else None)
        unpatched_model = baseline
        if precision == "int8":
            text_only = [{name: batch[name] for name in TEXT_INPUTS} for batch in calibration]
            unpatched_model = quantize_int8(baseline.clone(), text_only)
        unpatched_path = os.path.join(directory, f"unpatched-{precision}.xml")
        ov.save_model(unpatched_model, unpatched_path, compress_to_fp16=False)
        paths[precision] = (graph_path, unpatched_path)
    return {"paths": paths, "pick": pick, "features": features, "model_config": model.config}


def _variants(directory: str) -> dict[str, tuple[Callable[[dict[str, torch.Tensor]], Logits], Any]]:
    """name -> (inputs -> logits, length config or None)."""
    import openvino as ov

    from dtb_ext.graph_export import ExportedQA

    setup = _setup(directory)
    variants = {}
    core = ov.Core()
    for precision in PRECISIONS:
        graph_path, unpatched_path = setup["paths"][precision]
        config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
        if HINTS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        variants[f"ov-{precision}-unpatched"] = (_unpatched_runner(core.compile_model(unpatched_path, "CPU", config)),
                                                 None)
        graph = ExportedQA(graph_path, threads=THREADS, latency=True, inference_precision=HINTS[precision])
        full = {"ratios": [1.0] * graph.num_layers}
        variants[f"ov-{precision}-graph-full"] = (_graph_runner(graph, full), None)
        variants[f"ov-{precision}-graph-pick1pct"] = (_graph_runner(graph, setup["pick"].length_config),
                                                      setup["pick"].length_config)
    return variants


def _unpatched_runner(compiled: Any) -> Callable[[dict[str, torch.Tensor]], Logits]:
    request = compiled.create_infer_request()

    def run(inputs):
        outputs = request.infer({name: inputs[name].numpy() for name in TEXT_INPUTS})
        start, end = (np.asarray(outputs[port]) for port in compiled.outputs)
        return torch.from_numpy(start), torch.from_numpy(end)

    return run


def _graph_runner(graph: Any, config: Any) -> Callable[[dict[str, torch.Tensor]], Logits]:
    def run(inputs):
        return graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], config)

    return run


def _scores_and_macs(variants, batches, setup) -> dict[str, dict[str, Any]]:
    """Per variant: F1/EM on the sample from its own logits, the MACs ratio, the length config."""
    import json

    from dtb_ext.macs import count_macs
    from dtb_ext.qa.metric import squad_metrics
    from dtb_ext.qa.postprocess import SpanCollector

    features, model_config = setup["features"], setup["model_config"]
    lengths = Counter(int(n) for n in features.lengths)
    full = sum(c * count_macs(model_config, None, n).total for n, c in lengths.items())
    extra = {}
    for name, (run, config) in variants.items():
        collector = SpanCollector(features)
        for indices, inputs in batches:
            start, end = run(inputs)
            collector.add(indices, start.float(), end.float())
        scores = squad_metrics(features.examples, collector.predictions())
        reduced = sum(c * count_macs(model_config, config, n).total for n, c in lengths.items())
        extra[name] = {"f1": round(scores["f1"], 2), "exact_match": round(scores["exact_match"], 2),
                       "macs_ratio": round(full / reduced, 3),
                       "length_config": None if config is None else json.dumps(config.to_json())}
    return extra


@pytest.mark.parametrize("batch", [1, 32])
def test_openvino_interleaved(benchmark, time_interleaved, tmp_path_factory, batch: int) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    pytest.importorskip("nncf", reason="nncf is not installed (int8 variants)")
    directory = str(tmp_path_factory.getbasetemp() / "openvino-export")
    setup = _setup(directory)
    features = setup["features"]
    batches = list(features.batches(batch, "dynamic"))
    variants = _variants(directory)
    extra = _scores_and_macs(variants, batches, setup)
    benchmark.group = f"openvino {os.path.basename(os.path.normpath(MODEL_DIR))} dev-a {QUESTIONS}q B={batch} dynamic"
    benchmark.extra_info.update(
        level="qa", interleaved=True, questions=QUESTIONS, features=len(features), batch=batch, padding="dynamic",
        items_are="features" if batch == 1 else f"length-grouped batches of {batch} features",
        mean_length=float(features.lengths.mean()), device="cpu", threads=THREADS, performance_hint="LATENCY",
        calibration_windows=CALIBRATION_WINDOWS, pick=str(list(setup["pick"].length_config.values)),
        baselines=[f"ov-{precision}-unpatched" for precision in PRECISIONS],
    )
    time_interleaved({name: run for name, (run, _) in variants.items()}, [inputs for _, inputs in batches], ROUNDS,
                     extra)
