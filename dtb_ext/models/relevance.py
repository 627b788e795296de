"""Learned token relevance: an optional significance source of the dynamic encoder (docs/design.md §2.7).

Attention received says little about where a span-QA answer is in the first layers (dropping 20 % of the real
tokens at layer 1 by it costs about as much F1 as dropping a random 20 %). A relevance scorer is one linear map
per layer, `[B, n, D] attention output -> [B, n]` logits (D MACs per token; optionally with a hidden layer beside
it, `inner_size`, recorded in config.json as `dtb_scorer_inner_size`), trained by ranking distillation:
at every layer its softmax over the tokens present is pulled toward a target distribution built from the full
model's answer distribution (`dtb_ext.train.lengthdrop.relevance_targets`).

Significance sources (`config.dtb_significance`, saved in config.json):
- "attention": attention received from valid queries (the default, and the only source without a scorer);
- "scorer": the scorer's logits alone;
- "attention+scorer": the sum of both, each standardised per example over its real tokens (zero mean, unit
  variance), so neither scale dominates by accident.
Every source is a per-example function of that example's real tokens, so batch invariance, ties (lower position
first), ascending order and "padding never chosen" hold exactly as for attention: the combined score goes through
the same select-and-gather op.

Shapes: B batch, n tokens entering a layer (padded width), D hidden size, L0 input length.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

ATTENTION = "attention"
SCORER = "scorer"
ATTENTION_AND_SCORER = "attention+scorer"
SIGNIFICANCE_SOURCES = (ATTENTION, SCORER, ATTENTION_AND_SCORER)
# config.json field naming the source; absent (or "attention") for models without a scorer.
SIGNIFICANCE_ATTRIBUTE = "dtb_significance"
# Prefix of the scorer's weights inside the base model's state dict (e.g. bert.encoder.relevance.0.weight).
SCORER_MODULE = "relevance"
# config.json field giving the width of the scorer's hidden layer (RelevanceScorer's `inner_size`); absent or 0 for
# the plain linear scorer.
INNER_SIZE_ATTRIBUTE = "dtb_scorer_inner_size"
# The file beside model.safetensors that holds the scorer's weights (keys as in RelevanceScorer.state_dict()).
# They stay out of model.safetensors, whose keys a plain Hugging Face from_pretrained must all know: there they
# were reported as UNEXPECTED on every load.
SCORER_FILE = "relevance_scorer.safetensors"


def check_source(source: str) -> str:
    """`source` if it names a significance source, else ValueError listing them."""
    if source not in SIGNIFICANCE_SOURCES:
        raise ValueError(f"significance source must be one of {', '.join(SIGNIFICANCE_SOURCES)}; got {source!r}")
    return source


class RelevanceScorer(nn.Module):
    """One relevance scorer per encoder layer: a linear map, plus with `inner_size` > 0 a hidden layer of that width
    beside it (`up`, GELU, `down`: D * inner_size + inner_size more MACs per token), whose output is added to the
    linear map's. `down` starts at zero, so a scorer widened from a trained linear one (`widen`) starts out
    computing exactly the linear scorer's logits."""

    def __init__(self, num_layers: int, hidden_size: int, inner_size: int = 0) -> None:
        super().__init__()
        if not (isinstance(inner_size, int) and inner_size >= 0):
            raise ValueError(f"inner_size (width of the scorer's hidden layer) must be an int >= 0, got {inner_size!r}")
        self.layers = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.inner: nn.ModuleList | None = None
        self.widen(inner_size)

    @property
    def inner_size(self) -> int:
        """The width of each layer's hidden layer; 0 for a linear scorer."""
        return 0 if self.inner is None else self.inner[0].up.out_features

    def widen(self, inner_size: int) -> None:
        """Give every layer's scorer a hidden layer of `inner_size` (zero-initialised output: the logits do not
        change); no-op for 0. ValueError when the scorer already has a hidden layer of another width."""
        if inner_size == self.inner_size or inner_size == 0:
            return
        if self.inner is not None:
            raise ValueError(f"this scorer already has a hidden layer of {self.inner_size} units; cannot make it "
                             f"{inner_size}")
        reference = self.layers[0].weight
        self.inner = nn.ModuleList(_HiddenLayer(reference.shape[1], inner_size) for _ in self.layers).to(
            reference.device, reference.dtype)

    def forward(self, index: int, hidden: Tensor) -> Tensor:
        """Layer `index`'s logits: [B, n, D] attention output -> [B, n] float32.

        Computed in float32 whatever the model's dtype (under autocast, in the autocast dtype): the selection
        score is accumulated in float32 like attention significance, and a one-column bf16 matmul is slower on
        the CPU than widening the input (60 vs 27 us for 184 tokens, D = 384).
        """
        layer = self.layers[index]
        wide = hidden.float()
        logits = nn.functional.linear(wide, layer.weight.float(), layer.bias.float()).squeeze(-1).float()
        if self.inner is not None:
            logits = logits + self.inner[index](wide)
        return logits


