"""CPU-seconds of one search evaluation, to plan a search: `python -m dtb_ext.search.measure_cost [--model DIR]
[--precision fp32 bf16]` scores the search part once at full length and once at a ratio config per precision
and prints the CPU time (user + system, this process) and the wall time of each. Run it on a quiet machine;
OMP_NUM_THREADS sets the threads."""
from __future__ import annotations

import argparse
import resource
import time

from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.qa.data import default_squad_file
from dtb_ext.qa.features import prepare_eval_features
from dtb_ext.qa.model import load_qa_model
from dtb_ext.search.qa_objective import QAEvaluator
from dtb_ext.search.qa_search import prepare_search_model
from dtb_ext.search.split import read_split_part


def ratio_config(num_layers: int) -> tuple[float, ...]:
    """0.9, 0.8, ... per layer (floored at 0.1): about two thirds of full-length MACs on six layers."""
    return tuple(max(0.1, round(0.9 - 0.1 * layer, 2)) for layer in range(num_layers))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR,
                        help="QA model directory (default: dtb_ext/default_model)")
    parser.add_argument("--data", default=default_squad_file("train-subset-v1.1.json"))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args(argv)
    _, tokenizer = load_qa_model(args.model)
    examples = read_split_part(args.data, "search")
    features = prepare_eval_features(examples, tokenizer)
    print(f"search part: {len(examples)} questions, {len(features)} features, mean length "
          f"{features.lengths.mean():.1f}")
    for precision in args.precision:
        model, _, resolved = prepare_search_model(load_qa_model(args.model)[0], True, precision)
        evaluator = QAEvaluator(model, features, "macs", space="ratios")
        num_layers = model.config.num_hidden_layers
        for config in ((1.0,) * num_layers, ratio_config(num_layers)):
            cpu, wall = _cpu_seconds(), time.perf_counter()
            evaluation = evaluator(config)
            print(f"{resolved} {list(config)}: F1 {evaluation.f1:.2f}, {_cpu_seconds() - cpu:.1f} CPU-s, "
                  f"{time.perf_counter() - wall:.1f} s wall", flush=True)


if __name__ == "__main__":
    main()
