"""Training span-QA models on Hugging Face Trainer, with a pluggable loss.

Lowest first: `trainer.py` (QATrainer, dynamic padding, length-grouped batches), `distill.py` and `lengthdrop.py`
(the trainers that plug their losses in), `recipe.py` (which trainer TrainOptions asks for), `run.py` (a whole
`dtb train` run: features, training, export, evaluation), `cli.py` (the command). `options.py` sits below them all.

Names are imported on first use, so `dtb --help` does not load transformers."""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

_EXPORTS = {
    "QATrainer": "dtb_ext.train.trainer",
    "export_model": "dtb_ext.train.run",
    "run_training": "dtb_ext.train.run",
    "TrainOptions": "dtb_ext.train.options",
    "LengthDropTrainer": "dtb_ext.train.lengthdrop",
    "LengthDropSettings": "dtb_ext.train.lengthdrop",
    "DistillationTrainer": "dtb_ext.train.distill",
    "Distiller": "dtb_ext.train.distill",
    "DistillSettings": "dtb_ext.train.distill",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
