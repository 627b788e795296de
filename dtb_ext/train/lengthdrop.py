"""LengthDrop training (Length-Adaptive Transformer, docs/design.md §1) on Hugging Face Trainer.

Each training batch runs the sandwich: the full model, which learns from the labels (or from a teacher, see
distill.py); the smallest sub-model; and `num_sandwich` random sub-models. The sub-models learn from the full
model's start/end distributions (inplace distillation: soft cross-entropy against its detached logits). Their
losses are summed with the full model's (weighted by `full_weight`, 1 in LAT) into one loss, so one backward pass
accumulates every gradient before the optimizer step; this keeps distributed data parallel and gradient
accumulation exactly as Trainer does them, at the cost of holding the 2 + num_sandwich graphs of a batch at once.

Sub-model lengths are ratios of each example's real input length (so padding and batching do not change them):
r_0 = 1, r_i ~ U[(1 - bound) r_{i-1}, r_{i-1}]; the smallest sub-model has r_i = (1 - bound)^i. With LayerDrop
p > 0, each layer of a sub-model is also skipped with probability p (at least one layer always runs).
The draws come from a generator seeded with (seed, optimizer step, micro-batch), never the global RNG, so a
resumed run samples exactly what an uninterrupted one would.

With a learned relevance scorer (relevance.py), the sub-models select their tokens by it, and every layer's
scorer logits in the full model and in the sub-models (over the tokens present there) are pulled toward the
full model's answer distribution plus a share on the question segment (ranking distillation); that loss is added
with `RelevanceSettings.weight`. The selection itself is discrete, so the scorer learns from that loss alone.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dtb_ext.config import LengthConfig
from dtb_ext.models.patching import (
    add_relevance_scorer,
    dynamic_encoder,
    length_config,
    set_significance,
    skip_layers,
    widen_relevance_scorer,
)
from dtb_ext.models.relevance import (
    ATTENTION,
    ScorerRecord,
    check_source,
    record_scorer_logits,
    values_at_slots,
)
from dtb_ext.train.distill import (
    DistillationTrainer,
    cross_entropy_to,
    masked_softmax,
    span_soft_cross_entropy,
    unwrap_model,
)


@dataclass(frozen=True)
class LengthDropSettings:
    """How many random sub-models per batch, how fast their lengths may shrink per layer, and LayerDrop."""

    num_sandwich: int = 2
    # largest fraction of its entering tokens a layer may drop: one for every layer, or one per layer (a wider
    # bound in the later layers trains the late, deep drops that searched fronts pick)
    ratio_bound: float | tuple[float, ...] = 0.2
    layer_drop: float = 0.0
    # weight of the full model's own loss against the sum of the sub-models' (LAT: 1); larger holds the full
    # model's F1 when the sub-models' gradients pull the shared encoder toward working without dropped tokens
    full_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.num_sandwich, bool) or not isinstance(self.num_sandwich, int) or self.num_sandwich < 0:
            raise ValueError("num_sandwich (random sub-models per batch) must be an integer >= 0, got "
                             f"{self.num_sandwich!r}")
        bounds = self.ratio_bound if isinstance(self.ratio_bound, tuple) else (self.ratio_bound,)
        if not bounds or not all(isinstance(bound, (int, float)) and not isinstance(bound, bool)
                                 and 0.0 < bound < 1.0 for bound in bounds):
            raise ValueError("length_drop_ratio_bound (largest per-layer shrink) must lie in (0, 1), one value or one "
                             f"per layer, got {self.ratio_bound!r}")
        if not (isinstance(self.layer_drop, (int, float)) and 0.0 <= self.layer_drop < 1.0):
            raise ValueError("layer_drop (probability of skipping a layer) must lie in [0, 1), got "
                             f"{self.layer_drop!r}")
        if isinstance(self.full_weight, bool) or not (isinstance(self.full_weight, (int, float))
                                                       and 0.0 < self.full_weight < float("inf")):
            raise ValueError(f"full_loss_weight (weight of the full model's loss) must be a finite number > 0, got "
                             f"{self.full_weight!r}")

    def bounds(self, num_layers: int) -> tuple[float, ...]:
        """The ratio bound of each of `num_layers` layers; ValueError when per-layer bounds number otherwise."""
        if not isinstance(self.ratio_bound, tuple):
            return (float(self.ratio_bound),) * num_layers
        if len(self.ratio_bound) != num_layers:
            raise ValueError(f"length_drop_ratio_bound gives one bound per layer: expected {num_layers} for this "
                             f"model, got {len(self.ratio_bound)} ({list(self.ratio_bound)})")
        return tuple(float(bound) for bound in self.ratio_bound)


@dataclass(frozen=True)
class RelevanceSettings:
    """The learned relevance scorer of LengthDrop: its selection source and its ranking-distillation loss."""

    significance: str = "attention+scorer"
    weight: float = 1.0
    temperature: float = 2.0
    question_share: float = 0.5
    only: bool = False  # train the scorer alone (every other parameter frozen)
    inner_size: int = 0  # width of each layer scorer's hidden layer (0: a linear map alone)

    def __post_init__(self) -> None:
        if check_source(self.significance) == ATTENTION:
            raise ValueError(f"a relevance scorer selects by 'scorer' or 'attention+scorer', got {self.significance!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise ValueError(f"relevance_weight (weight of the scorer's loss) must be > 0, got {self.weight!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"relevance_temperature must be > 0, got {self.temperature!r}")
        if not (isinstance(self.inner_size, int) and self.inner_size >= 0):
            raise ValueError(f"relevance_inner_size (width of the scorer's hidden layer) must be an int >= 0, got "
                             f"{self.inner_size!r}")
        if not (isinstance(self.question_share, (int, float)) and 0.0 <= self.question_share < 1.0):
            raise ValueError(f"relevance_question_share must lie in [0, 1), got {self.question_share!r}")


def relevance_targets(start_logits: Tensor, end_logits: Tensor, mask: Tensor, question: Tensor,
                      temperature: float, question_share: float) -> Tensor:
    """The relevance scorer's target distribution over the input positions: [B, L0] each -> [B, L0] float32,
    rows summing to 1.

    (1 - question_share) of the mass is the full model's answer distribution (the mean of its start and end
    softmaxes at `temperature`, over real tokens), `question_share` is spread evenly over the real tokens of the
    question segment (`question`, bool), which the answer distribution ignores but every later layer needs.
    Examples without question tokens put all the mass on the answer distribution.
    """
    answer = (masked_softmax(start_logits.detach(), mask, temperature)
              + masked_softmax(end_logits.detach(), mask, temperature)) / 2 * mask
    question = question & mask
    count = question.sum(dim=1, keepdim=True)
    share = torch.where(count > 0, torch.full_like(count, question_share, dtype=torch.float32),
                        torch.zeros_like(count, dtype=torch.float32))
    on_question = question.float() / count.clamp(min=1)
    return (1 - share) * answer + share * on_question


def scorer_distillation_loss(records: list[ScorerRecord], targets: Tensor) -> Tensor:
    """Mean over records of the soft cross-entropy of each layer's scorer softmax against `targets` ([B, L0]),
    restricted to (and renormalised over) the tokens present at that layer."""
    losses = []
    for record in records:
        # padding slots read position 0; the mask below zeroes them
        target = values_at_slots(targets, record.positions, record.logits.shape[1])
        target = torch.where(record.mask, target, torch.zeros_like(target))
        total = target.sum(dim=1, keepdim=True)
        target = torch.where(total > 0, target / total.clamp(min=torch.finfo(torch.float32).tiny), target)
        losses.append(cross_entropy_to(record.logits, target, record.mask))
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class SubModel:
    """One sub-model of the sandwich: per-layer keep ratios and the layers it skips (LayerDrop)."""

    ratios: tuple[float, ...]
    skipped: frozenset[int] = frozenset()


def step_generator(seed: int, step: int, micro_batch: int) -> torch.Generator:
    """A CPU generator determined by (seed, optimizer step, micro-batch within the step) alone."""
    state = np.random.SeedSequence([seed, step, micro_batch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def smallest_ratios(bounds: Sequence[float]) -> tuple[float, ...]:
    """The smallest sub-model for per-layer ratio bounds b_1..b_n: layer i keeps (1 - b_1) ... (1 - b_i) of the
    input length ((1 - b)^i for one bound b everywhere)."""
    return tuple(accumulate((1.0 - bound for bound in bounds), operator.mul))


def sample_ratios(bounds: Sequence[float], generator: torch.Generator) -> tuple[float, ...]:
    """r_i ~ U[(1 - b_i) r_{i-1}, r_{i-1}] with r_0 = 1, for per-layer ratio bounds b_1..b_n: non-increasing, each
    at least the smallest sub-model's."""
    shrink = torch.rand(len(bounds), generator=generator, dtype=torch.float64).tolist()
    # factors in (1 - bound, 1]; `1 - draw` so that the factor 1 (no drop) can be drawn, (1 - bound) not
    return tuple(accumulate((1.0 - bound * draw for bound, draw in zip(bounds, shrink)), operator.mul))


