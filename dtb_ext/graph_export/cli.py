"""`dtb export` (a QA model as one OpenVINO / ONNX graph serving every length configuration) and the exported
path of `dtb eval --runtime openvino|onnxruntime`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.help_format import HelpFormatter
from dtb_ext.graph_export.runtimes import EXPORT_FORMAT, RUNTIMES, require_runtime_packages



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a QA model as one OpenVINO or ONNX graph that serves every length configuration",
        description="Write a span-QA model as one graph whose per-layer keep rule is an input, so one compiled "
                    "model serves every budget of its front (dtb_ext.export). The output directory gets the graph, "
                    "dtb_export.json and the tokenizer; `dtb eval --runtime openvino --model OUT` evaluates it.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR,
                        help="model directory (config, tokenizer, safetensors weights)")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory to write the exported graph into")
    parser.add_argument("--format", choices=("openvino", "onnx"), default="openvino", help="graph format")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="fp32; bf16 (OpenVINO's inference precision hint); int8 (OpenVINO, NNCF post-training "
                             "quantization calibrated on SQuAD training windows)")
    add_calibration_options(parser)
    lengths = parser.add_mutually_exclusive_group()
    lengths.add_argument("--length-config", default=None, metavar="L1,L2,...",
                         help="a default configuration stored with the graph (tokens kept per layer), used when a "
                              "caller gives none (default: full length)")
    lengths.add_argument("--length-ratios", default=None, metavar="R1,R2,...",
                         help="a default configuration stored with the graph (fractions kept per layer)")
    parser.set_defaults(run=run_export)
    _add_runtime_to_eval(subparsers.choices["eval"])


def _add_runtime_to_eval(evaluate: argparse.ArgumentParser) -> None:
    """`dtb eval --runtime`: the eval command is qa/cli.py's; the option lives here, beside the export it runs
    (the qa layer does not import this one)."""
    evaluate.add_argument("--runtime", choices=RUNTIMES, default="torch",
                          help="torch: the patched PyTorch model; openvino / onnxruntime: its exported graph (--model "
                               "is then a model directory, exported on the fly, or a `dtb export` output); --precision "
                               "bf16 and int8 are OpenVINO's (int8: NNCF, calibrated on training windows)")
    add_calibration_options(evaluate)
    evaluate.set_defaults(run=run_eval_in_runtime)


def run_eval_in_runtime(args: argparse.Namespace) -> int:
    from dtb_ext.qa.cli import run_eval

    return run_eval(args, None if args.runtime == "torch" else evaluate_in_runtime)


def add_calibration_options(parser: argparse.ArgumentParser, window_shape: bool = True) -> None:
    """The int8 calibration options, shared by `dtb export`, `dtb eval --runtime openvino --precision int8` and
    `dtb demo`; window_shape False leaves out --max-seq-length, --doc-stride and --max-query-length (the demo
    takes them from the front)."""
    from dtb_ext.graph_export.calibration import DEFAULT_CALIBRATION_WINDOWS

    parser.add_argument("--calibration-data", default=None, metavar="TRAIN.json",
                        help="int8 only: SQuAD-1.1-format training file to calibrate on (default: the shared "
                             "training subset beside a checkout); never the evaluation data")
    parser.add_argument("--calibration-windows", type=int, default=DEFAULT_CALIBRATION_WINDOWS,
                        help="int8 only: calibration windows")
    if not window_shape:
        return
    for option, default, text in (("--max-seq-length", 384, "tokens per window"),
                                  ("--doc-stride", 128, "tokens between the starts of consecutive windows"),
                                  ("--max-query-length", 64, "longer questions are skipped")):
        if not any(option in action.option_strings for action in parser._actions):
            parser.add_argument(option, type=int, default=default, help=f"{text} (int8 calibration windows)")


def export_model_dir(model_dir: str, output: str, format: str, precision: str, args: argparse.Namespace,
                     default_length_config: Any = None) -> str:
    """Load, patch and export the QA model of `model_dir` into `output` (tokenizer included); returns `output`."""
    from dtb_ext.graph_export.calibration import training_calibration_inputs
    from dtb_ext.graph_export.convert import export
    from dtb_ext.models.patching import patch
    from dtb_ext.qa.model import load_qa_model

    model, tokenizer = load_qa_model(model_dir)
    patch(model).eval()
    calibration = None
    if precision == "int8":
        calibration = training_calibration_inputs(
            tokenizer, model.config.num_hidden_layers, args.calibration_windows, args.calibration_data,
            max_seq_length=args.max_seq_length, doc_stride=args.doc_stride, max_query_length=args.max_query_length)
    export(model, output, format=format, precision=precision, calibration_inputs=calibration,
                   default_length_config=default_length_config)
    tokenizer.save_pretrained(output)
    return output


def run_export(args: argparse.Namespace) -> int:
    from dtb_ext.qa.cli import parse_length_option

    try:
        default = parse_length_option(args.length_config, args.length_ratios)
        export_model_dir(args.model, args.output, args.format, args.precision, args, default)
    except ValueError as error:
        print(f"dtb export: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"output": args.output, "format": args.format, "precision": args.precision}))
    return 0


def evaluate_in_runtime(args: argparse.Namespace, examples: list, length_config: Any,
                        precision: str) -> tuple[dict, Any]:
    """`dtb eval --runtime openvino|onnxruntime`: (result, features) of the exported graph of `args.model`.

    `args.model` is either an exported directory (dtb_export.json; its precision is the one it was exported
    with, and --precision must agree) or a model directory, exported first into a temporary directory."""
    from transformers import AutoTokenizer

    from dtb_ext.graph_export.convert import METADATA_FILE
    from dtb_ext.graph_export.evaluate import evaluate_exported
    from dtb_ext.graph_export.runtime import ExportedQA
    from dtb_ext.qa import prepare_eval_features

    format = EXPORT_FORMAT[args.runtime]
    if args.device != "cpu":
        raise ValueError(f"--runtime {args.runtime} runs on the CPU, got --device {args.device}")
    require_runtime_packages(args.runtime, (precision,), "--runtime torch runs without it")
    with tempfile.TemporaryDirectory(prefix="dtb-eval-") as scratch:
        if os.path.isfile(os.path.join(args.model, METADATA_FILE)):
            directory = args.model
        else:
            directory = export_model_dir(args.model, scratch, format, precision, args)
        graph = ExportedQA(directory)
        if graph.format != format or graph.precision != precision:
            raise ValueError(f"{args.model} holds a {graph.precision} {graph.format} export; --runtime {args.runtime} "
                             f"--precision {precision} needs a {precision} {format} one")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        features = prepare_eval_features(examples, tokenizer, args.max_seq_length, args.doc_stride,
                                         args.max_query_length)
        result = evaluate_exported(graph, features, length_config=length_config, batch_size=args.batch_size,
                                   padding=args.padding, progress=not args.no_progress,
                                   return_predictions=args.predictions is not None)
    result["runtime"] = args.runtime
    return result, features
