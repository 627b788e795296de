"""Calibration batches for int8 post-training quantization of an exported graph: windows of SQuAD *training*
questions (the shared training subset by default), never of dev-a, so that int8 F1 on dev-a stays an honest
held-out score."""
from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_CALIBRATION_WINDOWS = 300


def training_calibration_inputs(tokenizer: Any, num_layers: int, windows: int = DEFAULT_CALIBRATION_WINDOWS,
                                data_file: str | None = None, seed: int = 0, max_seq_length: int = 384,
                                doc_stride: int = 128, max_query_length: int = 64) -> list[dict[str, np.ndarray]]:
    """`windows` single-window batches of graph inputs from training questions, every other one at full length
    and the others dropping tokens at every layer (`keep_rule.falling_ratios`): the OpenVINO graph ranks tokens
    in an If branch per layer, which NNCF calibrates only on the batches that take it (and refuses to quantize
    without).

    Args:
        tokenizer: the model's fast tokenizer.
        num_layers: the model's layer count (the keep-rule inputs' width).
        windows: how many windows (calibration batches of one) to return.
        data_file: a SQuAD-1.1-format training file; None for ../shared/data/squad/train-subset-v1.1.json beside a
            checkout (ValueError saying what to pass where it is missing).
        seed: which questions are drawn (a fixed random sample, in file order).
        max_seq_length, doc_stride, max_query_length: the sliding windows, as in evaluation.
    """
    from dtb_ext.data_paths import training_file
    from dtb_ext.graph_export.keep_rule import INPUT_NAMES as KEEP_RULE_NAMES
    from dtb_ext.graph_export.keep_rule import falling_ratios, keep_rule_arrays
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.search.qa_objective import sample_questions

    if windows < 1:
        raise ValueError(f"int8 calibration needs at least one window, got {windows}")
    examples = load_squad(training_file(data_file, "int8 calibration windows", "--calibration-data"))
    # A question gives one or more windows: draw enough questions, then keep the first `windows` windows.
    features = prepare_eval_features(sample_questions(examples, min(windows, len(examples)), seed), tokenizer,
                                     max_seq_length, doc_stride, max_query_length)
    rules = [dict(zip(KEEP_RULE_NAMES, keep_rule_arrays(spec, 1, num_layers)))
             for spec in (None, falling_ratios(num_layers))]
    batches = []
    for _, inputs in features.batches(1):
        batches.append({**{name: tensor.numpy() for name, tensor in inputs.items()}, **rules[len(batches) % 2]})
        if len(batches) == windows:
            break
    return batches
