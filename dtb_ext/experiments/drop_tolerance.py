"""Drop tolerance of a QA model: F1 and real-length MACs at a fixed set of ratio configurations.

`python -m dtb_ext.experiments.drop_tolerance --model DIR` scores the model on a fixed sample of dev-a questions
(batch 32, dynamic padding) at full length and at each configuration of `DROP_CONFIGS`: the per-layer sensitivity
rows ("0.8 from layer k on": 20 % of the real tokens go at layer k and no more after it, so the row prices one
layer's drop) and a few schedules. MACs are analytic (dtb_ext.macs) at each feature's real length, summed over the
sample, and reported as full length / config. Prints a Markdown table and writes JSON with `--out`.

`--answer-oracle` replaces the model's significance source at every dropping layer by a fixed ranking: the
question segment first, then the context tokens by the full-length model's own answer distribution (start plus
end probabilities). No source can know the answer better, so the oracle's F1 bounds what a better scorer could
keep with this encoder; what the oracle still loses is the encoder's own intolerance to missing tokens.

`--keep-question` keeps the model's significance source but has every dropping layer keep the question segment
first (`keep_tokens_first`), the oracle's rule for the question alone: the part of the gap between the source and
the oracle that comes from dropping question tokens.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from torch import Tensor, nn

import dtb_ext
from dtb_ext.config import LengthConfig
from dtb_ext.data_paths import DEFAULT_MODEL_DIR
from dtb_ext.macs import macs_ratio
from dtb_ext.models.patching import dynamic_encoder
from dtb_ext.models.relevance import keep_tokens_first, rank_tokens_by
from dtb_ext.precision import PRECISION_CHOICES
from dtb_ext.qa.data import default_squad_file, load_squad
from dtb_ext.qa.evaluate import evaluate_qa
from dtb_ext.qa.features import prepare_eval_features
from dtb_ext.qa.model import load_qa_model
from dtb_ext.search.qa_objective import sample_questions
from dtb_ext.search.split import held_out_questions, read_split_part
from dtb_ext.train.distill import masked_softmax

# (label, per-layer keep ratios of each example's real input length); 6-layer models
DROP_CONFIGS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("0.8 from layer 1 on", (0.8,) * 6),
    ("0.8 from layer 2 on", (1, 0.8, 0.8, 0.8, 0.8, 0.8)),
    ("0.8 from layer 3 on", (1, 1, 0.8, 0.8, 0.8, 0.8)),
    ("0.8 from layer 4 on", (1, 1, 1, 0.8, 0.8, 0.8)),
    ("0.8 from layer 5 on", (1, 1, 1, 1, 0.8, 0.8)),
    ("0.8 at layer 6", (1, 1, 1, 1, 1, 0.8)),
    ("1,1,1,1,0.5,0.5", (1, 1, 1, 1, 0.5, 0.5)),
    ("0.95 .. 0.7 (-0.05 per layer)", (0.95, 0.9, 0.85, 0.8, 0.75, 0.7)),
    ("0.9, 0.8, 0.72, 0.65, 0.59, 0.53", (0.9, 0.8, 0.72, 0.65, 0.59, 0.53)),
    ("0.5 from layer 1 on", (0.5,) * 6),
)


# Added to the question segment's oracle scores: above any sum of two probabilities, so it is always kept first.
_QUESTION_BONUS = 3.0


class _ReducedRun(nn.Module):
    """A patched QA model and the length config its calls run under, with some other selection rule (subclasses)."""

    def __init__(self, model: nn.Module, length_config: Any) -> None:
        super().__init__()
        self.model = model
        self.length_config = length_config


class AnswerOracle(_ReducedRun):
    """A patched QA model that runs `length_config` with the tokens ranked by the full-length model's own answer
    distribution (see the module docstring): each call runs the model twice, at full length and then reduced."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Any:
        """[B, L0] inputs -> the model's outputs under the length config, selection by the oracle ranking."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        with dtb_ext.length_config(self.model, None):
            full = self.model(**inputs)
        real = attention_mask.bool()
        start = masked_softmax(full.start_logits, real)
        end = masked_softmax(full.end_logits, real)
        question = (token_type_ids == 0) & real
        scores = start + end + _QUESTION_BONUS * question.float()
        with dtb_ext.length_config(self.model, self.length_config), \
                rank_tokens_by(dynamic_encoder(self.model), scores):
            return self.model(**inputs)


class QuestionKept(_ReducedRun):
    """A patched QA model that runs `length_config` with its own significance source, every dropping layer keeping
    the question segment (token type 0) before any context token."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Any:
        """[B, L0] inputs -> the model's outputs under the length config, the question kept first."""
        question = (token_type_ids == 0) & attention_mask.bool()
        with dtb_ext.length_config(self.model, self.length_config), \
                keep_tokens_first(dynamic_encoder(self.model), question):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)


