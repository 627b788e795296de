"""`dtb search` (find the F1/cost Pareto front of length configurations) and `dtb pick` (choose one for a
budget, optionally saving it into a model)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser(
        "search",
        help="search length configurations for the F1/cost Pareto front",
        description="Search per-layer length configurations of a span-QA model on the held-out search articles "
        "of the SQuAD training subset; writes front.json/.csv/.png. Rerunning the same command resumes; several "
        "processes given the same --storage (and distinct --worker) share one search.",
    )
    search.add_argument("--model", default=None, help="saved QA model directory (default: dtb_ext/default_model)")
    search.add_argument("--data", default=None, help="SQuAD training file holding the search articles: the "
                        "official train-v1.1.json or any file with them (default: the training subset beside a "
                        "repository checkout, ../shared/data/squad/train-subset-v1.1.json; not shipped in the package)")
    search.add_argument("--questions", type=int, default=None,
                        help="fixed sample of search questions evaluated per config (default 400)")
    search.add_argument("--all-questions", action="store_true", help="evaluate every search question instead")
    search.add_argument("--sample-seed", type=int, default=0, help="seed of the question sample (default 0)")
    search.add_argument("--cost", choices=("macs", "latency"), default="macs",
                        help="cost to minimise: analytic MACs at real lengths, or latency measured here")
    search.add_argument("--strategy", choices=("evolution", "tpe", "nsga2"), default="evolution",
                        help="LAT evolutionary search, multi-objective TPE, or NSGA-II (default evolution)")
    search.add_argument("--evaluations", type=int, default=100, help="distinct configs to evaluate (default 100)")
    search.add_argument("--out", default="dtb-search", help="output folder (default ./dtb-search)")
    search.add_argument("--storage", default=None,
                        help="Optuna storage URL or SQLite file (default: OUT/study.db)")
    search.add_argument("--study-name", default="dtb-length-search")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--worker", type=int, default=0, help="index of this process among parallel workers")
    search.add_argument("--min-length", type=int, default=None, help="shortest length a layer may keep (default 32)")
    search.add_argument("--max-seq-length", type=int, default=384)
    search.add_argument("--doc-stride", type=int, default=128)
    search.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default 32)")
    search.add_argument("--latency-batch-size", type=int, default=1)
    search.add_argument("--latency-sample", type=int, default=16, help="features timed per config (default 16)")
    search.add_argument("--latency-repeats", type=int, default=5)
    search.add_argument("--population-size", type=int, default=10)
    search.add_argument("--mutation-size", type=int, default=30)
    search.add_argument("--crossover-size", type=int, default=30)
    search.add_argument("--mutation-prob", type=float, default=0.5)
    search.add_argument("--reevaluate-on", default=None, metavar="DEV.json",
                        help="score the final front again on this SQuAD file (e.g. dev-a) and report both")
    search.add_argument("--reevaluate-questions", type=int, default=None,
                        help="fixed sample of re-evaluation questions (default: all)")
    search.add_argument("--device", default="cpu", help="torch device to evaluate on (default cpu)")
    search.add_argument("--no-progress", action="store_true")
    search.set_defaults(run=run_search_command)

    pick = subparsers.add_parser(
        "pick",
        help="pick the best searched length configuration for a budget",
        description="Prints one JSON object: the chosen length_config with its search-split f1 and speedup.",
    )
    budget = pick.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-f1-drop", type=float, help="F1 points (absolute) below the full-length point")
    budget.add_argument("--max-f1-drop-percent", type=float, help="percent of the full-length F1")
    budget.add_argument("--latency-budget-ms", type=float, help="measured ms per batch (latency-searched fronts)")
    budget.add_argument("--min-speedup", type=float, help="speedup under the front's cost model")
    pick.add_argument("--front", default=None, help="front JSON (default: the default model's shipped front)")
    pick.add_argument("--save-to", default=None, metavar="MODEL_DIR",
                      help="also store the choice in MODEL_DIR/config.json (applied by dtb_ext.patch)")
    pick.set_defaults(run=run_pick_command)


def _fail(command: str, error: Exception) -> int:
    print(f"dtb {command}: error: {error}", file=sys.stderr)
    return 2


def run_search_command(args: argparse.Namespace) -> int:
    import optuna

    from dtb_ext.search.qa_objective import LatencySettings
    from dtb_ext.search.qa_search import DEFAULT_MIN_LENGTH, DEFAULT_QUESTIONS, search_lengths
    from dtb_ext.search.strategies import EvolutionSettings

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    try:
        if args.all_questions and args.questions is not None:
            raise ValueError("give --questions or --all-questions, not both")
        os.makedirs(args.out, exist_ok=True)
        front = search_lengths(
            args.model,
            data=args.data,
            questions=None if args.all_questions else (args.questions or DEFAULT_QUESTIONS),
            sample_seed=args.sample_seed,
            cost_model=args.cost,
            strategy=args.strategy,
            n_evaluations=args.evaluations,
            storage=args.storage or os.path.join(args.out, "study.db"),
            study_name=args.study_name,
            seed=args.seed,
            worker=args.worker,
            min_length=args.min_length if args.min_length is not None else DEFAULT_MIN_LENGTH,
            max_seq_length=args.max_seq_length,
            doc_stride=args.doc_stride,
            batch_size=args.batch_size,
            latency=LatencySettings(args.latency_batch_size, args.latency_sample, repeats=args.latency_repeats),
            evolution=EvolutionSettings(args.population_size, args.mutation_size, args.crossover_size,
                                        args.mutation_prob),
            reevaluate_on=args.reevaluate_on,
            reevaluate_questions=args.reevaluate_questions,
            out_dir=args.out,
            device=args.device,
            progress=not args.no_progress,
        )
    except ValueError as error:
        return _fail("search", error)
    print(format_front(front))
    print(f"wrote {os.path.join(args.out, 'front.json')}, front.csv, front.png")
    return 0


def format_front(front) -> str:
    """The front as a text table: search-split scores, and dev scores when re-evaluated."""
    dev = front.reevaluated_on is not None
    header = f"{'speedup':>8} {'F1':>7} {'EM':>7}" + (f" {'dev F1':>7} {'dev EM':>7}" if dev else "") + "  length config"
    lines = [f"Pareto front ({front.cost_model}; F1/EM on the search split"
             + (f", dev on {front.reevaluated_on.get('data_file')}" if dev else "") + "):", header]
    rows = [front.full_length] + [p for p in front.front if p != front.full_length]
    for point in sorted(rows, key=lambda p: p.speedup):
        line = f"{point.speedup:8.3f} {point.f1:7.2f} {point.exact_match:7.2f}"
        if dev:
            line += "".join(f" {v:7.2f}" if v is not None else f" {'-':>7}" for v in (point.dev_f1, point.dev_exact_match))
        marker = "  (full length)" if point == front.full_length else ""
        lines.append(f"{line}  {list(point.length_config)}{marker}")
    return "\n".join(lines)


def run_pick_command(args: argparse.Namespace) -> int:
    from dtb_ext.search.model_config import save_config_to_model
    from dtb_ext.search.pick import pick

    try:
        point = pick(
            args.front,
            max_f1_drop=args.max_f1_drop,
            max_f1_drop_percent=args.max_f1_drop_percent,
            latency_budget_ms=args.latency_budget_ms,
            min_speedup=args.min_speedup,
        )
        if args.save_to is not None:
            save_config_to_model(args.save_to, point.length_config)
    except ValueError as error:
        return _fail("pick", error)
    print(json.dumps(point.to_json()))
    return 0