class _HiddenLayer(nn.Module):
    """[..., D] float32 -> [...] float32: down(GELU(up(x))), in float32 whatever the parameters' dtype."""

    def __init__(self, hidden_size: int, inner_size: int) -> None:
        super().__init__()
        self.up = nn.Linear(hidden_size, inner_size)
        self.down = nn.Linear(inner_size, 1)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: Tensor) -> Tensor:
        inner = nn.functional.gelu(nn.functional.linear(x, self.up.weight.float(), self.up.bias.float()))
        return nn.functional.linear(inner, self.down.weight.float(), self.down.bias.float()).squeeze(-1)


def standardise(values: Tensor, mask: Tensor) -> Tensor:
    """Per-example z-scores over the real tokens: [B, n] float, [B, n] bool -> [B, n] float32.

    Padding gets 0 (select-and-gather never picks it while a real token remains, whatever its score). An example
    whose real tokens all have the same value gets 0 everywhere (no preference), not NaN.
    """
    values = values.float()
    weight = mask.to(values.dtype)
    count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (values * weight).sum(dim=1, keepdim=True) / count
    centred = (values - mean) * weight
    spread = (centred.square().sum(dim=1, keepdim=True) / count).sqrt()
    return torch.where(
        spread > 0, centred / spread.clamp(min=torch.finfo(torch.float32).tiny), torch.zeros_like(centred)
    )


def combine_significance(source: str, attention: Tensor | None, scorer_logits: Tensor | None, mask: Tensor) -> Tensor:
    """The [B, n] float32 selection score of `source` from attention significance and/or scorer logits ([B, n])."""
    if source == ATTENTION:
        return attention.float()
    if source == SCORER:
        return scorer_logits.float()
    return standardise(attention, mask) + standardise(scorer_logits, mask)


@dataclass
class ScorerRecord:
    """One layer's scorer logits from a forward pass, for the training loss.

    logits: [B, n] float32; mask: [B, n] bool (real tokens present); positions: [B, n] original positions of the
    slots (PAD_POSITION for padding slots), or None when no token had been dropped before this layer (slot = position).
    """

    layer: int
    logits: Tensor
    mask: Tensor
    positions: Tensor | None


@contextmanager
def _set_for(variable: ContextVar, encoder: nn.Module, value: object) -> Iterator[None]:
    """Within the block, `variable` (a {encoder: value} ContextVar) maps `encoder` to `value`, other encoders'
    entries kept; restored on exit."""
    token = variable.set({**(variable.get() or {}), encoder: value})
    try:
        yield
    finally:
        variable.reset(token)


# The records of the forward passes run inside `record_scorer_logits`, per encoder (training only).
_RECORDS: ContextVar[dict[nn.Module, list[ScorerRecord]] | None] = ContextVar("dtb_scorer_records", default=None)


