"""The INT8 recipe, step by step: F1 of each quantization step on the same dev questions, against fp32 and bf16.

    .venv/bin/python -m dtb_ext.experiments.int8_study [--model DIR] [--questions 1000] [--out runs/int8-study.json]

Steps (each on the same fixed sample of dev-a, seed 0, full length, batch 64, dynamic padding):
1. torch dynamic quantization as shipped (`quantize_dynamic`, one weight scale per tensor);
2. the same with per-channel weight scales;
3. `Int8Linear`: per-channel weights and per-token activations (torch._int_mm);
4. 3 with the most sensitive Linear layers kept in fp32: sensitivity = the KL divergence of the span logits
   when that layer alone is quantized, measured on training-file questions (never on dev);
5. 3 with SmoothQuant factors, calibrated on training-file questions, for each alpha given;
6. step 3, the recipe `prepare_for_precision(model, "int8")` ships, at the front's picks (within 1 % and 3 %),
   against fp32 at the same pick (INT8 composes with token dropping); a pick that is full length is step 3.

Quantization-aware training (QuaLA-MiniLM's recipe) is `dtb train --precision int8` (dtb_ext/precision/qat.py); the
model it exports goes through the same steps with `--model`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.models.patching import patch
from dtb_ext.precision import prepare_for_precision
from dtb_ext.precision.int8 import encoder_linears, input_channel_ranges, quantize_int8, smoothing_factors
from dtb_ext.qa.data import default_squad_file, load_squad
from dtb_ext.qa.evaluate import evaluate_qa
from dtb_ext.qa.features import prepare_eval_features
from dtb_ext.qa.model import load_qa_model
from dtb_ext.search.front import load_front
from dtb_ext.search.pick import pick
from dtb_ext.search.qa_objective import sample_questions


def span_logits(model: nn.Module, features: Any, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per feature f: (start, end) float32 logits over its real tokens, each [length_f]."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(features)
    model.eval()
    with torch.inference_mode():
        for indices, inputs in features.batches(batch_size, "dynamic"):
            outputs = model(**inputs)
            lengths = inputs["attention_mask"].sum(dim=1).tolist()
            for row, (index, length) in enumerate(zip(indices, lengths)):
                out[index] = (outputs.start_logits[row, :length].float(), outputs.end_logits[row, :length].float())
    return out


def logit_divergence(reference: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     candidate: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over features of KL(reference || candidate) of the start and of the end distributions, summed."""
    total = 0.0
    for pair_ref, pair_cand in zip(reference, candidate):
        for ref, cand in zip(pair_ref, pair_cand):
            total += float(torch.sum(ref.softmax(0) * (ref.log_softmax(0) - cand.log_softmax(0))))
    return total / len(reference)


def linear_sensitivity(model: nn.Module, features: Any, batch_size: int = 64) -> list[tuple[str, float]]:
    """(encoder Linear name, span-logit KL when only it is int8) for every encoder Linear, most sensitive first."""
    reference = span_logits(model, features, batch_size)
    names = [name for name, _ in encoder_linears(model)]
    scores = []
    for name in names:
        alone = quantize_int8(model, keep_float=[other for other in names if other != name])
        scores.append((name, logit_divergence(reference, span_logits(alone, features, batch_size))))
    return sorted(scores, key=lambda item: -item[1])


