"""`dtb search` (find the F1/cost Pareto front of length configurations) and `dtb pick` (choose one for a
budget, optionally saving it into a model)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from dtb_ext.help_format import HelpFormatter
    from dtb_ext.precision import PRECISION_CHOICES
    from dtb_ext.search.paired import DEFAULT_CONFIDENCE

    search = subparsers.add_parser(
        "search",
        help="search length configurations for the F1/cost Pareto front",
        description="Search per-layer length configurations of a span-QA model for the F1/cost Pareto front. "
        "The default protocol, certified: every config is scored on the same 1,085 questions of 3 SQuAD training "
        "articles the default model never trains on (dtb_ext/data/search_articles.json); the front is then "
        "re-scored on dev-a's confirmation part (2,574 questions, 10 whole articles, dtb_ext/data/dev_split.json), "
        "where `dtb pick` takes the fastest config whose paired-bootstrap upper bound on the F1 drop is within the "
        "budget, and reported on dev-a's report part (the other 14 articles, 2,387 questions), where nothing is "
        "chosen. --protocol held-out searches on 547 of the held-out questions and confirms on the other 538 "
        "(too few to certify a drop within 1 %). Writes front.json/.csv/.png. Rerunning the same command "
        "resumes; several processes or machines given the same --storage (and distinct --worker) share one "
        "search.",
        formatter_class=HelpFormatter,
    )
    search.add_argument("--model", default=None, help="saved QA model directory (default: dtb_ext/default_model)")
    search.add_argument("--data", default=None, help="SQuAD training file holding the held-out split's articles: "
                        "the official train-v1.1.json or any file with them (default: the training subset beside a "
                        "repository checkout, ../shared/data/squad/train-subset-v1.1.json; not shipped in the package)")
    search.add_argument("--space", choices=("ratios", "absolute"), default="ratios",
                        help="ratios: fractions of each input's length per layer, on a 1/100 grid (what LengthDrop "
                        "trains); absolute: tokens per layer")
    search.add_argument("--min-ratio", type=float, default=None,
                        help="smallest ratio a layer may keep, --space ratios (default 0.1)")
    search.add_argument("--min-length", type=int, default=None,
                        help="shortest length a layer may keep, --space absolute (default 32)")
    search.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="precision of every evaluation and latency measurement; auto: bf16 where the "
                        "machine runs it natively, else fp32")
    search.add_argument("--protocol", choices=("certified", "held-out"), default="certified",
                        help="which questions search, decide and report (see above)")
    search.add_argument("--questions", type=int, default=None,
                        help="a fixed sample of this many search questions per config (default: all; 1,085 "
                        "certified, 547 held-out)")
    search.add_argument("--all-questions", action="store_true",
                        help="evaluate every search-part question (the default; for older scripts)")
    search.add_argument("--sample-seed", type=int, default=0, help="seed of the question samples")
    search.add_argument("--cost", choices=("macs", "latency"), default="macs",
                        help="cost to minimise: analytic MACs at real lengths, or latency measured here")
    search.add_argument("--strategy", choices=("evolution", "tpe", "nsga2"), default="evolution",
                        help="LAT evolutionary search, multi-objective TPE, or NSGA-II")
    search.add_argument("--evaluations", type=int, default=100, help="distinct configs to evaluate")
    search.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                        help="one-sided confidence of the paired-bootstrap upper bound on the F1 drop that "
                        "`dtb pick` holds against a budget")
    search.add_argument("--no-confirmation", action="store_true",
                        help="--protocol held-out: skip re-scoring the front on the confirmation part (pick then "
                        "decides on the search part, where the winner's curse biases it)")
    search.add_argument("--confirmation-questions", type=int, default=None,
                        help="a fixed sample of this many confirmation questions (default: all; 2,574 certified, "
                        "538 held-out)")
    search.add_argument("--no-report", action="store_true",
                        help="--protocol certified: skip scoring the front on dev-a's report part")
    search.add_argument("--out", default="dtb-search", help="output folder")
    search.add_argument("--storage", default=None,
                        help="Optuna storage URL (e.g. postgresql://user@host/db, shared by several machines) "
                        "or SQLite file (default: OUT/study.db)")
    search.add_argument("--study-name", default="dtb-length-search")
    search.add_argument("--seed", type=int, default=0, help="seed of the search strategy")
    search.add_argument("--worker", type=int, default=0, help="index of this process among parallel workers")
    search.add_argument("--max-seq-length", type=int, default=384)
    search.add_argument("--doc-stride", type=int, default=128)
    search.add_argument("--batch-size", type=int, default=32, help="evaluation batch size")
    search.add_argument("--latency-batch-size", type=int, default=1)
    search.add_argument("--latency-sample", type=int, default=16, help="features timed per config")
    search.add_argument("--latency-repeats", type=int, default=5)
    search.add_argument("--seed-config", action="append", default=[], metavar="R1,R2,...",
                        help="a config evaluated first, before the strategy's own (repeatable), in the space's "
                             "terms: per-layer ratios, or tokens with --space absolute; e.g. 1,1,1,0.7,0.5,0.3 "
                             "(LAT's initial population always drops from the first layer on)")
    search.add_argument("--population-size", type=int, default=10)
    search.add_argument("--mutation-size", type=int, default=30)
    search.add_argument("--crossover-size", type=int, default=30)
    search.add_argument("--mutation-prob", type=float, default=0.5)
    search.add_argument("--reevaluate-on", default=None, metavar="DEV.json",
                        help="--protocol held-out: also score the final front on this SQuAD file (e.g. dev-a), as "
                        "a report: never used by pick")
    search.add_argument("--report-questions", "--reevaluate-questions", dest="reevaluate_questions", type=int,
                        metavar="N", default=None, help="a fixed sample of this many report questions (default: all)")
    search.add_argument("--device", default="cpu", help="torch device to evaluate on")
    search.add_argument("--no-progress", action="store_true")
    search.set_defaults(run=run_search_command)

    pick = subparsers.add_parser(
        "pick",
        help="pick the best searched length configuration for a budget",
        description="Prints one JSON object: the chosen length_config (with its space: absolute lengths or "
        "ratios), its search-part f1 and speedup, its confirmation-part scores and drop intervals, and "
        "'decision': the rule, the part it was decided on, and the F1 drop there with its bootstrap interval "
        "(points and percent of full-length F1). On fronts with per-question scores an F1-drop budget is met "
        "when the interval's upper end (one-sided, the front's confidence) is within it.",
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


def _seed_config(text: str, space: str) -> tuple[float, ...] | tuple[int, ...]:
    """`--seed-config R1,R2,...` as numbers: ratios (floats) in the ratio space, token counts (ints) in the absolute
    one; whether it belongs to the space is checked by the search."""
    kind, name = (float, "ratios") if space == "ratios" else (int, "token counts")
    try:
        return tuple(kind(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"--seed-config takes comma-separated {name}, got {text!r}") from None


def run_search_command(args: argparse.Namespace) -> int:
    import optuna

    from dtb_ext.search.paired import BootstrapSettings
    from dtb_ext.search.qa_objective import LatencySettings
    from dtb_ext.search.qa_search import search_lengths
    from dtb_ext.search.strategies import EvolutionSettings

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    try:
        if args.all_questions and args.questions is not None:
            raise ValueError("give --questions or --all-questions, not both")
        if args.no_confirmation and args.confirmation_questions is not None:
            raise ValueError("give --no-confirmation or --confirmation-questions, not both")
        os.makedirs(args.out, exist_ok=True)
        front = search_lengths(
            args.model,
            data=args.data,
            questions=args.questions,
            sample_seed=args.sample_seed,
            space=args.space,
            min_length=args.min_length,
            min_ratio=args.min_ratio,
            precision=args.precision,
            cost_model=args.cost,
            strategy=args.strategy,
            n_evaluations=args.evaluations,
            storage=args.storage or os.path.join(args.out, "study.db"),
            study_name=args.study_name,
            seed=args.seed,
            worker=args.worker,
            max_seq_length=args.max_seq_length,
            doc_stride=args.doc_stride,
            batch_size=args.batch_size,
            latency=LatencySettings(args.latency_batch_size, args.latency_sample, repeats=args.latency_repeats),
            evolution=EvolutionSettings(args.population_size, args.mutation_size, args.crossover_size,
                                        args.mutation_prob),
            bootstrap=BootstrapSettings(confidence=args.confidence),
            seed_configs=[_seed_config(text, args.space) for text in args.seed_config],
            protocol=args.protocol,
            confirm=not args.no_confirmation,
            confirmation_questions=args.confirmation_questions,
            report=not args.no_report,
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


def _drop_cell(drop, width: int = 22) -> str:
    """'0.84 [-0.21, 1.90]': the drop in percent of full-length F1 with its bootstrap interval."""
    percent = None if drop is None else drop.percent()
    if percent is None:
        return f"{'-':>{width}}"
    estimate, low, high = percent
    return f"{f'{estimate:.2f} [{low:.2f}, {high:.2f}]':>{width}}"


def _config_text(point) -> str:
    if point.space == "ratios":
        return "[" + ", ".join(f"{v:.2f}" for v in point.length_config.values) + "]"
    return str(list(point.length_config.values))


def format_front(front) -> str:
    """The front as a text table: search-part scores with the paired drop interval (percent of full-length F1),
    the confirmation part's, and dev scores when re-evaluated."""
    from dtb_ext.search.pick import decision_part

    dev = front.reevaluated_on is not None
    confirmed = front.confirmed_on is not None
    paired = front.rule is not None
    if paired:
        confidence = front.rule["confidence"]
        rule = (f"pick rule: {front.rule['name']}, one-sided {100 * confidence:g} % "
                f"(interval: {100 * (1 - confidence):g}-{100 * confidence:g} % quantiles), on the "
                f"{decision_part(front)} part")
    else:
        rule = "pick rule: point estimates (this front has no per-question scores)"
    header = f"{'speedup':>8} {'F1':>7} {'EM':>7}"
    if paired:
        header += f" {'drop % [interval]':>22}"
    if confirmed:
        header += f" {'conf F1':>7} {'conf drop % [interval]':>22}"
    if dev:
        header += f" {'dev F1':>7} {'dev EM':>7}"
    precision = front.identity.get("precision")
    lines = [
        f"Pareto front ({front.cost_model}, {front.space} space"
        + (f", {precision}" if precision else "") + "; F1/EM on the search part"
        + (", conf on the confirmation part" if confirmed else "")
        + (f", dev on {front.reevaluated_on.get('data_file')}" if dev else "") + "):",
        rule,
        header + "  length config",
    ]
    rows = [front.full_length] + [p for p in front.front if p != front.full_length]
    for point in sorted(rows, key=lambda p: p.speedup):
        line = f"{point.speedup:8.3f} {point.f1:7.2f} {point.exact_match:7.2f}"
        if paired:
            line += " " + _drop_cell(point.drop)
        if confirmed:
            scores = point.confirmation
            line += f" {scores.f1:7.2f} {_drop_cell(scores.drop)}" if scores else f" {'-':>7} {_drop_cell(None)}"
        if dev:
            line += "".join(
                f" {v:7.2f}" if v is not None else f" {'-':>7}" for v in (point.dev_f1, point.dev_exact_match)
            )
        marker = "  (full length)" if point == front.full_length else ""
        lines.append(f"{line}  {_config_text(point)}{marker}")
    return "\n".join(lines)


def run_pick_command(args: argparse.Namespace) -> int:
    from dtb_ext.models.saved_config import save_config_to_model
    from dtb_ext.search.pick import as_front, describe_choice, pick

    try:
        front = as_front(args.front)
        point = pick(
            front,
            max_f1_drop=args.max_f1_drop,
            max_f1_drop_percent=args.max_f1_drop_percent,
            latency_budget_ms=args.latency_budget_ms,
            min_speedup=args.min_speedup,
        )
        if args.save_to is not None:
            save_config_to_model(args.save_to, point.length_config)
    except ValueError as error:
        return _fail("pick", error)
    print(json.dumps({**point.to_json(), "decision": describe_choice(front, point)}))
    return 0
