"""The training recipe of TrainOptions: which trainer runs (plain fine-tuning, distillation, LengthDrop) with which
validated settings. Kept apart from the trainers it chooses among, so that they import nothing back from here.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from torch import nn

from dtb_ext.models.patching import dynamic_encoder, patch
from dtb_ext.models.relevance import ATTENTION, SIGNIFICANCE_ATTRIBUTE, check_source
from dtb_ext.train.distill import DistillationTrainer, Distiller, DistillSettings, load_teacher, parse_layer_map
from dtb_ext.train.lengthdrop import LengthDropSettings, LengthDropTrainer, RelevanceSettings
from dtb_ext.train.options import TrainOptions
from dtb_ext.train.trainer import QATrainer

logger = logging.getLogger(__name__)


def relevance_settings(options: TrainOptions) -> RelevanceSettings | None:
    """The validated RelevanceSettings of TrainOptions, or None without --relevance-scorer."""
    if options.relevance_scorer is None:
        if options.relevance_only:
            raise ValueError("--relevance-only trains the relevance scorer: give --relevance-scorer too")
        return None
    return RelevanceSettings(options.relevance_scorer, options.relevance_weight, options.relevance_temperature,
                             options.relevance_question_share, options.relevance_only, options.relevance_inner_size)


def recipe_settings(options: TrainOptions) -> tuple[LengthDropSettings | None, DistillSettings | None]:
    """The validated LengthDrop and distillation settings of TrainOptions (None where off); ValueError for an
    option that would be ignored, such as --num-sandwich without --length-drop."""
    defaults = TrainOptions(output="")
    length_names = ("num_sandwich", "length_drop_ratio_bound", "layer_drop", "full_loss_weight", "relevance_scorer",
                    "relevance_weight", "relevance_temperature", "relevance_question_share", "relevance_only",
                    "relevance_inner_size")
    kd_names = ("kd_temperature", "kd_alpha", "kd_hidden_weight", "kd_attention_weight", "kd_layer_map")
    for enabled, names, switch in ((options.length_drop, length_names, "--length-drop"),
                                   (options.teacher is not None, kd_names, "--teacher")):
        changed = [name for name in names if getattr(options, name) != getattr(defaults, name)]
        if changed and not enabled:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise ValueError(f"{flags} apply only with {switch}, which was not given")
    if options.teacher is not None and not os.path.isfile(os.path.join(options.teacher, "config.json")):
        raise ValueError("--teacher expects a question-answering model directory with a config.json, got "
                         f"{options.teacher!r}")
    length_drop = None
    if options.length_drop:
        length_drop = LengthDropSettings(options.num_sandwich, options.length_drop_ratio_bound, options.layer_drop,
                                         options.full_loss_weight)
        relevance_settings(options)
    distill = None
    if options.teacher is not None:
        layer_map = None if options.kd_layer_map is None else parse_layer_map(options.kd_layer_map)
        distill = DistillSettings(options.kd_temperature, options.kd_alpha, options.kd_hidden_weight,
                                  options.kd_attention_weight, layer_map)
    return length_drop, distill


def trainer_recipe(options: TrainOptions, model: nn.Module) -> tuple[type[QATrainer], dict[str, Any]]:
    """The trainer class and its extra keyword arguments for TrainOptions: QATrainer for plain fine-tuning,
    DistillationTrainer with a teacher, LengthDropTrainer (patching `model`) with --length-drop."""
    length_drop, distill = recipe_settings(options)
    extras: dict[str, Any] = {}
    if distill is not None:
        teacher = load_teacher(options.teacher, with_attentions=distill.attention_weight > 0)
        extras["distiller"] = Distiller(teacher, model, distill)
    if length_drop is not None:
        patch(model)
        return LengthDropTrainer, {**extras, "length_drop": length_drop, "relevance": relevance_settings(options)}
    if check_source(getattr(model.config, SIGNIFICANCE_ATTRIBUTE, None) or ATTENTION) != ATTENTION:
        # A model whose config names a relevance scorer (--init-from a dtb model) is patched so that the scorer's
        # weights are loaded and exported with it; otherwise the export would name a scorer it does not hold.
        # Plain fine-tuning runs at full length, where the scorer is never called, so it is not retrained.
        patch(model)
        for parameter in dynamic_encoder(model).relevance.parameters():
            parameter.requires_grad_(False)
        logger.warning("the relevance scorer of %s is kept as it is: plain fine-tuning does not train it (retrain "
                       "it with --length-drop --relevance-scorer %s --relevance-only)", model.config._name_or_path,
                       getattr(model.config, SIGNIFICANCE_ATTRIBUTE))
    return (DistillationTrainer if distill is not None else QATrainer), extras
