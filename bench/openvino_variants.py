"""OpenVINO variants shared by the benchmarks (bench/test_bench_export.py, bench/test_bench_qa.py): the unpatched
Hugging Face model converted by `openvino.convert_model` (the strongest plain CPU baseline, issue 27) and the
exported length-adaptive graph (`dtb_ext.export`, one graph for every budget) at full length and at the shipped
front's within-1 % pick, in fp32, bf16 (the same IR compiled with INFERENCE_PRECISION_HINT bf16) and int8 (NNCF
post-training quantization of each model on the same SQuAD training windows; OpenVINO's default precision for
the float part). Every compiled model: INFERENCE_NUM_THREADS=`threads`, PERFORMANCE_HINT=LATENCY (one stream)."""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# OpenVINO's INFERENCE_PRECISION_HINT per precision (int8: OpenVINO's default for the float part).
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": None}

Logits = tuple[torch.Tensor, torch.Tensor]


@lru_cache(maxsize=1)
def openvino_setup(directory: str, model_dir: str, front: str, questions: int, precisions: tuple[str, ...],
                    calibration_windows: int) -> dict[str, Any]:
    """The exported graphs and unpatched OpenVINO models of every precision (written under `directory`), the
    sample's features, the pick, and the model config."""
    import openvino as ov

    import dtb_ext
    from dtb_ext.graph_export.calibration import training_calibration_inputs
    from dtb_ext.graph_export.convert import quantize_int8
    from dtb_ext.models.patching import patch
    from dtb_ext.qa import load_squad, prepare_eval_features
    from dtb_ext.qa.data import default_squad_file
    from dtb_ext.qa.model import load_qa_model
    from dtb_ext.search.qa_objective import sample_questions

    model, tokenizer = load_qa_model(model_dir)
    unpatched, _ = load_qa_model(model_dir)
    patch(model).eval()
    pick = dtb_ext.pick(dtb_ext.load_front(front), max_f1_drop_percent=1.0)
    calibration = training_calibration_inputs(tokenizer, model.config.num_hidden_layers, calibration_windows)
    examples = sample_questions(load_squad(default_squad_file("dev-a-v1.1.json")), questions, 0)
    features = prepare_eval_features(examples, tokenizer)
    sample = next(iter(features.batches(1)))[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = ov.convert_model(unpatched.eval(), example_input={name: sample[name] for name in TEXT_INPUTS})
    paths = {}
    for precision in sorted(set(precisions)):
        graph_path = os.path.join(directory, f"graph-{precision}")
        dtb_ext.export(model, graph_path, "openvino", "int8" if precision == "int8" else "fp32",
                       calibration_inputs=calibration if precision == "int8" else None)
        unpatched_model = baseline
        if precision == "int8":
            text_only = [{name: batch[name] for name in TEXT_INPUTS} for batch in calibration]
            unpatched_model = quantize_int8(baseline.clone(), text_only)
        unpatched_path = os.path.join(directory, f"unpatched-{precision}.xml")
        ov.save_model(unpatched_model, unpatched_path, compress_to_fp16=False)
        paths[precision] = (graph_path, unpatched_path)
    return {"paths": paths, "pick": pick, "features": features, "model_config": model.config}


def openvino_variants(setup: dict[str, Any], precisions: tuple[str, ...], threads: int
                      ) -> dict[str, tuple[Callable[[dict[str, torch.Tensor]], Logits], Any]]:
    """name -> (inputs -> logits, length config or None)."""
    import openvino as ov

    from dtb_ext.graph_export import ExportedQA

    variants = {}
    core = ov.Core()
    for precision in precisions:
        graph_path, unpatched_path = setup["paths"][precision]
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if HINTS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        variants[f"ov-{precision}-unpatched"] = (_unpatched_runner(core.compile_model(unpatched_path, "CPU", config)),
                                                 None)
        graph = ExportedQA(graph_path, threads=threads, latency=True, inference_precision=HINTS[precision])
        full = {"ratios": [1.0] * graph.num_layers}
        variants[f"ov-{precision}-graph-full"] = (_graph_runner(graph, full), None)
        variants[f"ov-{precision}-graph-pick1pct"] = (_graph_runner(graph, setup["pick"].length_config),
                                                      setup["pick"].length_config)
    return variants


def _unpatched_runner(compiled: Any) -> Callable[[dict[str, torch.Tensor]], Logits]:
    request = compiled.create_infer_request()

    def run(inputs):
        outputs = request.infer({name: inputs[name].numpy() for name in TEXT_INPUTS})
        start, end = (np.asarray(outputs[port]) for port in compiled.outputs)
        return torch.from_numpy(start), torch.from_numpy(end)

    return run


def _graph_runner(graph: Any, config: Any) -> Callable[[dict[str, torch.Tensor]], Logits]:
    def run(inputs):
        return graph(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], config)

    return run