def torch_dynamic(model: nn.Module, per_channel: bool) -> nn.Module:
    """torch's own dynamic int8 quantization of every nn.Linear (the baseline of the issue), per tensor or per
    output channel."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notices
        return quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8, inplace=False)


def _features(path: str, questions: int, seed: int, tokenizer: Any, identity: dict[str, Any]) -> Any:
    examples = sample_questions(load_squad(path), questions, seed)
    return prepare_eval_features(examples, tokenizer, int(identity.get("max_seq_length", 384)),
                                 int(identity.get("doc_stride", 128)), int(identity.get("max_query_length", 64)))


def run_study(model_dir: str, dev_path: str, calibration_path: str, questions: int = 1000, seed: int = 0,
              sensitivity_questions: int = 64, calibration_questions: int = 128,
              keep_counts: Sequence[int] = (1, 2, 4), alphas: Sequence[float] = (0.5, 0.8),
              picks: Sequence[float] = (1.0, 3.0), batch_size: int = 64,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step of the module docstring; returns {"settings", "sensitivity", "steps": [{step, f1, ...}]}."""
    front_path = os.path.join(model_dir, "front.json")
    front = load_front(front_path) if os.path.isfile(front_path) else None
    identity = front.identity if front is not None else {}
    model, tokenizer = load_qa_model(model_dir)
    model.eval()
    dev = _features(dev_path, questions, seed, tokenizer, identity)
    sensitivity_features = _features(calibration_path, sensitivity_questions, seed, tokenizer, identity)
    calibration = _features(calibration_path, calibration_questions, seed, tokenizer, identity)
    steps: list[dict[str, Any]] = []

    def score(step: str, candidate: nn.Module, length_config: Any = None, reference: str = "fp32") -> None:
        started = time.perf_counter()
        result = evaluate_qa(candidate, dev, length_config=length_config, batch_size=batch_size, progress=False)
        base = next((s["f1"] for s in steps if s["step"] == reference), result["f1"])
        row = {"step": step, "f1": round(result["f1"], 2), "exact_match": round(result["exact_match"], 2),
               "f1_drop": round(base - result["f1"], 2),
               "relative_drop_percent": round(100 * (base - result["f1"]) / base, 2),
               "vs": reference, "eval_seconds": round(time.perf_counter() - started, 1)}
        steps.append(row)
        log(json.dumps(row))

    score("fp32", model)
    score("bf16", _bf16_copy(model))
    score("torch dynamic, per-tensor weights", torch_dynamic(model, per_channel=False))
    score("torch dynamic, per-channel weights", torch_dynamic(model, per_channel=True))
    score("int8 per-channel weights, per-token activations", quantize_int8(model))

    sensitivity = linear_sensitivity(model, sensitivity_features, batch_size)
    log("sensitivity (span-logit KL, training questions): " + json.dumps([(n, round(s, 5)) for n, s in sensitivity]))
    for count in keep_counts:
        kept = [name for name, _ in sensitivity[:count]]
        score(f"int8, {count} most sensitive kept fp32: {', '.join(kept)}", quantize_int8(model, keep_float=kept))

    ranges = input_channel_ranges(model, (inputs for _, inputs in calibration.batches(batch_size, "dynamic")))
    for alpha in alphas:
        smoothed = quantize_int8(model, smoothing=smoothing_factors(model, ranges, alpha))
        score(f"int8 + SmoothQuant alpha {alpha}", smoothed)

    if front is not None:
        patch(model)
        for percent in picks:
            point = pick(front, max_f1_drop_percent=percent)
            if point.length_config == front.full_length.length_config:
                log(f"the within-{percent:g}% pick is full length: its int8 score is step 3's")
                continue
            fp32_step = f"fp32 at the within-{percent:g}% pick {list(point.length_config.values)}"
            score(fp32_step, model, point.length_config)
            score(f"int8 at the within-{percent:g}% pick", prepare_for_precision(model, "int8"), point.length_config,
                  reference=fp32_step)
    settings = {"model": os.path.abspath(model_dir), "dev": os.path.abspath(dev_path), "questions": questions,
                "features": len(dev), "seed": seed, "calibration": os.path.abspath(calibration_path),
                "sensitivity_questions": sensitivity_questions, "calibration_questions": calibration_questions,
                "batch_size": batch_size,
                "torch": torch.__version__, "threads": torch.get_num_threads()}
    return {"settings": settings, "sensitivity": sensitivity, "steps": steps}


def _bf16_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--dev", default=default_squad_file("dev-a-v1.1.json"))
    parser.add_argument("--calibration", default=default_squad_file("train-subset-v1.1.json"),
                        help="training-file questions for the sensitivity and SmoothQuant calibration")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--sensitivity-questions", type=int, default=64,
                        help="training questions the per-layer sensitivity is measured on (36 forward passes)")
    parser.add_argument("--calibration-questions", type=int, default=128,
                        help="training questions SmoothQuant's activation ranges are taken from")
    parser.add_argument("--keep-counts", default="1,2,4", help="how many sensitive layers to keep fp32, per step")
    parser.add_argument("--alphas", default="0.5,0.8", help="SmoothQuant migration strengths, one step each")
    parser.add_argument("--picks", default="1,3", help="front picks (F1 drop budgets, percent) scored in int8")
    parser.add_argument("--out", default=os.path.join("runs", "int8-study.json"))
    args = parser.parse_args(argv)
    result = run_study(args.model, args.dev, args.calibration, args.questions,
                       sensitivity_questions=args.sensitivity_questions,
                       calibration_questions=args.calibration_questions,
                       keep_counts=[int(v) for v in args.keep_counts.split(",") if v],
                       alphas=[float(v) for v in args.alphas.split(",") if v],
                       picks=[float(v) for v in args.picks.split(",") if v],
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
