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
order shuffled from item to item (bench/conftest.py `Interleaved`). `extra_info["variants"]` holds each variant's
median ms per item, median round ms, F1/EM on the sample from its own logits, and the MACs ratio; `bench/report.py`
renders them with speedups against the three unpatched baselines.

Model: DTB_BENCH_QA_MODEL (default dtb_ext/default_model, with its front.json), skipped when missing or without
openvino/nncf. Sample: DTB_BENCH_QA_QUESTIONS questions of dev-a (default 48), seed 0; rounds: DTB_BENCH_QA_ROUNDS
(default 3). Quick check: `DTB_BENCH_QA_QUESTIONS=8 DTB_BENCH_QA_ROUNDS=1 DTB_BENCH_EXPORT_CALIBRATION=16`.
Run: `.venv/bin/python -m pytest bench/test_bench_export.py --benchmark-only`.
"""
from __future__ import annotations

import os
from typing import Any

import pytest

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from openvino_variants import openvino_setup, openvino_variants
from qa_scoring import scores_and_macs

MODEL_DIR = os.environ.get("DTB_BENCH_QA_MODEL", DEFAULT_MODEL_DIR)
FRONT = os.path.join(MODEL_DIR, "front.json")
QUESTIONS = int(os.environ.get("DTB_BENCH_QA_QUESTIONS", "48"))
ROUNDS = int(os.environ.get("DTB_BENCH_QA_ROUNDS", "3"))
PRECISIONS = os.environ.get("DTB_BENCH_EXPORT_PRECISIONS", "fp32,bf16,int8").split(",")
CALIBRATION_WINDOWS = int(os.environ.get("DTB_BENCH_EXPORT_CALIBRATION", "300"))
THREADS = int(os.environ.get("DTB_BENCH_EXPORT_THREADS", "2"))

pytestmark = [
    pytest.mark.skipif(not os.path.isfile(FRONT), reason=f"no QA model with a front at {MODEL_DIR}"),
]


def _setup(directory: str) -> dict[str, Any]:
    return openvino_setup(directory, MODEL_DIR, FRONT, QUESTIONS, tuple(PRECISIONS), CALIBRATION_WINDOWS)


@pytest.mark.parametrize("batch", [1, 32])
def test_openvino_interleaved(benchmark, time_interleaved, tmp_path_factory, batch: int) -> None:
    pytest.importorskip("openvino", reason="openvino is not installed")
    pytest.importorskip("nncf", reason="nncf is not installed (int8 variants)")
    directory = str(tmp_path_factory.getbasetemp() / "openvino-export")
    setup = _setup(directory)
    features = setup["features"]
    batches = list(features.batches(batch, "dynamic"))
    variants = openvino_variants(setup, tuple(PRECISIONS), THREADS)
    extra = scores_and_macs(variants, batches, features, setup["model_config"])
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
