"""The length-adaptive encoder: runs a Hugging Face BERT-family layer stack, dropping tokens layer by layer.

Per layer i (LAT, docs/design.md §1-2): self-attention and its output block run on every token entering the layer;
each token's significance is the attention it receives from valid queries (or, for a model with a learned
relevance scorer, the scorer's logits alone or combined with it: relevance.py); the top keep-count tokens of the
attention output are gathered (ascending positions); the feed-forward block runs on them alone and only they
enter layer i+1. A dropped token's final vector is the layer input it had when dropped (drop-and-restore), so the
sequence output is always full length.

Shapes: B batch, L0 input length, n tokens entering a layer (padded width), K kept width, D hidden size,
H heads, d head size.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from dtb_ext import ops
from dtb_ext.config import LengthConfig, MixedLengthConfig
from dtb_ext.models.layer_plan import LayerPlan, LayerPlans
from dtb_ext.models.packed_linear import PackedLinears
from dtb_ext.models.padding_mask import padding_mask_from_hf
from dtb_ext.models.relevance import (
    ATTENTION,
    SCORER,
    RelevanceScorer,
    ScorerRecord,
    active_ranking,
    active_records,
    combine_significance,
    protect_significance,
)
from dtb_ext.models.static_counts import KeepTables, StaticKeepCounts

# Per-call overrides, {encoder: LengthConfig or None}. A ContextVar gives each thread (and asyncio task) its own
# value, so concurrent calls on one model with different configurations do not see each other's.
_OVERRIDES: ContextVar[dict[nn.Module, LengthConfig | None]] = ContextVar("dtb_length_overrides", default={})
# Per-call LayerDrop, {encoder: frozenset of layer indices to skip}; set by `patching.skip_layers` (training only).
_SKIPPED_LAYERS: ContextVar[dict[nn.Module, frozenset[int]]] = ContextVar("dtb_skipped_layers", default={})
# Set by `static_shapes`: every patched encoder takes the static-shape path in this context.
_STATIC_SHAPES: ContextVar[bool] = ContextVar("dtb_static_shapes", default=False)


@contextmanager
def static_shapes() -> Iterator[None]:
    """Within the block, every patched model runs its static-shape path (docs/design.md §2, "Static shapes"):
    keep counts computed on the device, every layer's gathered width fixed by the length configuration and the
    padded input length, no tensor value read on the host, so the forward pass can be captured whole in a CUDA
    graph and replayed on new inputs of the same shape. (Outside capture the CUDA ops still check their inputs'
    values, and transformers' sdpa mask builder reads a [B, L] mask once: an eager run is capturable, not free of
    synchronisations.) Real tokens' outputs equal the default path's (to float tolerance);
    an example without a real token gives NaN instead of ValueError. A stream being captured takes this path
    even outside the block; warm up under the block first (it builds the keep-count tables the capture reads).
    """
    token = _STATIC_SHAPES.set(True)
    try:
        yield
    finally:
        _STATIC_SHAPES.reset(token)


def runs_static(hidden: Tensor) -> bool:
    """Whether a forward pass on `hidden` takes the static-shape path: inside `static_shapes`, or while the current
    CUDA stream is being captured into a graph (where the default path's host reads would fail)."""
    return _STATIC_SHAPES.get() or (hidden.is_cuda and torch.cuda.is_current_stream_capturing())


class DynamicEncoder(nn.Module):
    """Drop-in replacement for `BertEncoder` / `RobertaEncoder` that shares the very same `layer` ModuleList.

    Without a relevance scorer it owns no parameters of its own, so a patched model's `state_dict()` is
    unchanged; `relevance` (a RelevanceScorer, set by `patching.add_relevance_scorer`) adds the keys
    `<base>.encoder.relevance.layers.N.{weight,bias}`. `significance` names the selection score's source.
    """

    def __init__(self, layer: nn.ModuleList, config: Any, keep_first: bool) -> None:
        super().__init__()
        self.layer = layer
        self.config = config
        self.keep_first = keep_first
        self.length_config: LengthConfig | None = None
        self.significance = ATTENTION
        self.relevance: RelevanceScorer | None = None
        self._linears = PackedLinears()
        self._plans = LayerPlans()
        self._keep_tables = KeepTables()

    @property
    def num_layers(self) -> int:
        return len(self.layer)

    def active_length_config(self) -> LengthConfig | None:
        """The per-call override of the current context if one is set, else the model's configuration."""
        overrides = _OVERRIDES.get()
        if self in overrides:
            return overrides[self]
        return self.length_config

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        encoder_attention_mask: Tensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """[B, L0, D] embeddings and HF's attention mask -> full-length [B, L0, D] last hidden state.

        Hidden states requested with `output_hidden_states` are full length: layer i's output for the tokens it
        kept, the restored vector for the tokens dropped so far. Attention maps are not available (their width
        changes from layer to layer): `output_attentions` raises ValueError.
        """
        if encoder_hidden_states is not None or cache is not None or use_cache:
            raise ValueError(
                "the dynamic encoder runs encoder-only models: cross-attention and caches are not supported"
            )
        if kwargs.get("output_attentions") or getattr(self.config, "output_attentions", False):
            raise ValueError(
                "output_attentions is not supported by the dynamic encoder (attention maps shrink with the kept "
                "tokens); leave it off (output_hidden_states gives full-length per-layer states)"
            )
        if hidden_states.shape[0] == 0:
            # Hugging Face's own layers fail on an empty batch with a reshape error; say what is wrong instead.
            raise ValueError(
                f"the model needs a batch of at least one example, got an empty batch (input shape "
                f"{tuple(hidden_states.shape[:2])})"
            )
        static = runs_static(hidden_states)
        # The all-padding-row check reads the mask on the host; the static path poisons such rows instead.
        mask = padding_mask_from_hf(attention_mask, hidden_states, check_rows=not static)
        output = self.encode(hidden_states, mask, self.active_length_config(), static)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=output)

    def encode(self, hidden: Tensor, mask: Tensor, length_config: LengthConfig | MixedLengthConfig | None,
               static: bool = False) -> Tensor:
        """Run the layer stack under `length_config`, skipping the layers `skip_layers` names in this context
        (LayerDrop: a skipped layer is the identity and drops no token; later layers keep their own counts).

        Args:
            hidden: [B, L0, D] embeddings.
            mask: [B, L0] bool, True for real tokens.
            length_config: per-layer keep rule (one per example for a MixedLengthConfig), or None for full length.
            static: take the static-shape path (`static_shapes`): keep counts on the device, every width from
                the configuration and L0 alone, no tensor value read on the host; an example without a real token
                comes out as NaN instead of raising.

        Returns:
            [B, L0, D] sequence output, dropped tokens restored.
        """
        schedule = (self._static_schedule(mask, length_config) if static
                    else _HostSchedule(mask, length_config, hidden.device))
        # `restored` holds, at original positions, each dropped token's last full output; `positions` [B, n]
        # maps the current slots to original positions (None while no token has been dropped).
        restored: Tensor | None = None
        positions: Tensor | None = None
        # Forward hooks on the layers (HF's output_hidden_states capture among them) get full-length tensors.
        observed = any(layer._forward_hooks for layer in self.layer)
        full_input = hidden
        skipped = _SKIPPED_LAYERS.get().get(self, frozenset())
        for index, layer in enumerate(self.layer):
            if index in skipped:
                if observed:
                    _call_forward_hooks(layer, full_input, full_input)
                continue
            keep, width, padded, drops_real = schedule.step(index)
            layer_input = hidden
            if getattr(layer, "gradient_checkpointing", False) and self.training and torch.is_grad_enabled():
                # What HF's GradientCheckpointingLayer does for its own forward, which this encoder bypasses.
                hidden, mask, kept_positions = checkpoint(
                    self._layer, index, hidden, mask, keep, width, padded, drops_real, positions, use_reentrant=False
                )
            else:
                hidden, mask, kept_positions = self._layer(
                    index, hidden, mask, keep, width, padded, drops_real, positions
                )
            if kept_positions is not None:
                # Every token entering this layer gets its input written; the kept ones are overwritten later.
                restored = layer_input if positions is None else ops.restore(restored, layer_input, positions)
                positions = kept_positions if positions is None else _compose_positions(positions, kept_positions)
            if observed:
                full_output = hidden if positions is None else ops.restore(restored, hidden, positions)
                _call_forward_hooks(layer, full_input, full_output)
                full_input = full_output
        output = hidden if positions is None else ops.restore(restored, hidden, positions)
        return schedule.finish(output)

    def _static_schedule(self, mask: Tensor, length_config: LengthConfig | MixedLengthConfig | None
                         ) -> _StaticSchedule:
        """The static path's schedule for a [B, L0] bool `mask` (keep counts from the cached tables)."""
        counts = None if length_config is None else self._keep_tables.counts(length_config, mask, self.num_layers)
        return _StaticSchedule(mask, counts)

    def _layer(
        self,
        index: int,
        hidden: Tensor,
        mask: Tensor,
        keep: Tensor | None,
        width: int,
        padded: bool,
        drops_real: bool,
        positions: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Layer `index` on [B, n, D] hidden states with [B, n] mask.

        Args:
            keep: [B] tokens each example keeps, or None when nothing is gathered (width stays n).
            width: K, the largest keep count (n when `keep` is None).
            padded: some example may have fewer than n real tokens (always True on the static path).
            drops_real: some example keeps fewer tokens than its real ones (otherwise only padding can go).
            positions: [B, n] original positions of the entering slots, or None while none was dropped.

        Returns:
            ([B, K, D] output, [B, K] mask, [B, K] kept slots into n, or None when nothing was gathered).
        """
        ranking = active_ranking(self, positions, hidden.shape[1]) if drops_real else None
        plan = self._plans.plan(index, self.layer[index], self._linears, hidden)
        handoff = None
        if not drops_real or self.significance == SCORER or ranking is not None:
            # No attention significance is needed, so the fused SDPA kernel can run.
            feeds_forward = not drops_real and keep is None
            if plan is not None:
                attention_output, handoff = plan.attention(hidden, mask if padded else None, feeds_forward)
            else:
                attention_output = self._attention_all_kept(index, hidden, mask if padded else None, feeds_forward)
            attention_significance = None
        else:
            attention_output, attention_significance = self._attention_with_significance(index, hidden, mask)
        scorer_logits = self._scorer_logits(index, attention_output, mask, drops_real and ranking is None, positions)
        if not drops_real:
            if keep is None:
                return self._feed_forward(index, attention_output, plan, handoff), mask, None
            # Only padding goes: every real token outranks every padding slot, so they are all kept, in order.
            significance = mask.to(torch.float32)
        elif ranking is not None:
            significance = ranking
        else:
            significance = protect_significance(
                self, combine_significance(self.significance, attention_significance, scorer_logits, mask), positions)
        kept_hidden, kept_mask, kept_positions = ops.select_and_gather(
            attention_output, significance, mask, keep, width, self.keep_first
        )
        return self._feed_forward(index, kept_hidden, plan), kept_mask, kept_positions

    def _scorer_logits(self, index: int, attention_output: Tensor, mask: Tensor, drops_real: bool,
                       positions: Tensor | None) -> Tensor | None:
        """Layer `index`'s [B, n] scorer logits where they select tokens or are being recorded (with the slots'
        original `positions`, for the training loss), else None."""
        records = active_records(self)
        if self.relevance is None or not (records is not None or (drops_real and self.significance != ATTENTION)):
            return None
        logits = self.relevance(index, attention_output)
        if records is not None:
            records.append(ScorerRecord(index, logits, mask.bool(), positions))
        return logits

    def _project_heads(self, index: int, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer `index`'s projections, [B, n, D] -> query, key, value, each [B, H, n, d] (one fused matmul at
        inference: packed_linear.py)."""
        attention = self.layer[index].attention.self
        shape = (*hidden.shape[:2], -1, attention.attention_head_size)
        projected = self._linears.projections((index, "qkv"), (attention.query, attention.key, attention.value), hidden)
        return tuple(output.view(shape).transpose(1, 2) for output in projected)

    def _attention_all_kept(self, index: int, hidden: Tensor, mask: Tensor | None, feeds_forward: bool) -> Tensor:
        """Layer `index`'s self-attention block with torch SDPA, no significance: [B, n, D] -> [B, n, D].

        `mask` is the [B, n] key mask, or None when no example is padded (lets SDPA pick its fastest kernel).
        `feeds_forward`: the output goes to the layer's feed-forward as is (no tokens gathered in between), which
        lets an int8 epilogue quantize it for the intermediate Linear (packed_linear.py).
        """
        layer = self.layer[index]
        attention = layer.attention.self
        query, key, value = self._project_heads(index, hidden)
        if _runs_fused_attention(attention, query):
            context = ops.attention(query, key, value, mask, attention.scaling)
        else:
            context = nn.functional.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=None if mask is None else mask[:, None, None, :],
                dropout_p=attention.dropout.p if attention.training else 0.0,
                scale=attention.scaling,
            )
        context = context.transpose(1, 2).reshape(hidden.shape)
        return self._linears.output((index, "attention"), layer.attention.output, context, hidden,
                                    feeds=layer.intermediate if feeds_forward else None)

    def _attention_with_significance(self, index: int, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Layer `index`'s explicit self-attention block: [B, n, D], [B, n] mask -> ([B, n, D] output, [B, n]
        significance)."""
        layer = self.layer[index]
        attention = layer.attention.self
        query, key, value = self._project_heads(index, hidden)
        group = _examples_per_score_block(query)
        if _runs_fused_attention(attention, query):
            # The fused kernel also sums the significance in the same pass.
            context, significance = ops.attention_with_significance(query, key, value, mask, attention.scaling)
        elif group >= query.shape[0] or torch.is_grad_enabled() or attention.training:
            # Scaled in place: the same arithmetic as HF eager without a second [B, H, n, n] buffer.
            scores = torch.matmul(query, key.transpose(-1, -2)).mul_(attention.scaling)
            probs, significance = ops.softmax_with_significance(scores, mask)
            probs = attention.dropout(probs)
            context = torch.matmul(probs, value)
        else:
            # Inference on a large batch: a few examples at a time, so that each block's scores stay in cache
            # between the two matmuls and the softmax (2-3x faster at B=8-32, L=384 on CPU than one big block).
            context = torch.empty_like(query)
            significance = torch.empty(mask.shape, dtype=torch.float32, device=mask.device)
            for start in range(0, query.shape[0], group):
                rows = slice(start, start + group)
                scores = torch.matmul(query[rows], key[rows].transpose(-1, -2)).mul_(attention.scaling)
                probs, significance[rows] = ops.softmax_with_significance(scores, mask[rows])
                torch.matmul(probs, value[rows], out=context[rows])
        context = context.transpose(1, 2).reshape(hidden.shape)
        return self._linears.output((index, "attention"), layer.attention.output, context, hidden), significance

    def _feed_forward(self, index: int, hidden: Tensor, plan: LayerPlan | None,
                      handoff: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Layer `index`'s intermediate + output blocks: [B, K, D] -> [B, K, D], through the layer's `plan`
        (with `handoff`: `hidden` quantized by the plan's attention block) where there is one, else
        packed_linear.py at inference."""
        if plan is not None:
            return plan.feed_forward(hidden, handoff)
        layer = self.layer[index]
        return self._linears.feed_forward(index, layer.intermediate, layer.output, hidden)


