"""SQuAD 1.1 question answering: reading data, sliding-window features, span post-processing, the official
metric and evaluation under a length configuration.

Names are imported on first use, so `dtb --help` and `dtb score` do not load torch."""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports

_EXPORTS = {
    "SquadExample": "dtb_ext.qa.data",
    "load_squad": "dtb_ext.qa.data",
    "search_split_articles": "dtb_ext.qa.data",
    "EvalFeatures": "dtb_ext.qa.features",
    "prepare_eval_features": "dtb_ext.qa.features",
    "prepare_train_features": "dtb_ext.qa.features",
    "evaluate_qa": "dtb_ext.qa.evaluate",
    "squad_metrics": "dtb_ext.qa.metric",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
