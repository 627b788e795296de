"""Where a span-QA model runs: PyTorch itself (dtb_ext's kernels), or its exported graph in OpenVINO or ONNX
Runtime. A light module (no torch), so that command lines can list the choices without loading a model."""
from __future__ import annotations

RUNTIMES = ("torch", "openvino", "onnxruntime")
# the export format each graph runtime reads
EXPORT_FORMAT = {"openvino": "openvino", "onnxruntime": "onnx"}