# Scores block size for batched CPU inference: small enough to stay in the L2/L3 caches of a server core.
_SCORE_BLOCK_BYTES = 2 * 1024 * 1024


def _examples_per_score_block(query: Tensor) -> int:
    """How many examples' [H, n, n] attention scores to compute at once, for query [B, H, n, d].

    On CUDA the whole batch (one big launch). On CPU as many examples as fit `_SCORE_BLOCK_BYTES`, at least one.
    """
    if query.device.type != "cpu":
        return query.shape[0]
    _, heads, length, _ = query.shape
    return max(1, _SCORE_BLOCK_BYTES // (heads * length * length * query.element_size()))


def _runs_fused_attention(attention: nn.Module, query: Tensor) -> bool:
    """Whether a layer's self-attention (`attention`, on query [B, H, n, d]) runs the fused dtb attention kernel:
    bf16 inference on a CPU with AVX512-BF16, where it is about 3x faster than SDPA at these lengths
    (csrc/cpu/attention.cpp). The kernel has no dropout and no backward."""
    return ops.native_bf16_attention(query) and not attention.training and not torch.is_grad_enabled()


def _compose_positions(positions: Tensor, kept_positions: Tensor) -> Tensor:
    """Original positions of the kept slots: [B, n] original positions, [B, K] slots into n -> [B, K].

    Padded slots (PAD_POSITION in `kept_positions`) stay PAD_POSITION.
    """
    original = torch.gather(positions, 1, kept_positions.clamp(min=0))
    return torch.where(kept_positions >= 0, original, torch.full_like(original, ops.PAD_POSITION))


class _HostSchedule:
    """The default path's per-layer decisions: keep counts on the host from each example's real length (one
    device-to-host copy per forward, one host-to-device copy per gathering layer), each gathered width the
    largest keep count of the batch (docs/design.md §2.1)."""

    def __init__(self, mask: Tensor, length_config: LengthConfig | MixedLengthConfig | None,
                 device: torch.device) -> None:
        self._entering: list[int] = mask.sum(dim=1).tolist()
        self._keep_counts = None if length_config is None else length_config.keep_counts(self._entering)
        self._width = mask.shape[1]
        self._device = device

    def step(self, index: int) -> tuple[Tensor | None, int, bool, bool]:
        """Layer `index`'s ([B] keep counts or None when nothing is gathered, gathered width K, whether some
        example is padded, whether some example drops real tokens): `DynamicEncoder._layer`'s arguments."""
        entering = self._entering
        kept = entering if self._keep_counts is None else self._keep_counts[index]
        drops_real = kept != entering
        # Under a length config the gathered width is the largest keep count (docs/design.md §2.1), so padding
        # beyond it goes even at a layer that keeps every real token. Without a config (the unpatched
        # model's behaviour) nothing is gathered.
        gathers = drops_real or (self._keep_counts is not None and max(kept) < self._width)
        keep = torch.tensor(kept, dtype=torch.int64, device=self._device) if gathers else None
        padded = any(count < self._width for count in entering)
        self._width = max(kept)
        self._entering = kept
        return keep, self._width, padded, drops_real

    def finish(self, output: Tensor) -> Tensor:
        """The [B, L0, D] sequence output, as is."""
        return output


class _StaticSchedule:
    """The static path's per-layer decisions, from the configuration and the padded length alone: every example
    counts as padded, a layer drops real tokens iff its rule can at some real length up to L0, and its gathered
    width is the most any example could keep there (static_counts.py). Examples keeping fewer tokens carry masked
    padding slots, which never change a real token's output."""

    def __init__(self, mask: Tensor, counts: StaticKeepCounts | None) -> None:
        self._counts = counts
        self._width = mask.shape[1]
        self._previous = -1  # the last layer run (skipped layers keep no tokens of their own)
        self._has_real = mask.any(dim=1)

    def step(self, index: int) -> tuple[Tensor | None, int, bool, bool]:
        """As `_HostSchedule.step`, every value from shapes and the configuration except the counts' tensor."""
        if self._counts is None:
            return None, self._width, True, False
        drops_real = self._counts.drops_between(self._previous, index)
        width = self._counts.widths[index]
        gathers = drops_real or width < self._width
        self._previous, self._width = index, width
        return (self._counts.counts[index] if gathers else None), width, True, drops_real

    def finish(self, output: Tensor) -> Tensor:
        """The [B, L0, D] sequence output with NaN for every example without a real token: the host path raises
        ValueError there, which needs a host read; NaN is what the CUDA ops make of such an example in a graph."""
        return torch.where(self._has_real[:, None, None], output, torch.nan)


def _call_forward_hooks(layer: nn.Module, full_input: Tensor, full_output: Tensor) -> None:
    """Run `layer`'s forward hooks as if it had mapped `full_input` to `full_output` (both [B, L0, D]).

    The dynamic encoder calls the layer's submodules, never the layer itself, so its hooks would not fire.
    """
    for hook_id, hook in list(layer._forward_hooks.items()):
        if hook_id in layer._forward_hooks_with_kwargs:
            result = hook(layer, (full_input,), {}, full_output)
        else:
            result = hook(layer, (full_input,), full_output)
        if result is not None:
            raise ValueError("a forward hook on a layer of a patched encoder may observe its output but not replace it")
