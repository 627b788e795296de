"""What the demo's F1 and latency loops run: one span-QA model in one runtime and precision (`QARunner`), filled
by the patched PyTorch model (`TorchRunner`) or by its exported graph in OpenVINO or ONNX Runtime (`GraphRunner`
over an `ExportedQA`: one compiled graph per precision serves every configuration, the keep rule being an input
of the graph, docs/design.md §2.9)."""
from __future__ import annotations

import abc
import copy
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dtb_ext.graph_export.runtimes import EXPORT_FORMAT, RUNTIME_PRECISIONS, RUNTIMES, require_runtime_packages

# a function returning the int8 calibration batches (graph inputs of SQuAD training windows), called only when an
# int8 graph is exported
CalibrationInputs = Callable[[], list[dict[str, Any]]]


class QARunner(abc.ABC):
    """One span-QA model in one runtime and precision, as the demo scores and times it; `name` ("torch fp32",
    "openvino bf16", ...) labels its measurements."""

    def __init__(self, runtime: str, precision: str, device: Any) -> None:
        self.runtime = runtime
        self.precision = precision
        self.device = device

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"

    @abc.abstractmethod
    def evaluate(self, features: Any, length_config: Any, batch_size: int, progress: bool) -> dict[str, Any]:
        """SQuAD {"f1", "exact_match", ...} over `features` (EvalFeatures, batches of `batch_size` with dynamic
        padding) under `length_config` (a LengthConfig, or None for full length without one)."""

    @abc.abstractmethod
    def forward(self, inputs: dict[str, Any], length_config: Any) -> None:
        """One forward of a padded batch (input_ids, attention_mask, token_type_ids: [B, L] tensors on
        `self.device`) under `length_config`, finished when it returns (what the latency loop times)."""


class TorchRunner(QARunner):
    """A patched PyTorch QA model (already converted to `precision`), in eval mode."""

    def __init__(self, model: Any, precision: str) -> None:
        super().__init__("torch", precision, next(model.parameters()).device)
        self.model = model.eval()

    def evaluate(self, features: Any, length_config: Any, batch_size: int, progress: bool) -> dict[str, Any]:
        from dtb_ext.qa import evaluate_qa

        return evaluate_qa(self.model, features, length_config=length_config, batch_size=batch_size,
                           padding="dynamic", progress=progress)

    def forward(self, inputs: dict[str, Any], length_config: Any) -> None:
        import torch

        from dtb_ext.models.patching import length_config as applied

        with applied(self.model, length_config):
            self.model(**inputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class GraphRunner(QARunner):
    """A compiled exported graph (`ExportedQA`) in its runtime; CPU only."""

    def __init__(self, graph: Any, runtime: str, precision: str) -> None:
        import torch

        super().__init__(runtime, precision, torch.device("cpu"))
        self.graph = graph

    def evaluate(self, features: Any, length_config: Any, batch_size: int, progress: bool) -> dict[str, Any]:
        from dtb_ext.graph_export.evaluate import evaluate_exported

        return evaluate_exported(self.graph, features, length_config=length_config, batch_size=batch_size,
                                 padding="dynamic", progress=progress)

    def forward(self, inputs: dict[str, Any], length_config: Any) -> None:
        self.graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], length_config)


def check_runtimes(runtimes: Sequence[str], precisions: Sequence[str], device: str) -> None:
    """ValueError before anything is loaded when a runtime is unknown, runs off the CPU, or misses its packages."""
    if not runtimes:
        raise ValueError(f"--runtime needs at least one of {', '.join(RUNTIMES)}, got none")
    for runtime in runtimes:
        if runtime not in RUNTIMES:
            raise ValueError(f"--runtime takes {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime == "torch":
            continue
        if device != "cpu":
            raise ValueError(f"--runtime {runtime} runs on the CPU, got --device {device}")
        require_runtime_packages(runtime, precisions, "--runtime torch runs without it")


def build_runners(model: Any, runtimes: Sequence[str], precisions: Sequence[str], directory: str,
                  calibration_inputs: CalibrationInputs, progress: bool = True) -> list[QARunner]:
    """The runners of every runtime (in RUNTIMES' order) and precision it runs, fp32 first within each.

    model: the patched float32 QA model (the torch fp32 runner runs it; the others are converted copies or its
        exported graphs, written under `directory`, which must outlive the runners).
    precisions: "fp32" first, then the demo's second precision if any; a graph runtime skips those it does not run
        (RUNTIME_PRECISIONS) and says so on stderr.
    """
    from dtb_ext.precision import prepare_for_precision

    runners: list[QARunner] = []
    for runtime in (name for name in RUNTIMES if name in runtimes):
        offered = [precision for precision in precisions if precision in RUNTIME_PRECISIONS[runtime]]
        skipped = [precision for precision in precisions if precision not in offered]
        if skipped:
            print(f"{runtime} runs {', '.join(RUNTIME_PRECISIONS[runtime])}: no {runtime} {', '.join(skipped)} row",
                  file=sys.stderr)
        if runtime == "torch":
            runners.extend(TorchRunner(model if precision == "fp32" else
                                       prepare_for_precision(copy.deepcopy(model), precision), precision)
                           for precision in offered)
        else:
            runners.extend(graph_runners(model, runtime, offered, directory, calibration_inputs, progress))
    return runners


def graph_runners(model: Any, runtime: str, precisions: Sequence[str], directory: str,
                  calibration_inputs: CalibrationInputs, progress: bool = True) -> list[GraphRunner]:
    """`model` exported for `runtime` and compiled once per precision, with as many threads as torch uses
    (OpenVINO: PERFORMANCE_HINT=LATENCY, one stream, as the benchmarks run it). fp32 and bf16 share one fp32
    export (bf16 is OpenVINO's inference precision hint); int8 is its own export (NNCF, calibrated on
    `calibration_inputs()`)."""
    import torch

    from dtb_ext.graph_export.convert import INFERENCE_PRECISION, export
    from dtb_ext.graph_export.runtime import ExportedQA

    runners = []
    for precision in precisions:
        exported = "int8" if precision == "int8" else "fp32"
        path = os.path.join(directory, f"{runtime}-{exported}")
        if not os.path.isdir(path):
            if progress:
                print(f"exporting the model for {runtime} ({exported}): one graph for every config", file=sys.stderr)
            export(model, path, format=EXPORT_FORMAT[runtime], precision=exported,
                   calibration_inputs=calibration_inputs() if exported == "int8" else None)
        if runtime == "openvino":
            graph = ExportedQA(path, threads=torch.get_num_threads(), latency=True,
                               inference_precision=INFERENCE_PRECISION[precision])
        else:
            graph = ExportedQA(path, threads=torch.get_num_threads())
        runners.append(GraphRunner(graph, runtime, precision))
    return runners
