"""Evaluating a span-QA model on prepared SQuAD features, optionally under a length configuration."""
from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from dtb_ext.qa.features import EvalFeatures
from dtb_ext.qa.metric import squad_metrics
from dtb_ext.qa.postprocess import SpanCollector


def _length_config_context(model: torch.nn.Module, length_config: Any) -> contextlib.AbstractContextManager:
    """`dtb_ext.length_config(model, cfg)` (patching the model first when needed), or nothing when cfg is None."""
    if length_config is None:
        return contextlib.nullcontext()
    from dtb_ext.models import patching  # lazily: plain evaluation does not need the dynamic encoder

    return patching.length_config(patching.ensure_patched(model), length_config)


def evaluate_qa(
    model: torch.nn.Module,
    features: EvalFeatures,
    length_config: Any = None,
    batch_size: int = 32,
    padding: str = "dynamic",
    progress: bool = True,
    return_predictions: bool = False,
    return_per_question: bool = False,
) -> dict[str, Any]:
    """Run `model` (a Hugging Face *ForQuestionAnswering, on any device) over `features` and score it.

    length_config: None (full length), a list of ints per layer, or a dtb_ext.LengthConfig; applied through
    `dtb_ext.length_config` (an unpatched model is patched in place first; patching does not change its
    full-length outputs). padding: "dynamic" (batches of similar length padded to their longest) or
    "max_length" (every batch padded to features.max_seq_length). Deterministic: fixed batch order,
    inference mode. Returns {"exact_match", "f1", "n", "seconds"} (+ "predictions": qid -> text when
    return_predictions; + "per_question_f1": [n] F1 points of each question of features.examples, in their order,
    whose mean is "f1", when return_per_question); "seconds" is the wall time of the forward passes and
    post-processing."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    collector = SpanCollector(features)
    n_batches = -(-len(features) // batch_size) if batch_size > 0 else 0
    try:
        with torch.inference_mode(), _length_config_context(model, length_config):
            started = time.perf_counter()
            batches = features.batches(batch_size, padding)
            for indices, inputs in tqdm(batches, total=n_batches, desc="evaluate", unit="batch", disable=not progress):
                outputs = model(**{name: tensor.to(device) for name, tensor in inputs.items()})
                collector.add(indices, outputs.start_logits.cpu(), outputs.end_logits.cpu())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
    finally:
        model.train(was_training)
    predictions = collector.predictions()
    result: dict[str, Any] = {**squad_metrics(features.examples, predictions), "seconds": seconds}
    if return_predictions:
        result["predictions"] = predictions
    if return_per_question:
        result["per_question_f1"] = per_question_f1(features.examples, predictions)
    return result


def per_question_f1(examples: Any, predictions: dict[str, str]) -> list[float]:
    """[n] official SQuAD F1 (points, 0-100) of each example's prediction, best over its gold answers; a
    question without a prediction scores 0, as in `squad_metrics`."""
    from dtb_ext.qa.metric import f1_score

    return [
        100.0 * max((f1_score(predictions[e.qid], truth) for truth in e.answers), default=0.0)
        if e.qid in predictions else 0.0
        for e in examples
    ]