@contextmanager
def record_scorer_logits(encoder: nn.Module) -> Iterator[list[ScorerRecord]]:
    """Within the block, every layer of `encoder` computes its scorer logits (even where nothing is dropped) and
    appends them to the yielded list."""
    records: list[ScorerRecord] = []
    with _set_for(_RECORDS, encoder, records):
        yield records


def active_records(encoder: nn.Module) -> list[ScorerRecord] | None:
    """The list `record_scorer_logits` collects into for `encoder` in this context, or None."""
    records = _RECORDS.get()
    return None if records is None else records.get(encoder)


# Per-position scores that replace an encoder's significance source inside `rank_tokens_by` (diagnostics only).
_RANKINGS: ContextVar[dict[nn.Module, Tensor] | None] = ContextVar("dtb_token_rankings", default=None)


@contextmanager
def rank_tokens_by(encoder: nn.Module, scores: Tensor) -> Iterator[None]:
    """Within the block, every layer of `encoder` that drops real tokens keeps those with the highest `scores`
    instead of asking its significance source: a fixed ranking, e.g. an oracle's, to measure how much F1 a
    perfect significance source could keep with this encoder.

    scores: [B, L0] float, one score per original position of the batch about to run (ties and padding follow
    the usual selection rules: lower position first, padding never chosen).
    """
    if scores.dim() != 2:
        raise ValueError(f"rank_tokens_by expects [batch, positions] scores, got shape {tuple(scores.shape)}")
    with _set_for(_RANKINGS, encoder, scores.float()):
        yield


def active_ranking(encoder: nn.Module, positions: Tensor | None, width: int) -> Tensor | None:
    """The [B, width] scores `rank_tokens_by` set for `encoder`, at the slots whose original positions are
    `positions` ([B, width], PAD_POSITION for padding; None while slot = position), or None outside it."""
    rankings = _RANKINGS.get()
    if rankings is None or encoder not in rankings:
        return None
    scores = rankings[encoder]
    if positions is None and scores.shape[1] < width:
        raise ValueError(f"rank_tokens_by scores cover {scores.shape[1]} positions, the batch has {width}")
    return values_at_slots(scores, positions, width)


# Per-position masks of tokens each layer keeps before any other inside `keep_tokens_first` (diagnostics only).
_PROTECTED: ContextVar[dict[nn.Module, Tensor] | None] = ContextVar("dtb_protected_tokens", default=None)


@contextmanager
def keep_tokens_first(encoder: nn.Module, protected: Tensor) -> Iterator[None]:
    """Within the block, every layer of `encoder` that drops real tokens ranks the `protected` ones above all
    others (a token it keeps is still chosen by its significance within each group): e.g. the question segment,
    to measure how much F1 the significance source loses by dropping question tokens.

    protected: [B, L0] bool, one flag per original position of the batch about to run.
    """
    if protected.dim() != 2 or protected.dtype != torch.bool:
        raise ValueError(f"keep_tokens_first expects a [batch, positions] bool mask, got {protected.dtype} of shape "
                         f"{tuple(protected.shape)}")
    with _set_for(_PROTECTED, encoder, protected):
        yield


def protect_significance(encoder: nn.Module, significance: Tensor, positions: Tensor | None) -> Tensor:
    """`significance` [B, n] with the slots `keep_tokens_first` protects for `encoder` raised above every other
    slot of the batch (order within protected and unprotected slots unchanged); as is outside it."""
    protected = _PROTECTED.get()
    if protected is None or encoder not in protected:
        return significance
    slots = values_at_slots(protected[encoder], positions, significance.shape[1])
    significance = significance.float()
    lift = significance.max() - significance.min() + 1.0
    return significance + lift * slots.float()


def values_at_slots(values: Tensor, positions: Tensor | None, width: int) -> Tensor:
    """Per-position values [B, L0] read at a layer's slots: [B, width], the slots' original `positions` ([B, width],
    PAD_POSITION for padding, which reads position 0: callers mask padding), or None while slot = position."""
    if positions is None:
        return values[:, :width]
    return torch.gather(values, 1, positions.clamp(min=0))
