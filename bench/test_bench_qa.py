"""End-to-end span QA: the default QA model over a fixed sample of SQuAD dev-a, every variant on identical inputs,
interleaved feature by feature within each round (pytest-benchmark; reported, not pass/fail).

Variants: unpatched Hugging Face with SDPA in fp32 and bf16; ONNX Runtime running the unpatched model in fp32 and
dynamically quantized to int8 (`onnxruntime.quantization.quantize_dynamic`), each also on the graph of ONNX
Runtime's BERT optimizer (`ort-bert-*`; all when `onnxruntime` is importable); the patched model ("ours") in each
precision of DTB_BENCH_QA_PRECISIONS (default fp32,bf16,int8; `dtb_ext.prepare_for_precision`) at full length (no
config, as the unpatched model runs) and at the shipped front's picks within DTB_BENCH_QA_PICKS percent of the
full-length F1 (default 1,3) and its most accurate configs with a MACs speedup of at least DTB_BENCH_QA_SPEEDUPS
(default 1.4; shows what dropping buys in each precision where the F1 picks stay near full length), and for the
precisions in DTB_BENCH_QA_GENERIC (default bf16,int8) also at full length on the encoder's generic path
(`ours-P-full-generic`, no layer plans: what dtb_ext/models/layer_plan.py saves); a pick that is
full length, or the same config as an earlier pick, is not timed twice (`extra_info["picks"]` says which). Where
openvino and nncf are installed, OpenVINO in each precision of DTB_BENCH_QA_OPENVINO (default bf16,int8; empty:
none): the unpatched model (the strongest plain CPU baseline) and the exported length-adaptive graph at full length
and at the within-1 % pick (bench/openvino_variants.py; int8 calibrated on DTB_BENCH_EXPORT_CALIBRATION training
windows, default 300).

One benchmark per batch size: each round runs every feature (batch 1) or every length-grouped batch (batch 32,
dynamic padding) through every variant in turn, the variant order shuffled from item to item (bench/conftest.py
`Interleaved`), so a host whose speed drifts slows every variant alike. The benchmark's own time is a whole
round; `extra_info["variants"]` holds each variant's median ms per item, median round ms (the whole sample), its
F1/EM on the sample (computed once from that variant's own logits, so a wrong export or a lossy precision shows),
the MACs ratio at the real lengths (ideal speedup over full length) and its length config. `bench/report.py`
renders them with speedups against HF fp32, HF bf16 and ORT int8.

Model: DTB_BENCH_QA_MODEL (default dtb_ext/default_model), skipped when missing; front: MODEL/front.json (picks
skipped when it is missing). Sample: DTB_BENCH_QA_QUESTIONS questions of dev-a (default 48), seed 0; rounds:
DTB_BENCH_QA_ROUNDS (default 3). Quick check: `DTB_BENCH_QA_QUESTIONS=8 DTB_BENCH_QA_ROUNDS=1`.
Run: `.venv/bin/python -m pytest bench/test_bench_qa.py --benchmark-only`.
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from functools import lru_cache
from typing import Any, Callable

import pytest
import torch

import dtb_ext
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.demo.run import FRONT_FILE
from dtb_ext.models.layer_plan import generic_path
from qa_scoring import scores_and_macs

MODEL_DIR = os.environ.get("DTB_BENCH_QA_MODEL", DEFAULT_MODEL_DIR)
FRONT = os.path.join(MODEL_DIR, FRONT_FILE)
QUESTIONS = int(os.environ.get("DTB_BENCH_QA_QUESTIONS", "48"))
ROUNDS = int(os.environ.get("DTB_BENCH_QA_ROUNDS", "3"))
PRECISIONS = os.environ.get("DTB_BENCH_QA_PRECISIONS", "fp32,bf16,int8").split(",")
PICKS = [float(p) for p in os.environ.get("DTB_BENCH_QA_PICKS", "1,3").split(",") if p]
SPEEDUPS = [float(s) for s in os.environ.get("DTB_BENCH_QA_SPEEDUPS", "1.4").split(",") if s]
OPENVINO_PRECISIONS = tuple(p for p in os.environ.get("DTB_BENCH_QA_OPENVINO", "bf16,int8").split(",") if p)
# Precisions whose full-length model is also timed on the encoder's generic path (`ours-P-full-generic`): what the
# layer plans (dtb_ext/models/layer_plan.py) save, in the same run.
GENERIC_PRECISIONS = tuple(p for p in os.environ.get("DTB_BENCH_QA_GENERIC", "bf16,int8").split(",") if p)
CALIBRATION_WINDOWS = int(os.environ.get("DTB_BENCH_EXPORT_CALIBRATION", "300"))
MAX_SEQ_LENGTH = 384  # window length when no front says otherwise (the front records its search's windows)
ONNX_NAMES = ["input_ids", "attention_mask", "token_type_ids"]

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(MODEL_DIR, "config.json")),
    reason=f"no QA model at {MODEL_DIR} (the default model is made by `dtb train`, see dtb_ext/default_model)",
)

Logits = tuple[torch.Tensor, torch.Tensor]


@lru_cache(maxsize=1)
def _setup() -> dict[str, Any]:
    """The models of every variant, the sample's features, and the configs (None = full length) by name."""
    from transformers import AutoModelForQuestionAnswering

    from dtb_ext.precision import prepare_for_precision
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.model import load_qa_model
    from dtb_ext.qa.data import default_squad_file
    from dtb_ext.search.front import load_front
    from dtb_ext.search.pick import pick
    from dtb_ext.search.qa_objective import sample_questions

    patched, tokenizer = load_qa_model(MODEL_DIR)
    dtb_ext.patch(patched).eval()
    hf_fp32 = AutoModelForQuestionAnswering.from_pretrained(MODEL_DIR, dtype=torch.float32,
                                                            attn_implementation="sdpa").eval()
    models = {"hf-fp32-sdpa": hf_fp32, "hf-bf16-sdpa": copy.deepcopy(hf_fp32).to(torch.bfloat16)}
    ours = {precision: prepare_for_precision(copy.deepcopy(patched), precision).eval() for precision in PRECISIONS}
    configs: dict[str, Any] = {"full": None}
    picks: dict[str, str] = {}
    identity: dict[str, Any] = {}
    if os.path.isfile(FRONT):
        front = load_front(FRONT)
        identity = front.identity
        chosen = [(f"front-{percent:g}pct", pick(front, max_f1_drop_percent=percent)) for percent in PICKS]
        chosen += [(f"front-{speedup:g}x", pick(front, min_speedup=speedup)) for speedup in SPEEDUPS]
        for name, point in chosen:
            # A pick equal to full length or to an earlier pick is recorded, not timed again under a second name.
            same = next((earlier for earlier, config in configs.items() if config == point.length_config), None)
            if point.length_config == front.full_length.length_config:
                picks[name] = "full length"
            elif same is not None:
                picks[name] = f"same config as {same}"
            else:
                picks[name] = str(list(point.length_config.values))
                configs[name] = point.length_config
    examples = sample_questions(load_squad(default_squad_file("dev-a-v1.1.json")), QUESTIONS, 0)
    features = prepare_eval_features(examples, tokenizer, int(identity.get("max_seq_length", MAX_SEQ_LENGTH)),
                                     int(identity.get("doc_stride", 128)), int(identity.get("max_query_length", 64)))
    return {"models": models, "ours": ours, "configs": configs, "picks": picks, "features": features,
            "model_config": patched.config}


