"""`ExportedQA`: run a graph written by `dtb_ext.export` in its runtime (OpenVINO or ONNX Runtime), with the
length configuration checked and turned into the graph's keep-rule inputs (keep_rule.py)."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from dtb_ext.graph_export.convert import GRAPH_FILES, INPUT_NAMES, METADATA_FILE, TEXT_INPUTS
from dtb_ext.graph_export.keep_rule import INPUT_NAMES as KEEP_RULE_NAMES
from dtb_ext.graph_export.keep_rule import MAX_EXACT_LENGTH, keep_rule_arrays

RUNTIMES = {"openvino": "openvino", "onnx": "onnxruntime"}


class ExportedQA:
    """A compiled exported span-QA graph: `(input_ids, attention_mask, token_type_ids, length_config)` -> logits.

    Args:
        path: the directory `export` wrote (dtb_export.json and the graph).
        threads: CPU threads of the runtime (None: the runtime's default).
        latency: OpenVINO only: compile with PERFORMANCE_HINT=LATENCY (one stream), for batch-1 serving.
        inference_precision: OpenVINO only: override the INFERENCE_PRECISION_HINT recorded at export ("f32",
            "bf16"), e.g. to run an fp32 export in bf16.
    """

    def __init__(self, path: str, threads: int | None = None, latency: bool = False,
                 inference_precision: str | None = None) -> None:
        metadata_path = os.path.join(path, METADATA_FILE)
        if not os.path.isfile(metadata_path):
            raise ValueError(f"{path!r} is not an exported model: it has no {METADATA_FILE} (write one with "
                             "dtb_ext.export or `dtb export`)")
        with open(metadata_path, encoding="utf-8") as handle:
            self.metadata: dict[str, Any] = json.load(handle)
        self.format = self.metadata["format"]
        self.precision = self.metadata["precision"]
        self.num_layers = int(self.metadata["num_layers"])
        # what a call without a configuration runs: full length, unless the export stored a default
        self.default_length_config = self.metadata.get("default_length_config")
        self.runtime = RUNTIMES[self.format]
        graph = os.path.join(path, GRAPH_FILES[self.format])
        if self.format == "openvino":
            self._run = _openvino_runner(graph, threads, latency,
                                         inference_precision or self.metadata.get("inference_precision"))
        else:
            if latency or inference_precision:
                raise ValueError("latency and inference_precision are OpenVINO settings; this is an ONNX export")
            self._run = _onnxruntime_runner(graph, threads)

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any,
                 length_config: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits, each [B, L] float32, of one padded batch.

        Args:
            input_ids, attention_mask, token_type_ids: [B, L] integer arrays or tensors (attention_mask nonzero for
                real tokens, at least one per example).
            length_config: per-layer ints, a LengthConfig, a MixedLengthConfig with one entry per example, or their
                JSON form; None for the export's default (`default_length_config`: full length unless the export
                stored one). ValueError when it does not fit the model or the batch.
        """
        arrays = {name: _int64(value, name) for name, value in
                  zip(TEXT_INPUTS, (input_ids, attention_mask, token_type_ids))}
        shape = arrays["input_ids"].shape
        if len(shape) != 2 or any(array.shape != shape for array in arrays.values()):
            raise ValueError(f"input_ids, attention_mask and token_type_ids must share one [batch, length] shape, got "
                             f"{', '.join(f'{name} {tuple(array.shape)}' for name, array in arrays.items())}")
        if shape[1] > MAX_EXACT_LENGTH:
            raise ValueError(f"an exported graph reads at most {MAX_EXACT_LENGTH} tokens per example, got {shape[1]}")
        if not (arrays["attention_mask"] != 0).any(axis=1).all():
            raise ValueError("every example needs at least one real token; the attention mask has an all-padding row")
        if length_config is None:
            length_config = self.default_length_config
        arrays.update(zip(KEEP_RULE_NAMES, keep_rule_arrays(length_config, shape[0], self.num_layers)))
        start, end = self._run({name: arrays[name] for name in INPUT_NAMES})
        return (torch.from_numpy(np.asarray(start, dtype=np.float32)),
                torch.from_numpy(np.asarray(end, dtype=np.float32)))


def _int64(value: Any, name: str) -> np.ndarray:
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _openvino_runner(graph: str, threads: int | None, latency: bool, inference_precision: str | None):
    import openvino as ov

    config: dict[str, Any] = {}
    if inference_precision is not None:
        config["INFERENCE_PRECISION_HINT"] = inference_precision
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if latency:
        config["PERFORMANCE_HINT"] = "LATENCY"
    compiled = ov.Core().compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()
    start_port, end_port = compiled.output("start_logits"), compiled.output("end_logits")

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        request.infer(feeds)
        # copies: the request's output memory is overwritten by its next inference
        return request.get_tensor(start_port).data.copy(), request.get_tensor(end_port).data.copy()

    return run


def _onnxruntime_runner(graph: str, threads: int | None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Spinning intra-op threads steal the cores from whatever runs next in the process (bench/test_bench_qa.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        start, end = session.run(["start_logits", "end_logits"], feeds)
        return start, end

    return run
