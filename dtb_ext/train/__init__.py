"""Training span-QA models: standard fine-tuning on Hugging Face Trainer, with a pluggable loss.

Names are imported on first use, so `dtb --help` does not load transformers."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "QATrainer": "dtb_ext.train.finetune",
    "export_model": "dtb_ext.train.finetune",
    "run_training": "dtb_ext.train.finetune",
    "TrainOptions": "dtb_ext.train.options",
    "LengthDropTrainer": "dtb_ext.train.lengthdrop",
    "LengthDropSettings": "dtb_ext.train.lengthdrop",
    "DistillationTrainer": "dtb_ext.train.distill",
    "Distiller": "dtb_ext.train.distill",
    "DistillSettings": "dtb_ext.train.distill",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dtb_ext.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