def _onnx_sessions(directory: str) -> dict[str, Any]:
    """ONNX Runtime sessions of the unpatched model: fp32 (TorchScript export, dynamic axes), int8
    (`quantize_dynamic` of that file, default settings), and both again on the graph of ONNX Runtime's BERT
    optimizer (`onnxruntime.transformers.optimizer.optimize_model`: fused attention, LayerNorm and GELU), what a
    user tuning ONNX Runtime for BERT would deploy."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    setup = _setup()
    fp32_path, int8_path = os.path.join(directory, "model.onnx"), os.path.join(directory, "model-int8.onnx")
    sample = next(iter(setup["features"].batches(1, "dynamic")))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            setup["models"]["hf-fp32-sdpa"], tuple(sample[n] for n in ONNX_NAMES), fp32_path, input_names=ONNX_NAMES,
            output_names=["start_logits", "end_logits"], dynamo=False,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ONNX_NAMES + ["start_logits", "end_logits"]},
        )
        quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8)
        config = setup["model_config"]
        optimized_path = os.path.join(directory, "model-bert-optimized.onnx")
        optimized_int8_path = os.path.join(directory, "model-bert-optimized-int8.onnx")
        optimize_model(fp32_path, model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size, use_gpu=False).save_model_to_file(optimized_path)
        # the fused ops of the optimizer's domain carry no inferred type: the quantizer is told they are float
        quantize_dynamic(optimized_path, optimized_int8_path, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # ORT's intra-op threads spin (busy-wait) after each run by default; interleaved with PyTorch variants, that
    # spinning steals the cores from the variant timed next (it measured up to 1.7x slower here, issue 11).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    paths = {"ort-fp32": fp32_path, "ort-int8": int8_path, "ort-bert-fp32": optimized_path,
             "ort-bert-int8": optimized_int8_path}
    return {name: onnxruntime.InferenceSession(path, options, providers=providers) for name, path in paths.items()}


@lru_cache(maxsize=1)
def _variants(tmp_dir: str) -> dict[str, tuple[Callable[[dict[str, torch.Tensor]], Logits], Any]]:
    """name -> (inputs -> (start_logits, end_logits), length config or None)."""
    setup = _setup()
    variants: dict[str, tuple[Callable[[dict[str, torch.Tensor]], Logits], Any]] = {}
    for name, model in setup["models"].items():
        variants[name] = (_hf_runner(model), None)
    if _importable("onnxruntime"):
        for name, session in _onnx_sessions(tmp_dir).items():
            variants[name] = (_onnx_runner(session), None)
    for precision, model in setup["ours"].items():
        for config_name, config in setup["configs"].items():
            variants[f"ours-{precision}-{config_name}"] = (_patched_runner(model, config), config)
        if precision in GENERIC_PRECISIONS:
            variants[f"ours-{precision}-full-generic"] = (_patched_runner(model, None, generic=True), None)
    if OPENVINO_PRECISIONS and _importable("openvino") and _importable("nncf") and os.path.isfile(FRONT):
        from openvino_variants import openvino_setup, openvino_variants

        openvino = openvino_setup(os.path.join(tmp_dir, "openvino"), MODEL_DIR, FRONT, QUESTIONS, OPENVINO_PRECISIONS,
                                  CALIBRATION_WINDOWS)
        variants.update(openvino_variants(openvino, OPENVINO_PRECISIONS, torch.get_num_threads()))
    return variants


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _hf_runner(model: torch.nn.Module) -> Callable[[dict[str, torch.Tensor]], Logits]:
    def run(inputs):
        outputs = model(**inputs)
        return outputs.start_logits, outputs.end_logits

    return run


def _onnx_runner(session: Any) -> Callable[[dict[str, torch.Tensor]], Logits]:
    def run(inputs):
        start, end = session.run(None, {name: inputs[name].numpy() for name in ONNX_NAMES})
        return torch.from_numpy(start), torch.from_numpy(end)

    return run


def _patched_runner(model: torch.nn.Module, config: Any,
                    generic: bool = False) -> Callable[[dict[str, torch.Tensor]], Logits]:
    """`model` under `config`; with `generic`, on the encoder's generic path (no layer plans)."""
    def run(inputs):
        with dtb_ext.length_config(model, config), generic_path() if generic else contextlib.nullcontext():
            outputs = model(**inputs)
        return outputs.start_logits, outputs.end_logits

    return run


