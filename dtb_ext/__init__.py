"""dtb_ext: Dynamic-TinyBERT / Length-Adaptive Transformer inference for BERT-family encoders.

One trained model serves every compute budget: a per-layer length configuration picks how many tokens each
layer keeps; the least-attended tokens are dropped and, for span QA, restored at the end.

The public names are imported lazily, so `import dtb_ext` stays cheap and a command that needs only one
part (for example `dtb score`) does not load the others.
"""
from __future__ import annotations

from dtb_ext._lazy import lazy_exports
from dtb_ext.onednn_cache import set_default_capacity

# Before the first bf16 forward pass: see onednn_cache.py.
set_default_capacity()

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_MODEL_DIR": "dtb_ext.data_paths",
    "has_kernels": "dtb_ext.ops",
    "kernel_info": "dtb_ext.ops",
    "evaluate_qa": "dtb_ext.qa",
    "load_squad": "dtb_ext.qa",
    "prepare_eval_features": "dtb_ext.qa",
    "search_split_articles": "dtb_ext.qa",
    "squad_metrics": "dtb_ext.qa",
    "export": "dtb_ext.graph_export",
    "ExportedQA": "dtb_ext.graph_export",
    "QuestionAnswerer": "dtb_ext.answering.answerer",
    "LengthConfig": "dtb_ext.config",
    "MixedLengthConfig": "dtb_ext.config",
    "patch": "dtb_ext.models.patching",
    "set_length_config": "dtb_ext.models.patching",
    "get_length_config": "dtb_ext.models.patching",
    "length_config": "dtb_ext.models.patching",
    "static_shapes": "dtb_ext.models.dynamic_encoder",
    "is_patched": "dtb_ext.models.patching",
    "add_relevance_scorer": "dtb_ext.models.patching",
    "widen_relevance_scorer": "dtb_ext.models.patching",
    "set_significance": "dtb_ext.models.patching",
    "save_patched_model": "dtb_ext.models.patching",
    "count_macs": "dtb_ext.macs",
    "search_lengths": "dtb_ext.search.qa_search",
    "run_search": "dtb_ext.search.engine",
    "pick": "dtb_ext.search.pick",
    "load_front": "dtb_ext.search.front",
    "save_config_to_model": "dtb_ext.models.saved_config",
    "resolve_precision": "dtb_ext.precision",
    "prepare_for_precision": "dtb_ext.precision",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
