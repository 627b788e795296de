"""Where a span-QA model runs: PyTorch itself (dtb_ext's kernels), or its exported graph in OpenVINO or ONNX
Runtime. A light module (no torch), so that command lines can list the choices without loading a model."""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence

RUNTIMES = ("torch", "openvino", "onnxruntime")
# the export format each graph runtime reads
EXPORT_FORMAT = {"openvino": "openvino", "onnxruntime": "onnx"}
# the precisions each runtime runs: an ONNX export is fp32; OpenVINO's bf16 is its inference precision hint on the
# fp32 graph, its int8 NNCF post-training quantization (convert.py)
RUNTIME_PRECISIONS = {"torch": ("fp32", "bf16", "int8"), "openvino": ("fp32", "bf16", "int8"),
                      "onnxruntime": ("fp32",)}
# the extra of pyproject.toml that installs every graph runtime's packages
RUNTIMES_EXTRA = "dtb_ext[openvino]"


def missing_runtime_packages(runtime: str, precisions: Sequence[str] = ("fp32",)) -> list[str]:
    """The Python packages `runtime` needs at `precisions` that are not installed (an export to ONNX Runtime also
    needs onnx; OpenVINO's int8 needs nncf); none for torch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    needed = {"torch": [], "openvino": ["openvino"], "onnxruntime": ["onnx", "onnxruntime"]}[runtime]
    if runtime == "openvino" and "int8" in precisions:
        needed.append("nncf")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def require_runtime_packages(runtime: str, precisions: Sequence[str], alternative: str) -> None:
    """ValueError naming the extra to install when `runtime` at `precisions` misses a package; `alternative` says
    what runs without it (e.g. "--runtime torch runs without it")."""
    missing = missing_runtime_packages(runtime, precisions)
    if missing:
        raise ValueError(f"runtime {runtime} needs the {RUNTIMES_EXTRA} extra, and {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not installed: pip install \"{RUNTIMES_EXTRA}\" "
                         f"({alternative})")