def sample_skipped_layers(num_layers: int, probability: float, generator: torch.Generator) -> frozenset[int]:
    """Each layer skipped with `probability`; when every layer would be, one drawn uniformly runs after all."""
    if probability == 0:
        return frozenset()
    draws = torch.rand(num_layers, generator=generator).tolist()
    skipped = {index for index, draw in enumerate(draws) if draw < probability}
    if len(skipped) == num_layers:
        skipped.discard(int(torch.randint(num_layers, (1,), generator=generator)))
    return frozenset(skipped)


def sample_sandwich(num_layers: int, settings: LengthDropSettings, generator: torch.Generator) -> list[SubModel]:
    """The sub-models of one batch: the smallest first, then `num_sandwich` random ones (the full model is not
    listed: it always runs first, at full length, with every layer)."""
    bounds = settings.bounds(num_layers)
    draws = [smallest_ratios(bounds)]
    draws += [sample_ratios(bounds, generator) for _ in range(settings.num_sandwich)]
    return [SubModel(ratios, sample_skipped_layers(num_layers, settings.layer_drop, generator)) for ratios in draws]


def inplace_distillation_loss(model: nn.Module, features: dict[str, Tensor], full_outputs: Any,
                              sub_model: SubModel) -> Tensor:
    """Soft cross-entropy of one sub-model's start/end distributions against the full model's (detached).

    Args:
        model: the patched model, possibly wrapped (DDP); it is called, its unwrapped self configured.
        features: input_ids / token_type_ids / attention_mask [B, L] (no labels).
        full_outputs: the full model's outputs on the same features (start_logits / end_logits [B, L]).
    """
    unwrapped = unwrap_model(model)
    with length_config(unwrapped, LengthConfig.ratios(sub_model.ratios)), skip_layers(unwrapped, sub_model.skipped):
        outputs = model(**features)
    return span_soft_cross_entropy(outputs, full_outputs, features["attention_mask"].bool())


