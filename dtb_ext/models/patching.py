"""Switch a Hugging Face BERT-family model to the dynamic encoder, and choose its length configuration.

The patch is in place and shares weights: the base model's `encoder` becomes a `DynamicEncoder` that holds the
very same `layer` ModuleList, so `state_dict()` keys (`bert.encoder.layer.N...`) and values are unchanged and
`save_pretrained` / `from_pretrained` keep working. The model's length configuration is stored, JSON-serialisable,
as `model.config.dtb_length_config`, so `save_pretrained` saves it and `patch()` applies it on load.

An optional learned relevance scorer (relevance.py, `add_relevance_scorer`) adds its own keys to the state dict
and names its significance source in `model.config.dtb_significance`. `save_patched_model` writes its weights to
their own file, relevance_scorer.safetensors, beside model.safetensors: Hugging Face's `from_pretrained` knows
only the model's own keys (it reported the scorer's as UNEXPECTED), and `patch()` reads the scorer back from the
directory the model was loaded from. A plain `save_pretrained` (Trainer checkpoints, models saved before that
file existed) keeps the scorer in model.safetensors, where `patch()` finds it too.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaModel,
)

from dtb_ext.config import LengthConfig, LengthSpec, as_length_config, length_config_from_json
from dtb_ext.models.dynamic_encoder import _OVERRIDES, _SKIPPED_LAYERS, DynamicEncoder
from dtb_ext.models.relevance import (
    ATTENTION,
    ATTENTION_AND_SCORER,
    INNER_SIZE_ATTRIBUTE,
    SCORER_FILE,
    SCORER_MODULE,
    SIGNIFICANCE_ATTRIBUTE,
    RelevanceScorer,
    check_source,
)

# Model class -> whether its head reads the first token (so that token must never be dropped).
_CLASSIFICATION_HEADS = (BertForSequenceClassification, RobertaForSequenceClassification)
_SPAN_HEADS = (BertForQuestionAnswering, RobertaForQuestionAnswering)
_BASE_MODELS = (BertModel, RobertaModel)
SUPPORTED_ARCHITECTURES = tuple(cls.__name__ for cls in _BASE_MODELS + _SPAN_HEADS + _CLASSIFICATION_HEADS)

CONFIG_ATTRIBUTE = "dtb_length_config"


def patch(model: PreTrainedModel, keep_first: bool | None = None) -> PreTrainedModel:
    """Switch `model`'s encoder to the dynamic one, in place; returns `model`.

    Args:
        model: a BertModel, BertForQuestionAnswering or BertForSequenceClassification (or the RoBERTa
            equivalents; TinyBERT and MiniLM checkpoints load as BERT).
        keep_first: always keep the first (CLS) token. Default: True for sequence classification and for a base
            model with a pooler (their heads read CLS), False for question answering.

    A length configuration saved in `model.config.dtb_length_config` is applied, and a relevance scorer named by
    `model.config.dtb_significance` is rebuilt with its saved weights (ValueError when they cannot be found).
    Patching twice is a no-op (apart from an explicit `keep_first`).
    """
    base = _base_model(model)
    if base.config.is_decoder or base.config.add_cross_attention:
        raise ValueError(
            "the dynamic encoder supports encoder-only models; got a config with is_decoder="
            f"{base.config.is_decoder}, add_cross_attention={base.config.add_cross_attention}"
        )
    if keep_first is None:
        keep_first = _head_reads_first_token(model, base)
    if isinstance(base.encoder, DynamicEncoder):
        base.encoder.keep_first = keep_first
        return model
    source = check_source(getattr(model.config, SIGNIFICANCE_ATTRIBUTE, None) or ATTENTION)
    encoder = DynamicEncoder(base.encoder.layer, base.config, keep_first)
    if source != ATTENTION:
        # built before the swap, so that a failure leaves the model as it was
        encoder.relevance = _saved_relevance_scorer(model, base)
        encoder.significance = source
    base.encoder = encoder
    set_length_config(model, getattr(model.config, CONFIG_ATTRIBUTE, None))
    return model


def add_relevance_scorer(model: PreTrainedModel, significance: str = ATTENTION_AND_SCORER,
                         inner_size: int = 0) -> RelevanceScorer:
    """Give a patched model a new (untrained) relevance scorer and select tokens by `significance`; with
    `inner_size` > 0 each layer's scorer has a hidden layer of that width beside its linear map
    (`RelevanceScorer`; recorded in `model.config.dtb_scorer_inner_size`).

    The scorer's parameters take the dtype and device of the model's; they are saved with the model
    (`<base>.encoder.relevance.layers.N.*`) and `model.config.dtb_significance` records the source, so that
    `from_pretrained` + `patch()` restores both. Returns the scorer (train it, e.g. with `dtb train
    --relevance-scorer`). ValueError when the model already has one.
    """
    encoder = dynamic_encoder(model)
    if encoder.relevance is not None:
        raise ValueError("this model already has a relevance scorer; use set_significance to change the source")
    if check_source(significance) == ATTENTION:
        raise ValueError(
            f"a relevance scorer is used by the sources 'scorer' and '{ATTENTION_AND_SCORER}', got {significance!r}"
        )
    reference = next(encoder.layer.parameters())
    encoder.relevance = RelevanceScorer(encoder.num_layers, model.config.hidden_size, inner_size).to(
        reference.device, reference.dtype
    )
    _record_inner_size(model, encoder.relevance)
    set_significance(model, significance)
    return encoder.relevance


def widen_relevance_scorer(model: PreTrainedModel, inner_size: int) -> RelevanceScorer:
    """Give a patched model's relevance scorer a hidden layer of `inner_size` per layer (`RelevanceScorer.widen`:
    its logits are unchanged until the hidden layer is trained); recorded in `model.config`. ValueError when the
    model has no scorer."""
    encoder = dynamic_encoder(model)
    if encoder.relevance is None:
        raise ValueError("this model has no relevance scorer to widen (add one with dtb_ext.add_relevance_scorer)")
    encoder.relevance.widen(inner_size)
    _record_inner_size(model, encoder.relevance)
    return encoder.relevance


def _record_inner_size(model: PreTrainedModel, scorer: RelevanceScorer) -> None:
    """config.json records a scorer's hidden layer (a plain linear scorer leaves the config as it was)."""
    if scorer.inner_size:
        setattr(model.config, INNER_SIZE_ATTRIBUTE, scorer.inner_size)


