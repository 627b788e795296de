"""Where the exported OpenVINO graph loses time at batch 1 (issue 27): the graph built three ways from the same
pieces and timed beside OpenVINO's own conversion of the unpatched model, interleaved feature by feature.

- `if`: the shipped graph (`openvino_graph.py`): each layer's token ranking under an If node;
- `rank`: the ranking inlined at every layer (no If: TopK and sorts run even where nothing drops);
- `noop`: the all-slots branch inlined at every layer (no ranking at all: the gather and restore structure alone;
  full length only, it cannot drop).

Each is run at full length and (`if`, `rank`) at the shipped front's within-1 % pick, on dev-a features of their
own lengths (dynamic padding, batch 1), bf16 inference precision hint, INFERENCE_NUM_THREADS=2, LATENCY hint, with
every variant's call order shuffled per feature; then each model alone with OpenVINO's per-node counters
(PERF_COUNT), on one repeated input and on the features cycled (a new input shape at every call).

    .venv/bin/python bench/openvino_graph_overhead.py [--questions 24] [--rounds 6] [--out DIR]

A diagnostic, not a test: it builds the `rank` and `noop` variants by replacing `openvino_graph._if` while it
converts. Needs the openvino extra. Run it alone on the cores, as every timing here.
"""
from __future__ import annotations

import argparse
import collections
import os
import random
import statistics
import tempfile
import time
import warnings

import torch

import dtb_ext
from dtb_ext.graph_export import openvino_graph
from dtb_ext.graph_export.convert import _example_inputs, name_openvino_ports
from dtb_ext.graph_export.graph import LengthAdaptiveQAGraph
from dtb_ext.graph_export.keep_rule import keep_rule_arrays
from dtb_ext.qa import load_squad, prepare_eval_features
from dtb_ext.qa.data import default_squad_file
from dtb_ext.qa.model import load_qa_model
from dtb_ext.search.pick import DEFAULT_FRONT_PATH
from dtb_ext.search.qa_objective import sample_questions

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BRANCHES = {
    "if": None,
    "rank": lambda condition, inputs, then_body, else_body, else_inputs: openvino_graph._inline(then_body, inputs),
    "noop": lambda condition, inputs, then_body, else_body, else_inputs: openvino_graph._inline(
        else_body, [inputs[index] for index in else_inputs]),
}


def build_variants(model: torch.nn.Module, unpatched: torch.nn.Module, sample: dict, directory: str) -> dict[str, str]:
    """IR paths: the unpatched model converted by OpenVINO, and the graph with each branch rule."""
    import openvino as ov

    paths = {"unpatched": os.path.join(directory, "unpatched.xml")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov.save_model(ov.convert_model(unpatched.eval(), example_input={name: sample[name] for name in TEXT_INPUTS}),
                      paths["unpatched"])
        shipped = openvino_graph._if
        for name, branch in BRANCHES.items():
            openvino_graph._if = branch or shipped
            try:
                graph = LengthAdaptiveQAGraph(model)
                converted = openvino_graph.convert_with_skipped_ranking(graph, _example_inputs(graph.num_layers))
            finally:
                openvino_graph._if = shipped
            name_openvino_ports(converted)
            paths[name] = os.path.join(directory, f"graph-{name}.xml")
            ov.save_model(converted, paths[name], compress_to_fp16=False)
    return paths


def feeds(feature: dict, config, num_layers: int, graph: bool) -> dict:
    inputs = {name: feature[name].numpy() for name in TEXT_INPUTS}
    if graph:
        inputs["keep_ratio_basis_points"], inputs["keep_lengths"] = keep_rule_arrays(config, 1, num_layers)
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=None, help="directory for the IR files (default: a temporary one)")
    args = parser.parse_args()
    import openvino as ov

    model, tokenizer = load_qa_model(dtb_ext.DEFAULT_MODEL_DIR)
    unpatched, _ = load_qa_model(dtb_ext.DEFAULT_MODEL_DIR)
    dtb_ext.patch(model).eval()
    layers = model.config.num_hidden_layers
    pick = dtb_ext.pick(dtb_ext.load_front(DEFAULT_FRONT_PATH), max_f1_drop_percent=1.0).length_config
    examples = sample_questions(load_squad(default_squad_file("dev-a-v1.1.json")), args.questions, 0)
    features = [batch for _, batch in prepare_eval_features(examples, tokenizer).batches(1)][:args.questions]
    directory = args.out or tempfile.mkdtemp(prefix="dtb-ov-overhead-")
    paths = build_variants(model, unpatched, features[0], directory)
    settings = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"}
    core = ov.Core()
    variants = {"unpatched": ("unpatched", None)}
    for name in BRANCHES:
        variants[f"{name}-full"] = (name, None)
        if name != "noop":
            variants[f"{name}-pick"] = (name, pick)
    requests = {variant: core.compile_model(paths[path], "CPU", settings).create_infer_request()
                for variant, (path, _) in variants.items()}
    inputs = {variant: [feeds(feature, config, layers, path != "unpatched") for feature in features]
              for variant, (path, config) in variants.items()}
    times = collections.defaultdict(list)
    order = list(variants)
    shuffle = random.Random(0)
    for round_index in range(args.rounds + 1):  # round 0 warms up every shape
        for index in range(len(features)):
            shuffle.shuffle(order)
            for variant in order:
                started = time.perf_counter()
                requests[variant].infer(inputs[variant][index])
                if round_index:
                    times[variant].append(time.perf_counter() - started)
    lengths = [feature["input_ids"].shape[1] for feature in features]
    print(f"{len(features)} dev-a features at batch 1 (mean {statistics.mean(lengths):.0f} tokens), pick {pick}, "
          f"{args.rounds} rounds; OpenVINO {ov.get_version()}\n")
    # Medians: with six compiled models in turn, a few calls take several times their usual time (cold caches),
    # and those outliers would decide a ratio of sums.
    print("| variant | median ms | x unpatched (medians) |\n|---|---|---|")
    base = statistics.median(times["unpatched"])
    for variant in variants:
        median = statistics.median(times[variant])
        print(f"| {variant} | {median * 1e3:.2f} | {base / median:.3f} |")
    print("\nEach model alone, per-node counters on: nodes of the compiled model; median ms on one repeated input "
          "and on the features cycled; the node types that take most of the profiled time (us per call).\n")
    print("| variant | nodes | same input | cycled | profiled per call, cycled | top node types |")
    print("|---|---|---|---|---|---|")
    for variant in ("unpatched", "noop-full", "if-full", "if-pick", "rank-full", "rank-pick"):
        path, _ = variants[variant]
        compiled = core.compile_model(paths[path], "CPU", {**settings, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        for data in inputs[variant]:
            request.infer(data)
        medians = []
        profiled = collections.Counter()
        for repeated in (True, False):
            calls = []
            for _ in range(3):
                for index in range(len(features)):
                    started = time.perf_counter()
                    request.infer(inputs[variant][3 if repeated else index])
                    calls.append(time.perf_counter() - started)
                    if not repeated:
                        for node in request.profiling_info:
                            profiled[node.node_type] += node.real_time.total_seconds() * 1e6
            medians.append(statistics.median(calls) * 1e3)
        count = 3 * len(features)
        top = ", ".join(f"{kind} {micros / count:.0f}" for kind, micros in profiled.most_common(6))
        print(f"| {variant} | {len(compiled.get_runtime_model().get_ordered_ops())} | {medians[0]:.2f} | "
              f"{medians[1]:.2f} | {sum(profiled.values()) / count / 1e3:.2f} | {top} |")


if __name__ == "__main__":
    main()