class LengthDropTrainer(DistillationTrainer):
    """DistillationTrainer that adds the LengthDrop sandwich to every training batch (see the module docstring).

    The model must be patched (`dtb_ext.patch`). `sampled` records, per training batch, (optimizer step,
    micro-batch, sub-models): what a resumed run must reproduce.
    """

    def __init__(self, *args: Any, length_drop: LengthDropSettings | None = None,
                 relevance: RelevanceSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.n_gpu > 1:
            # DataParallel runs replicas in threads, which see neither the length configuration nor LayerDrop
            raise ValueError(f"LengthDrop needs one process per GPU (launch with torchrun or accelerate); "
                             f"got {self.args.n_gpu} GPUs in one process (DataParallel)")
        # ValueError now, not at the first step, for an unpatched model or per-layer bounds of another length
        encoder = dynamic_encoder(unwrap_model(self.model))
        self.length_drop = length_drop or LengthDropSettings()
        self.length_drop.bounds(encoder.num_layers)
        self.relevance = relevance
        if relevance is not None:
            prepare_relevance_scorer(unwrap_model(self.model), relevance)
        self.sampled: list[tuple[int, int, list[SubModel]]] = []
        self._micro_batch = (-1, 0)  # (optimizer step, micro-batches already drawn in it)

    def next_generator(self) -> tuple[int, int, torch.Generator]:
        """(step, micro-batch, generator) for the next training batch."""
        step = self.state.global_step
        micro = self._micro_batch[1] if self._micro_batch[0] == step else 0
        self._micro_batch = (step, micro + 1)
        return step, micro, step_generator(self.args.seed, step, micro)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = unwrap_model(model)
        encoder = dynamic_encoder(unwrapped)
        with ExitStack() as stack:
            records = None
            if model.training and self.relevance is not None:
                records = stack.enter_context(record_scorer_logits(encoder))
            with length_config(unwrapped, None), skip_layers(unwrapped, ()):
                loss, outputs = self.full_model_loss(model, inputs)
            if model.training:
                step, micro, generator = self.next_generator()
                sandwich = sample_sandwich(encoder.num_layers, self.length_drop, generator)
                self.sampled.append((step, micro, sandwich))
                features = {name: value for name, value in inputs.items()
                            if name not in ("start_positions", "end_positions")}
                sub_losses = [inplace_distillation_loss(model, features, outputs, sub_model) for sub_model in sandwich]
                sub_loss = torch.stack(sub_losses).sum()
                parts = {"full_loss": loss, "sub_loss": sub_loss / len(sub_losses)}
                loss = self.length_drop.full_weight * loss + sub_loss
                if records is not None:
                    relevance_loss = self.relevance_loss(records, features, outputs)
                    parts["relevance_loss"] = relevance_loss
                    loss = loss + self.relevance.weight * relevance_loss
                self.record_parts(parts)
        return (loss, outputs) if return_outputs else loss

    def relevance_loss(self, records: list, features: dict[str, Tensor], full_outputs: Any) -> Tensor:
        """The scorer's ranking-distillation loss over every layer recorded in the full model and the sub-models."""
        mask = features["attention_mask"].bool()
        token_types = features.get("token_type_ids")
        # BERT marks the question segment (with CLS and the first SEP) by token type 0; without token types
        # (RoBERTa) no token counts as question and the whole target is the answer distribution.
        question = (token_types == 0) & mask if token_types is not None else torch.zeros_like(mask)
        targets = relevance_targets(full_outputs.start_logits, full_outputs.end_logits, mask, question,
                                    self.relevance.temperature, self.relevance.question_share)
        return scorer_distillation_loss(records, targets)


def prepare_relevance_scorer(model: nn.Module, settings: RelevanceSettings) -> None:
    """Give a patched model a new relevance scorer unless it has one (loaded from --init-from or a checkpoint),
    and select by `settings.significance`."""
    if dynamic_encoder(model).relevance is None:
        add_relevance_scorer(model, settings.significance, settings.inner_size)
    else:
        set_significance(model, settings.significance)
        widen_relevance_scorer(model, settings.inner_size)
    if settings.only:
        scorer = set(map(id, dynamic_encoder(model).relevance.parameters()))
        for parameter in model.parameters():
            parameter.requires_grad_(id(parameter) in scorer)
