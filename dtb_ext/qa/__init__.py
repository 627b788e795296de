"""SQuAD 1.1 question answering: reading data, sliding-window features, span post-processing, the official
metric and evaluation under a length configuration."""
from dtb_ext.qa.data import SquadExample, load_squad, search_split_articles
from dtb_ext.qa.evaluate import evaluate_qa
from dtb_ext.qa.features import EvalFeatures, prepare_eval_features, prepare_train_features
from dtb_ext.qa.metric import squad_metrics

__all__ = [
    "EvalFeatures",
    "SquadExample",
    "evaluate_qa",
    "load_squad",
    "prepare_eval_features",
    "prepare_train_features",
    "search_split_articles",
    "squad_metrics",
]