def drop_tolerance(model: Any, features: Any, configs: Sequence[tuple[str, Sequence[float]]] = DROP_CONFIGS,
                   batch_size: int = 32, progress: bool = True, answer_oracle: bool = False,
                   keep_question: bool = False) -> list[dict[str, Any]]:
    """Rows {"label", "ratios", "f1", "exact_match", "f1_drop_percent", "macs_ratio"}, full length first; with
    `answer_oracle`, the reduced configs select tokens by `AnswerOracle`'s ranking, with `keep_question` by the
    model's source with the question kept first (`QuestionKept`)."""
    if answer_oracle and keep_question:
        raise ValueError("answer_oracle already keeps the question first; choose one of answer_oracle and "
                         "keep_question")
    rows = []
    full_f1 = None
    for label, ratios in (("full length", None), *configs):
        config = None if ratios is None else LengthConfig.ratios(ratios)
        if (answer_oracle or keep_question) and config is not None:
            wrapper = AnswerOracle if answer_oracle else QuestionKept
            result = evaluate_qa(wrapper(model, config), features, batch_size=batch_size, progress=progress)
        else:
            result = evaluate_qa(model, features, length_config=config, batch_size=batch_size, progress=progress)
        full_f1 = result["f1"] if full_f1 is None else full_f1
        rows.append({"label": label, "ratios": None if ratios is None else list(ratios), "f1": result["f1"],
                     "exact_match": result["exact_match"], "f1_drop_percent": 100 * (1 - result["f1"] / full_f1),
                     "macs_ratio": macs_ratio(model.config, config, features.lengths)})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| ratios per layer | F1 | EM | F1 drop % | MACs x |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['f1']:.2f} | {row['exact_match']:.2f} | {row['f1_drop_percent']:.2f} "
                     f"| {row['macs_ratio']:.2f} |")
    return "\n".join(lines)


def _ratios(text: str) -> tuple[float, ...]:
    """`--config 1,1,0.8,...` as ratios; ValueError naming the text otherwise."""
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"--config takes comma-separated ratios such as 1,1,1,1,0.5,0.5, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="QA model directory (default: the bundled default model)")
    parser.add_argument("--data", default=None, help="SQuAD file (default: dev-a; with --part, the training file)")
    parser.add_argument("--part", default=None, choices=("search", "confirmation", "held-out"),
                        help="score one part of the held-out search split (dtb_ext/data/search_split.json), or all "
                             "of it (held-out: the certified search's questions), instead")
    parser.add_argument("--questions", type=int, default=None,
                        help="random questions of the file or part (seed --seed; default: 1000 of a file, all of a "
                             "part)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question sample")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="inference precision (dtb_ext.prepare_for_precision)")
    parser.add_argument("--significance", default=None, choices=("attention", "scorer", "attention+scorer"),
                        help="selection source (default: the model's own)")
    parser.add_argument("--answer-oracle", action="store_true",
                        help="select the tokens by the full-length model's own answer distribution (question first) "
                             "instead of the significance source: an upper bound for any source with this encoder")
    parser.add_argument("--keep-question", action="store_true",
                        help="select by the significance source, but keep the question segment first at every "
                             "dropping layer (what dropping question tokens costs the source)")
    parser.add_argument("--config", action="append", default=None, metavar="R1,...,R6",
                        help="score these per-layer ratios (repeatable) instead of the fixed rows, e.g. for a "
                             "training curve")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.answer_oracle and args.keep_question:
        parser.error("--answer-oracle already keeps the question first; give one of --answer-oracle and "
                     "--keep-question")
    try:
        configs = DROP_CONFIGS if args.config is None else [(text, _ratios(text)) for text in args.config]
        model, tokenizer = load_qa_model(args.model or DEFAULT_MODEL_DIR)
        dtb_ext.patch(model)
        if args.significance is not None:
            dtb_ext.set_significance(model, args.significance)
        model = dtb_ext.prepare_for_precision(model, dtb_ext.resolve_precision(args.precision))
        if args.part is None:
            data = args.data or default_squad_file("dev-a-v1.1.json")
            examples = sample_questions(load_squad(data), args.questions or 1000, args.seed)
        else:
            data = args.data or default_squad_file("train-subset-v1.1.json")
            pool = held_out_questions(data) if args.part == "held-out" else read_split_part(data, args.part)
            examples = sample_questions(pool, args.questions, args.seed)
        print(f"data: {data}" + (f" ({args.part} part)" if args.part else "") + f", {len(examples)} questions",
              file=sys.stderr)
    except ValueError as error:
        print(f"drop_tolerance: error: {error}", file=sys.stderr)
        return 2
    features = prepare_eval_features(examples, tokenizer)
    rows = drop_tolerance(model, features, configs, progress=not args.no_progress, answer_oracle=args.answer_oracle,
                          keep_question=args.keep_question)
    print(format_table(rows))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model or DEFAULT_MODEL_DIR, "data": data, "part": args.part,
                       "questions": len(examples),
                       "seed": args.seed, "precision": args.precision,
                       "significance": dynamic_encoder(model).significance,
                       "selection": ("answer oracle" if args.answer_oracle else
                                     "significance source, question kept first" if args.keep_question else
                                     "significance source"), "rows": rows},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
