"""End-to-end span QA: the default QA model over a fixed sample of SQuAD dev-a, on identical inputs, as
unpatched Hugging Face (eager, sdpa), ONNX Runtime running the unpatched model (when `onnxruntime` is
importable), and the patched model at full length and at two configs of its shipped front, picked within 1% and
3% of the full-length F1 (pytest-benchmark; reported, not pass/fail).

One timed round runs every feature of the sample once at batch 1 with dynamic padding (each feature at its real
length), which is the per-question latency protocol of `dtb demo`. `extra_info` carries each variant's F1/EM on
the sample (computed once from that variant's own logits, so a wrong export shows), the MACs ratio at the real
lengths (ideal speedup over full length) and the length config.

Model: DTB_BENCH_QA_MODEL (default dtb_ext/default_model), skipped when missing; front: DTB_BENCH_QA_FRONT
(default MODEL/front.json), the two front cases are skipped when it is missing. Sample: DTB_BENCH_QA_QUESTIONS questions (default 48) of dev-a, seed 0.
Run: `.venv/bin/python -m pytest bench/test_bench_qa.py --benchmark-only`.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from functools import lru_cache
from typing import Any, Callable

import pytest
import torch

import dtb_ext
from dtb_ext.demo import DEFAULT_MODEL_DIR, FRONT_FILE

MODEL_DIR = os.environ.get("DTB_BENCH_QA_MODEL", DEFAULT_MODEL_DIR)
FRONT = os.environ.get("DTB_BENCH_QA_FRONT", os.path.join(MODEL_DIR, FRONT_FILE))
QUESTIONS = int(os.environ.get("DTB_BENCH_QA_QUESTIONS", "48"))
ROUNDS = 3
MAX_SEQ_LENGTH = 384  # window length when no front says otherwise (the front records its search's windows)
VARIANTS = ["hf-eager", "hf-sdpa", "onnxruntime", "patched-full", "front-1pct", "front-3pct"]

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MODEL_DIR, "config.json")),
    reason=f"no QA model at {MODEL_DIR} (the default model is made by `dtb train`, see dtb_ext/default_model)",
)


@lru_cache(maxsize=1)
def _setup() -> dict[str, Any]:
    """Models (HF eager, HF sdpa, patched), the sample's features and their batch-1 inputs, the front configs."""
    from transformers import AutoModelForQuestionAnswering

    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.cli import load_qa_model
    from dtb_ext.qa.data import default_squad_file
    from dtb_ext.search.front import load_front
    from dtb_ext.search.pick import pick
    from dtb_ext.search.qa_objective import sample_questions

    patched, tokenizer = load_qa_model(MODEL_DIR)
    dtb_ext.patch(patched).eval()
    models = {"patched": patched}
    for implementation in ("eager", "sdpa"):
        models[implementation] = AutoModelForQuestionAnswering.from_pretrained(
            MODEL_DIR, dtype=torch.float32, attn_implementation=implementation
        ).eval()
    configs = {"patched-full": [MAX_SEQ_LENGTH] * patched.config.num_hidden_layers}
    identity = {}
    if os.path.isfile(FRONT):
        front = load_front(FRONT)
        configs = {
            "patched-full": list(front.full_length.length_config),
            "front-1pct": list(pick(front, max_f1_drop_percent=1.0).length_config),
            "front-3pct": list(pick(front, max_f1_drop_percent=3.0).length_config),
        }
        identity = front.identity
    examples = sample_questions(load_squad(default_squad_file("dev-a-v1.1.json")), QUESTIONS, 0)
    features = prepare_eval_features(examples, tokenizer, int(identity.get("max_seq_length", MAX_SEQ_LENGTH)),
                                     int(identity.get("doc_stride", 128)), int(identity.get("max_query_length", 64)))
    batches = list(features.batches(1, "dynamic"))
    return {"models": models, "configs": configs, "features": features, "batches": batches}


@lru_cache(maxsize=1)
def _onnx_session(path: str) -> Any:
    """An ONNX Runtime session of the unpatched eager model, exported once (TorchScript exporter, dynamic axes)."""
    import onnxruntime

    setup = _setup()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = setup["batches"][0][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            setup["models"]["eager"], tuple(sample[n] for n in names), path, input_names=names,
            output_names=["start_logits", "end_logits"], dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["start_logits", "end_logits"]},
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _runner(variant: str, tmp_dir: str) -> Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]:
    """inputs -> (start_logits, end_logits) for one variant."""
    setup = _setup()
    if variant == "onnxruntime":
        pytest.importorskip("onnxruntime")
        session = _onnx_session(os.path.join(tmp_dir, "model.onnx"))

        def run_onnx(inputs):
            start, end = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
            return torch.from_numpy(start), torch.from_numpy(end)

        return run_onnx
    if variant.startswith("hf-"):
        model = setup["models"][variant.removeprefix("hf-")]

        def run_hf(inputs):
            outputs = model(**inputs)
            return outputs.start_logits, outputs.end_logits

        return run_hf
    model, config = setup["models"]["patched"], setup["configs"][variant]

    def run_patched(inputs):
        with dtb_ext.length_config(model, config):
            outputs = model(**inputs)
        return outputs.start_logits, outputs.end_logits

    return run_patched


@pytest.mark.parametrize("variant", VARIANTS)
def test_qa_sample(benchmark, tmp_path_factory, variant: str) -> None:
    from dtb_ext.macs import count_macs
    from dtb_ext.qa.metric import squad_metrics
    from dtb_ext.qa.postprocess import SpanCollector

    setup = _setup()
    if variant.startswith("front-") and variant not in setup["configs"]:
        pytest.skip(f"no front at {FRONT} (`dtb search` writes it)")
    features, batches = setup["features"], setup["batches"]
    run = _runner(variant, str(tmp_path_factory.getbasetemp()))
    config = setup["configs"].get(variant)
    model_config = setup["models"]["patched"].config
    lengths = Counter(int(n) for n in features.lengths)
    full = sum(c * count_macs(model_config, None, n).total for n, c in lengths.items())
    reduced = sum(c * count_macs(model_config, config, n).total for n, c in lengths.items())

    collector = SpanCollector(features)
    with torch.inference_mode():
        for indices, inputs in batches:
            collector.add(indices, *run(inputs))
    scores = squad_metrics(features.examples, collector.predictions())

    def evaluate_sample():
        with torch.inference_mode():
            for _, inputs in batches:
                run(inputs)

    benchmark.group = f"qa {os.path.basename(os.path.normpath(MODEL_DIR))} dev-a {QUESTIONS}q B=1 dynamic"
    benchmark.extra_info.update(
        level="qa", variant=variant, questions=QUESTIONS, features=len(features), batch=1, padding="dynamic",
        mean_length=float(features.lengths.mean()), device="cpu", dtype="float32",
        threads=torch.get_num_threads(), kernels=dtb_ext.has_kernels(),
        length_config=None if config is None else str(config), macs_ratio=round(full / reduced, 3),
        f1=round(scores["f1"], 2), exact_match=round(scores["exact_match"], 2),
    )
    benchmark.pedantic(evaluate_sample, rounds=ROUNDS, iterations=1, warmup_rounds=1)