@pytest.mark.parametrize("batch", [1, 32])
def test_qa_interleaved(benchmark, time_interleaved, tmp_path_factory, batch: int) -> None:
    setup = _setup()
    features = setup["features"]
    batches = list(features.batches(batch, "dynamic"))
    variants = _variants(str(tmp_path_factory.getbasetemp()))
    extra = scores_and_macs(variants, batches, features, setup["model_config"])
    benchmark.group = f"qa {os.path.basename(os.path.normpath(MODEL_DIR))} dev-a {QUESTIONS}q B={batch} dynamic"
    benchmark.extra_info.update(
        level="qa", interleaved=True, questions=QUESTIONS, features=len(features), batch=batch, padding="dynamic",
        items_are="features" if batch == 1 else f"length-grouped batches of {batch} features",
        mean_length=float(features.lengths.mean()), device="cpu", threads=torch.get_num_threads(),
        kernels=dtb_ext.has_kernels(), picks=setup["picks"],
        baselines=["hf-bf16-sdpa", "ort-int8"] + [f"ov-{precision}-unpatched" for precision in OPENVINO_PRECISIONS],
    )

    def call(run):
        def timed(inputs):
            with torch.inference_mode():
                run(inputs)

        return timed

    time_interleaved({name: call(run) for name, (run, _) in variants.items()},
                     [inputs for _, inputs in batches], ROUNDS, extra)