def set_significance(model: PreTrainedModel, significance: str) -> None:
    """Choose the selection score of a patched model: "attention" (attention received), "scorer" or
    "attention+scorer" (those two need a relevance scorer). Stored in `model.config.dtb_significance`.

    A model with a scorer keeps its weights (and its state-dict keys) when switched to "attention".
    """
    encoder = dynamic_encoder(model)
    if check_source(significance) != ATTENTION and encoder.relevance is None:
        raise ValueError(f"significance {significance!r} needs a relevance scorer, and this model has none "
                         "(add one with dtb_ext.add_relevance_scorer and train it)")
    encoder.significance = significance
    setattr(model.config, SIGNIFICANCE_ATTRIBUTE, significance)


def save_patched_model(model: PreTrainedModel, directory: str | os.PathLike, **kwargs: Any) -> None:
    """`model.save_pretrained(directory, **kwargs)`, with a relevance scorer's weights in their own file.

    The scorer goes to relevance_scorer.safetensors beside model.safetensors, whose keys are then the unpatched
    model's alone: a plain `from_pretrained` loads the directory without an UNEXPECTED-keys report, and
    `patch()` reads the scorer back. A model without a scorer is saved exactly as `save_pretrained` saves it.
    (`save_pretrained` itself keeps the scorer inside model.safetensors, which Trainer checkpoints rely on.)
    """
    from safetensors.torch import save_file

    scorer = dynamic_encoder(model).relevance if is_patched(model) else None
    if scorer is None:
        model.save_pretrained(directory, **kwargs)
        return
    prefix = f"{model.base_model_prefix}." if model is not _base_model(model) else ""
    scorer_keys = {f"{prefix}encoder.{SCORER_MODULE}.{key}" for key in scorer.state_dict()}
    state = {key: value for key, value in model.state_dict().items() if key not in scorer_keys}
    model.save_pretrained(directory, state_dict=state, **kwargs)
    weights = {key: value.detach().to("cpu").contiguous() for key, value in scorer.state_dict().items()}
    save_file(weights, os.path.join(directory, SCORER_FILE), metadata={"format": "pt"})


def _saved_relevance_scorer(model: PreTrainedModel, base: PreTrainedModel) -> RelevanceScorer:
    """The relevance scorer saved in the directory `model` was loaded from: SCORER_FILE, or (models saved
    before it) the scorer's keys in the model's own safetensors."""
    directory = model.name_or_path
    source = getattr(model.config, SIGNIFICANCE_ATTRIBUTE)
    in_directory = bool(directory) and os.path.isdir(directory)
    own_file = os.path.join(directory, SCORER_FILE) if in_directory else ""
    if os.path.isfile(own_file):
        state = _read_safetensors([own_file], "")
    else:
        state = _read_safetensors(_safetensors_files(directory) if in_directory else [], f"encoder.{SCORER_MODULE}.")
    scorer = RelevanceScorer(base.config.num_hidden_layers, base.config.hidden_size,
                             int(getattr(model.config, INNER_SIZE_ATTRIBUTE, 0) or 0))
    expected = set(scorer.state_dict())
    if set(state) != expected:
        raise ValueError(
            f"config.json sets {SIGNIFICANCE_ATTRIBUTE}={source!r}, which needs the relevance scorer's weights "
            f"({len(expected)} tensors, in {SCORER_FILE}), but the model's directory {directory!r} holds "
            f"{len(state)} of them; load the model with from_pretrained from its saved directory, or set "
            f"config.{SIGNIFICANCE_ATTRIBUTE} = 'attention' before patching"
        )
    reference = next(base.encoder.layer.parameters())
    scorer.load_state_dict(state)
    return scorer.to(reference.device, reference.dtype)


