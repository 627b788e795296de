"""`export`: a patched span-QA model as one ONNX or OpenVINO graph that serves every length configuration.

The graph is `graph.LengthAdaptiveQAGraph` traced on a small example: dynamic batch and sequence axes, the keep
rule as two [B, n_layers] inputs (keep_rule.py), standard ops only (TopK, Gather/GatherND, ScatterND, ...).

- ONNX: `torch.onnx.export` (TorchScript exporter, opset 17). ONNX's TopK puts the lower index first among equal
  values, which is the design's tie rule.
- OpenVINO: `openvino.convert_model` on the same module's pieces, joined with an If node per layer that skips
  token ranking where no example drops a real token (openvino_graph.py; torch SDPA becomes OpenVINO's fused
  SDPA op), every TopK made stable (OpenVINO's TopK is unstable by default: ties would not go to the lower
  position). Precisions: fp32 and bf16 store the same float32 IR and differ in the inference precision the runtime
  compiles it with (`INFERENCE_PRECISION_HINT`, recorded in dtb_export.json); int8 is NNCF post-training
  quantization calibrated on the windows of SQuAD *training* questions (calibration.py).

Every export writes `dtb_export.json` beside the graph: format, precision, layer count and the input names, which
`ExportedQA` (runtime.py) reads.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
from torch import nn

from dtb_ext.config import MixedLengthConfig, as_length_config, length_config_from_json
from dtb_ext.graph_export.graph import LengthAdaptiveQAGraph
from dtb_ext.graph_export.openvino_graph import convert_with_skipped_ranking
from dtb_ext.graph_export.keep_rule import INPUT_NAMES as KEEP_RULE_NAMES
from dtb_ext.graph_export.keep_rule import RATIO_SCALE, falling_ratios, keep_rule_arrays

FORMATS = ("openvino", "onnx")
EXPORT_PRECISIONS = ("fp32", "bf16", "int8")
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
INPUT_NAMES = TEXT_INPUTS + KEEP_RULE_NAMES
OUTPUT_NAMES = ("start_logits", "end_logits")
METADATA_FILE = "dtb_export.json"
GRAPH_FILES = {"openvino": "model.xml", "onnx": "model.onnx"}
# OpenVINO's INFERENCE_PRECISION_HINT per precision; int8 leaves the float part to OpenVINO's default (bf16 where
# the CPU runs it natively), as a plain OpenVINO int8 deployment would.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": None}
ONNX_OPSET = 17


def export(model: nn.Module, path: str, format: str = "openvino", precision: str = "fp32",
           calibration_inputs: list[dict[str, Any]] | None = None, default_length_config: Any = None) -> str:
    """Write `model` (a patched, float32 span-QA model) as one graph serving every length configuration.

    Args:
        model: a patched BertForQuestionAnswering / RobertaForQuestionAnswering in float32 (it is traced as is,
            in eval mode; its training mode is restored afterwards).
        path: output directory (created); receives model.xml + model.bin (OpenVINO) or model.onnx, and
            dtb_export.json.
        format: "openvino" or "onnx".
        precision: "fp32", "bf16" (OpenVINO only: its inference precision hint) or "int8" (OpenVINO only: NNCF
            post-training quantization).
        calibration_inputs: for int8, the batches to calibrate on, each a dict of the graph's inputs
            (`calibration.training_calibration_inputs` builds them from SQuAD training windows); required for int8.
        default_length_config: the configuration `ExportedQA` applies when a caller gives none (None: full length);
            per-layer ints, a LengthConfig or its JSON form. The graph itself serves every configuration.

    Returns:
        The graph file's path.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    if format == "onnx" and precision != "fp32":
        raise ValueError(f"an ONNX export is fp32 (bf16 and int8 are OpenVINO precisions), got precision {precision!r}")
    if precision == "int8" and not calibration_inputs:
        raise ValueError("an int8 export needs calibration_inputs: batches of graph inputs from training data "
                         "(dtb_ext.graph_export.calibration.training_calibration_inputs)")
    parameter = next(model.parameters())
    if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
        raise ValueError(f"export traces a float32 CPU model (the precision is the runtime's), got "
                         f"{parameter.dtype} on {parameter.device}")
    graph = LengthAdaptiveQAGraph(model)
    default = _checked_default(default_length_config, graph.num_layers)
    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, GRAPH_FILES[format])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about tensors converted to Python ints (TopK's k): there the graph keeps the
            # computed value, which the equivalence tests check on inputs of other shapes and configurations.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            example = _example_inputs(graph.num_layers)
            if format == "onnx":
                _export_onnx(graph, example, target)
            else:
                _export_openvino(graph, example, target, precision, calibration_inputs)
    finally:
        model.train(was_training)
    metadata = {
        "format": format,
        "precision": precision,
        "inference_precision": INFERENCE_PRECISION[precision] if format == "openvino" else None,
        "num_layers": graph.num_layers,
        "significance": graph.significance,
        "keep_first": graph.keep_first,
        "ratio_scale": RATIO_SCALE,
        "default_length_config": default,
        "inputs": list(INPUT_NAMES),
        "outputs": list(OUTPUT_NAMES),
        "graph": GRAPH_FILES[format],
    }
    with open(os.path.join(path, METADATA_FILE), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=1)
    return target


def _checked_default(spec: Any, num_layers: int) -> Any:
    """The JSON form of a default length configuration (validated as a graph input), or None."""
    if isinstance(spec, dict):
        spec = length_config_from_json(spec)
    config = as_length_config(spec, num_layers)
    if isinstance(config, MixedLengthConfig):
        raise ValueError("a default length configuration is one configuration for every example, got a mixed one")
    if config is None:
        return None
    keep_rule_arrays(config, 1, num_layers)  # a ratio with more decimals than the graph takes fails here
    return config.to_json()


def _example_inputs(num_layers: int) -> tuple[torch.Tensor, ...]:
    """A padded batch of 2 with dropping at every layer, so that the trace records every op of the graph."""
    lengths = [12, 9]
    ids = torch.full((2, max(lengths)), 101, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    types = torch.zeros_like(ids)
    basis_points, keep_lengths = keep_rule_arrays(falling_ratios(num_layers), 2, num_layers)
    return ids, mask, types, torch.from_numpy(basis_points), torch.from_numpy(keep_lengths)


def _export_onnx(graph: nn.Module, example: tuple[torch.Tensor, ...], target: str) -> None:
    dynamic = {name: {0: "batch", 1: "sequence"} for name in TEXT_INPUTS + OUTPUT_NAMES}
    dynamic.update({name: {0: "batch"} for name in KEEP_RULE_NAMES})
    torch.onnx.export(graph, example, target, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                      dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)


def _export_openvino(graph: nn.Module, example: tuple[torch.Tensor, ...], target: str, precision: str,
                     calibration_inputs: list[dict[str, Any]] | None) -> None:
    import openvino as ov

    converted = convert_with_skipped_ranking(graph, example)
    name_openvino_ports(converted)
    if precision == "int8":
        converted = quantize_int8(converted, calibration_inputs)
    ov.save_model(converted, target, compress_to_fp16=False)


def name_openvino_ports(model: Any) -> None:
    """Give the converted model's inputs and outputs the graph's names (the frontend numbers some of them)."""
    for port, name in zip(model.inputs, INPUT_NAMES):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, OUTPUT_NAMES):
        port.get_tensor().set_names({name})


def quantize_int8(model: Any, calibration_inputs: list[dict[str, Any]]) -> Any:
    """NNCF post-training int8 quantization of an OpenVINO model (transformer preset), calibrated on
    `calibration_inputs` (dicts of graph inputs by name)."""
    import nncf

    dataset = nncf.Dataset(calibration_inputs)
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(calibration_inputs))
