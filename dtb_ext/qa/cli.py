"""`dtb score` (official SQuAD 1.1 EM/F1 of a predictions file) and `dtb eval` (run a QA model on a SQuAD file)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from dtb_ext.help_format import HelpFormatter
from dtb_ext.data_paths import DEFAULT_MODEL_DIR, DEV_FILE
from dtb_ext.jsonfile import read_json_file
from dtb_ext.precision import PRECISION_CHOICES
from dtb_ext.qa.model import load_qa_model


def register(subparsers: argparse._SubParsersAction) -> None:
    score = subparsers.add_parser(
        "score",
        help="official SQuAD 1.1 exact match and F1 of a predictions file",
        description="Score PREDICTIONS.json ({question id: answer text}) against the gold answers of DATA.json "
                    "with the official SQuAD 1.1 metric. Prints one JSON object {exact_match, f1, n} (percentages; "
                    "n = questions in DATA.json; a question without a prediction scores 0).",
    )
    score.add_argument("data", metavar="DATA.json", help="SQuAD-1.1-format file with the gold answers")
    score.add_argument("predictions", metavar="PREDICTIONS.json", help="JSON object mapping question id to answer text")
    score.set_defaults(run=run_score)

    evaluate = subparsers.add_parser(
        "eval",
        help="evaluate a question-answering model on a SQuAD file",
        description="Run a span-QA model over a SQuAD-1.1-format file (sliding windows, best span per question) "
                    "and print one JSON object {exact_match, f1, n, seconds}; seconds is the model and "
                    "post-processing wall time, excluding loading and tokenisation.",
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("--data", default=None, metavar="DATA.json",
                          help="SQuAD-1.1-format file to evaluate on (default: dev-a, shipped in the package as "
                               "dtb_ext/data/squad/dev-a-v1.1.json)")
    evaluate.add_argument("--model", default=DEFAULT_MODEL_DIR,
                          help="model directory (config, tokenizer, safetensors weights)")
    lengths = evaluate.add_mutually_exclusive_group()
    lengths.add_argument("--length-config", default=None, metavar="L1,L2,...",
                         help="tokens kept per layer, one non-increasing integer per layer (default: full length)")
    lengths.add_argument("--length-ratios", default=None, metavar="R1,R2,...",
                         help="fraction of each example's input length kept per layer, non-increasing, in (0, 1]")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate the first N questions only")
    evaluate.add_argument("--batch-size", type=int, default=32, help="features per forward pass")
    evaluate.add_argument("--padding", choices=("dynamic", "max_length"), default="dynamic",
                          help="dynamic: batches of similar length padded to their longest; max_length: every "
                               "feature padded to --max-seq-length (the paper's protocol)")
    evaluate.add_argument("--predictions", default=None, metavar="OUT.json",
                          help="also write {question id: answer text} here")
    evaluate.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu or cuda")
    evaluate.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                          help="numeric precision: fp32; bf16 weights and activations; int8 Linear layers (CPU); "
                               "auto = bf16 where this machine runs it natively, else fp32 (printed)")
    evaluate.add_argument("--max-seq-length", type=int, default=384, help="tokens per feature window")
    evaluate.add_argument("--doc-stride", type=int, default=128,
                          help="tokens between the starts of consecutive windows")
    evaluate.add_argument("--max-query-length", type=int, default=64,
                          help="longer questions are skipped (counted, scored 0)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=run_eval)


def _fail(command: str, error: Exception) -> int:
    print(f"dtb {command}: error: {error}", file=sys.stderr)
    return 2


def load_predictions(path: str) -> dict[str, str]:
    """Read a predictions file: a JSON object mapping question id to answer text."""
    predictions = read_json_file(path, "predictions file", "a JSON object {question id: answer text}")
    if not isinstance(predictions, dict) or not all(isinstance(value, str) for value in predictions.values()):
        raise ValueError(f"{path}: expected a JSON object mapping question id to answer text")
    return predictions


def run_score(args: argparse.Namespace) -> int:
    from dtb_ext.qa.metric import squad_metrics

    try:
        result = squad_metrics(args.data, load_predictions(args.predictions))
    except ValueError as error:
        return _fail("score", error)
    print(json.dumps(result))
    return 0


def parse_length_option(length_config: str | None, length_ratios: str | None) -> Any:
    """`--length-config 300,250` -> [300, 250]; `--length-ratios 0.9,0.8` -> LengthConfig.ratios; else None."""
    if length_config is not None:
        try:
            return [int(value) for value in length_config.split(",")]
        except ValueError:
            raise ValueError(
                f"--length-config expects comma-separated integers such as 300,250,200, got {length_config!r}"
            ) from None
    if length_ratios is not None:
        try:
            ratios = [float(value) for value in length_ratios.split(",")]
        except ValueError:
            raise ValueError(
                f"--length-ratios expects comma-separated fractions such as 0.9,0.8,0.7, got {length_ratios!r}"
            ) from None
        from dtb_ext.config import LengthConfig

        return LengthConfig.ratios(ratios)
    return None


def run_eval(args: argparse.Namespace, evaluate: Callable[..., tuple[dict[str, Any], Any]] | None = None) -> int:
    """`dtb eval`. `evaluate(args, examples, length_config, precision) -> (result, features)` runs the model:
    the PyTorch model by default (`evaluate_with_torch`); `dtb eval --runtime openvino|onnxruntime` passes the
    exported graph's (dtb_ext/graph_export/cli.py, which adds that option to this command)."""
    from dtb_ext.precision import resolve_precision
    from dtb_ext.qa import load_squad

    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be a positive number of questions, got {args.limit}")
        length_config = parse_length_option(args.length_config, args.length_ratios)
        data = args.data or DEV_FILE
        print(f"dtb eval: data {data}", file=sys.stderr)
        examples = load_squad(data)
        if args.limit is not None:
            examples = examples[:args.limit]
        precision = resolve_precision(args.precision, args.device)
        result, features = (evaluate or evaluate_with_torch)(args, examples, length_config, precision)
    except ValueError as error:
        return _fail("eval", error)
    if args.predictions is not None:
        with open(args.predictions, "w", encoding="utf-8") as handle:
            json.dump(result.pop("predictions"), handle, indent=1, ensure_ascii=False)
    if features.skips.total:
        result["skipped"] = dict(features.skips.counts)
    print(json.dumps(result))
    return 0


def evaluate_with_torch(args: argparse.Namespace, examples: list, length_config: Any,
                        precision: str) -> tuple[dict[str, Any], Any]:
    """(result, features) of `dtb eval`'s PyTorch model at `precision` over `examples`."""
    from dtb_ext.precision import prepare_for_precision
    from dtb_ext.qa import evaluate_qa, prepare_eval_features

    model, tokenizer = load_qa_model(args.model, args.device)
    model = prepare_for_precision(model, precision)
    features = prepare_eval_features(examples, tokenizer, args.max_seq_length, args.doc_stride, args.max_query_length)
    result = evaluate_qa(model, features, length_config=length_config, batch_size=args.batch_size,
                         padding=args.padding, progress=not args.no_progress,
                         return_predictions=args.predictions is not None)
    return result, features
