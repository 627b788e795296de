"""SQuAD evaluation of an exported graph (`ExportedQA`): the loop of `dtb_ext.qa.evaluate_qa` with the runtime in
place of the PyTorch model, scored by the same post-processing and official metric."""
from __future__ import annotations

import time
from typing import Any

from dtb_ext.graph_export.runtime import ExportedQA
from dtb_ext.qa.features import EvalFeatures
from dtb_ext.qa.metric import squad_metrics
from dtb_ext.qa.postprocess import SpanCollector


def evaluate_exported(graph: ExportedQA, features: EvalFeatures, length_config: Any = None, batch_size: int = 32,
                      padding: str = "dynamic", progress: bool = True,
                      return_predictions: bool = False) -> dict[str, Any]:
    """{"exact_match", "f1", "n", "seconds"} (+ "predictions") of `graph` over `features` under `length_config`
    (None, a LengthConfig, per-layer ints or their JSON form; one configuration for every window); "seconds" is
    the wall time of the forward passes and post-processing, as in `evaluate_qa`."""
    from tqdm.auto import tqdm

    collector = SpanCollector(features)
    n_batches = -(-len(features) // batch_size) if batch_size > 0 else 0
    started = time.perf_counter()
    for indices, inputs in tqdm(features.batches(batch_size, padding), total=n_batches, desc="evaluate",
                                unit="batch", disable=not progress):
        start, end = graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], length_config)
        collector.add(indices, start, end)
    seconds = time.perf_counter() - started
    predictions = collector.predictions()
    result: dict[str, Any] = {**squad_metrics(features.examples, predictions), "seconds": seconds}
    if return_predictions:
        result["predictions"] = predictions
    return result
