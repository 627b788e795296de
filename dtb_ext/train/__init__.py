"""Training span-QA models: standard fine-tuning on Hugging Face Trainer, with a pluggable loss.

Names are imported on first use, so `dtb --help` does not load transformers."""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
