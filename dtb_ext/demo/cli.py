"""`dtb demo`: the command line of `run_demo`."""
from __future__ import annotations

import argparse
import sys

from dtb_ext.demo.configs import DEFAULT_MIN_F1_FRACTION
from dtb_ext.demo.report import format_table
from dtb_ext.demo.run import DEFAULT_LATENCY_FEATURES, DEFAULT_OUT, DEFAULT_QUESTIONS, DEFAULT_RUNTIMES, run_demo
from dtb_ext.graph_export.cli import add_calibration_options
from dtb_ext.graph_export.runtimes import RUNTIMES, RUNTIMES_EXTRA
from dtb_ext.help_format import HelpFormatter
from dtb_ext.precision import PRECISION_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the default QA model on a dev sample: F1/EM, latency and speedup at full length and front picks",
        description="Runs a span-QA model (default: the bundled dtb_ext/default_model) on a fixed sample of SQuAD "
        "dev-a at full length and at the configs its front (front.json from `dtb search`) offers within 1%% and "
        "3%% of the full-length F1 and for a minimum F1, in fp32 and in --precision, in PyTorch and, with --runtime, "
        "as one exported graph in OpenVINO or ONNX Runtime; prints F1, EM, batch-1 latency with dynamic padding and "
        "padded to 384, speedups and MACs ratios; writes demo.png and demo.json.",
        formatter_class=HelpFormatter,
    )
    demo.add_argument("--model", default=None, help="QA model directory (default: dtb_ext/default_model)")
    demo.add_argument("--front", default=None, help="front JSON from `dtb search` (default: MODEL/front.json)")
    demo.add_argument("--data", default=None,
                      help="SQuAD file (default: dev-a, shipped in the package as dtb_ext/data/squad/dev-a-v1.1.json)")
    demo.add_argument("--questions", type=int, default=DEFAULT_QUESTIONS, help="questions in the fixed sample")
    demo.add_argument("--full", action="store_true", help="score every question of the file (4,961 for dev-a); "
                      "latency still uses --latency-features features")
    demo.add_argument("--sample-seed", type=int, default=0, help="seed of the question sample")
    demo.add_argument("--latency-features", type=int, default=None,
                      help=f"features timed at batch 1 per config and padding protocol (default: "
                           f"{DEFAULT_LATENCY_FEATURES}, or every feature of a smaller sample)")
    demo.add_argument("--min-f1", type=float, default=None,
                      help="the last pick is the fastest config with search-split F1 at least this "
                           f"(default: {DEFAULT_MIN_F1_FRACTION * 100:g}%% of the full-length F1)")
    demo.add_argument("--batch-size", type=int, default=32, help="batch size of the F1/EM passes")
    demo.add_argument("--out", default=DEFAULT_OUT, help="folder for demo.png and demo.json")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                      help="the precision measured beside fp32: bf16, int8 (CPU), fp32 (fp32 alone) or auto (the "
                           "fastest this machine runs natively, printed)")
    demo.add_argument("--runtime", type=runtime_list, default=",".join(DEFAULT_RUNTIMES), metavar="R1,R2,...",
                      help=f"where the model runs, comma-separated, of {', '.join(RUNTIMES)}: torch (the patched "
                           "model), openvino and onnxruntime (its exported graph, one compiled graph per precision "
                           f"for every config; CPU; needs {RUNTIMES_EXTRA}; exporting takes tens of seconds). "
                           "ONNX Runtime runs fp32 only; speedups are against the first runtime's fp32 full length")
    add_calibration_options(demo, window_shape=False)
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    try:
        result = run_demo(
            args.model, args.front, args.data, questions=None if args.full else args.questions,
            sample_seed=args.sample_seed, latency_features=args.latency_features, min_f1=args.min_f1,
            batch_size=args.batch_size, out_dir=args.out, device=args.device, progress=not args.no_progress,
            precision=args.precision, runtimes=args.runtime, calibration_data=args.calibration_data,
            calibration_windows=args.calibration_windows,
        )
    except ValueError as error:
        print(f"dtb demo: error: {error}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"\nplot: {result.plot_path}\nresults: {result.json_path}\n({result.settings['seconds']:.0f} s in all)")
    return 0


def runtime_list(text: str) -> tuple[str, ...]:
    """`--runtime`: comma-separated runtime names, each once, in RUNTIMES' order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNTIMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(RUNTIMES)}, got {text!r}")
    return tuple(name for name in RUNTIMES if name in names)