def _read_safetensors(paths: list[str], marker: str) -> dict[str, Any]:
    """The tensors of `paths` whose key contains `marker`, keyed by what follows it (every tensor for "")."""
    from safetensors import safe_open

    state = {}
    for path in paths:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if marker in key:
                    state[key.split(marker, 1)[1] if marker else key] = handle.get_tensor(key)
    return state


def _safetensors_files(directory: str) -> list[str]:
    """model.safetensors, or the shards a model.safetensors.index.json names, in `directory`."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
        return [os.path.join(directory, shard) for shard in shards]
    single = os.path.join(directory, "model.safetensors")
    return [single] if os.path.isfile(single) else []


def is_patched(model: nn.Module) -> bool:
    """True when `model` is a supported architecture whose encoder is the dynamic one."""
    return isinstance(getattr(_base_model(model), "encoder", None), DynamicEncoder)


def ensure_patched(model: PreTrainedModel) -> PreTrainedModel:
    """`patch(model)` unless it is patched already (a second `patch()` would reset an explicit keep_first);
    returns `model`. For code that takes a caller's model and needs the dynamic encoder."""
    if not is_patched(model):
        patch(model)
    return model


def set_length_config(model: PreTrainedModel, config: LengthSpec | dict) -> None:
    """Set the length configuration every later call of `model` uses (unless overridden by `length_config`).

    Args:
        model: a patched model (see `patch`).
        config: None (full length); a sequence of per-layer ints (absolute, non-increasing, >= 1); a
            `LengthConfig.ratios([...])` (fractions in (0, 1], non-increasing); a `MixedLengthConfig` (one per
            example of every batch); or the saved JSON form.
    """
    encoder = dynamic_encoder(model)
    if isinstance(config, dict):
        config = length_config_from_json(config)
    resolved = as_length_config(config, encoder.num_layers)
    encoder.length_config = resolved
    setattr(model.config, CONFIG_ATTRIBUTE, None if resolved is None else resolved.to_json())


def get_length_config(model: PreTrainedModel) -> LengthConfig | None:
    """The configuration the next call of `model` will use in this context (override included)."""
    return dynamic_encoder(model).active_length_config()


@contextmanager
def length_config(model: PreTrainedModel, config: LengthSpec) -> Iterator[None]:
    """Within the block, calls of `model` in this thread (or asyncio task) use `config`; others are unaffected.

    Example: `with dtb_ext.length_config(model, [256, 224, 192, 160, 128, 96]): out = model(**batch)`.
    """
    encoder = dynamic_encoder(model)
    resolved = as_length_config(config, encoder.num_layers)
    token = _OVERRIDES.set({**_OVERRIDES.get(), encoder: resolved})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


@contextmanager
def skip_layers(model: PreTrainedModel, layers: Iterable[int]) -> Iterator[None]:
    """Within the block, calls of `model` in this thread skip the listed layers (0-based): LayerDrop for training.

    A skipped layer passes its input through unchanged and drops no token; the other layers keep what the length
    configuration says. Output hidden states still have one entry per layer (a skipped layer's equals its input).
    """
    encoder = dynamic_encoder(model)
    skipped = frozenset(layers)
    outside = sorted(index for index in skipped if isinstance(index, bool) or not isinstance(index, int)
                     or not 0 <= index < encoder.num_layers)
    if outside:
        raise ValueError(f"layers to skip are indices in [0, {encoder.num_layers}), got {outside}")
    token = _SKIPPED_LAYERS.set({**_SKIPPED_LAYERS.get(), encoder: skipped})
    try:
        yield
    finally:
        _SKIPPED_LAYERS.reset(token)


def dynamic_encoder(model: nn.Module) -> DynamicEncoder:
    """The DynamicEncoder of a patched model; ValueError for an unsupported or unpatched one."""
    encoder = getattr(_base_model(model), "encoder", None)
    if not isinstance(encoder, DynamicEncoder):
        raise ValueError(f"{type(model).__name__} is not patched: call dtb_ext.patch(model) first")
    return encoder


def _base_model(model: nn.Module) -> PreTrainedModel:
    if isinstance(model, _BASE_MODELS):
        return model
    if isinstance(model, _SPAN_HEADS + _CLASSIFICATION_HEADS):
        return getattr(model, model.base_model_prefix)
    raise ValueError(
        f"unsupported architecture {type(model).__name__}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _head_reads_first_token(model: nn.Module, base: PreTrainedModel) -> bool:
    if isinstance(model, _CLASSIFICATION_HEADS):
        return True
    if isinstance(model, _SPAN_HEADS):
        return False
    return getattr(base, "pooler", None) is not None
