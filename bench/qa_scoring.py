"""What the QA benchmarks record beside each variant's time (bench/test_bench_qa.py, bench/test_bench_export.py):
its F1/EM on the sample, computed from that variant's own logits (so a wrong export or a lossy precision shows),
the MACs ratio at the sample's real lengths (the ideal speedup over full length) and its length config."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dtb_ext.macs import macs_ratio
from dtb_ext.qa.metric import squad_metrics
from dtb_ext.qa.postprocess import SpanCollector

Logits = tuple[torch.Tensor, torch.Tensor]


def scores_and_macs(variants: dict[str, tuple[Callable[[dict[str, torch.Tensor]], Logits], Any]],
                    batches: Sequence[tuple[Any, dict[str, torch.Tensor]]], features: Any,
                    model_config: Any) -> dict[str, dict[str, Any]]:
    """Per variant name: f1, exact_match, macs_ratio and length_config (JSON text, None at full length).

    variants: name -> (inputs -> (start_logits, end_logits) [B, L], length config or None).
    batches: (feature indices, model inputs) pairs covering every feature of `features` once.
    """
    extra = {}
    with torch.inference_mode():
        for name, (run, config) in variants.items():
            collector = SpanCollector(features)
            for indices, inputs in batches:
                start, end = run(inputs)
                collector.add(indices, start.float(), end.float())
            scores = squad_metrics(features.examples, collector.predictions())
            extra[name] = {"f1": round(scores["f1"], 2), "exact_match": round(scores["exact_match"], 2),
                           "macs_ratio": round(macs_ratio(model_config, config, features.lengths), 3),
                           "length_config": None if config is None else json.dumps(config.to_json())}
    return extra
