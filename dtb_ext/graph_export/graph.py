"""A trace-friendly forward of a patched span-QA model: what `dtb_ext.export` traces into an ONNX / OpenVINO graph.

It shares every module with the patched model (embeddings, the encoder's layers, its relevance scorer, the QA
head) and computes what `DynamicEncoder` computes (DESIGN.md §2), but as one data-independent sequence of tensor
ops, so that a trace records a graph that serves every length configuration:

- keep counts come from the attention mask and the keep-rule inputs (`keep_rule.keep_counts`), per example;
- every layer ranks its tokens (padding last, ties toward the lower position: TopK's rule, made stable in
  OpenVINO by `convert.py`) and gathers the top `max(keep)` slots, kept tokens in ascending order;
- drop-and-restore writes each entering token's layer input at its original position in a buffer of width 2 * L0
  (the slots past an example's keep count write into the second half, distinct columns, so that a scatter never
  has duplicate indices), and the kept tokens' outputs at the end.

There is no host-side branching: a layer that keeps every real token still ranks and gathers (all of them, in
order), which gives the same values. The PyTorch path (`DynamicEncoder`) is unchanged; this module only reads it.

Shapes: B batch, L0 input length, n tokens entering a layer (padded width), K = max keep count, D hidden size,
H heads, d head size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dtb_ext.graph_export.keep_rule import keep_counts
from dtb_ext.models.patching import _SPAN_HEADS, dynamic_encoder
from dtb_ext.models.relevance import ATTENTION, SCORER, combine_significance
from dtb_ext.reference import softmax_with_significance


class LengthAdaptiveQAGraph(nn.Module):
    """(input_ids, attention_mask, token_type_ids, keep_ratio_basis_points, keep_lengths) -> (start, end) logits.

    model: a patched BertForQuestionAnswering / RobertaForQuestionAnswering (its modules are shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, _SPAN_HEADS):
            raise ValueError(f"export supports span question-answering models ({', '.join(c.__name__ for c in _SPAN_HEADS)}), "
                             f"got {type(model).__name__}")
        encoder = dynamic_encoder(model)
        self.embeddings = getattr(model, model.base_model_prefix).embeddings
        self.layers = encoder.layer
        self.relevance = encoder.relevance
        self.significance = encoder.significance
        self.keep_first = encoder.keep_first
        self.qa_outputs = model.qa_outputs

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor,
                keep_ratio_basis_points: Tensor, keep_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """[B, L0] int64 inputs (attention_mask nonzero for real tokens) and the [B, n_layers] int64 keep rule ->
        ([B, L0], [B, L0]) float32 start and end logits."""
        mask = attention_mask != 0
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        counts = keep_counts(mask.sum(dim=1), keep_ratio_basis_points, keep_lengths, mask.shape[1])
        batch, length = mask.shape
        rows = torch.arange(batch, device=mask.device)[:, None]
        positions = torch.arange(length, device=mask.device)[None, :].expand(batch, length)
        restored = hidden.new_zeros(batch, 2 * length, hidden.shape[2])
        for index in range(self.num_layers):
            attention_output, attention_significance = self._attention(index, hidden, mask)
            significance = self._significance(index, attention_output, attention_significance, mask)
            slots, kept = _kept_slots(significance, mask, counts[:, index], self.keep_first)
            restored = _write_rows(restored, rows, positions, hidden)
            # Slots past an example's keep count point at distinct columns of the buffer's second half.
            past_keep = length + torch.arange(slots.shape[1], device=mask.device)[None, :]
            positions = torch.where(kept, _take(positions, rows, slots), past_keep)
            hidden = self._feed_forward(index, _take(attention_output, rows, slots))
            mask = kept
        sequence = _write_rows(restored, rows, positions, hidden)[:, :length]
        logits = self.qa_outputs(sequence)
        return logits[..., 0].float(), logits[..., 1].float()

    def _attention(self, index: int, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Layer `index`'s self-attention block: ([B, n, D] output, [B, n] attention received or None).

        The attention significance needs the probabilities, so only a model that selects by it runs the explicit
        softmax; the others run SDPA, which OpenVINO executes as one fused op."""
        layer = self.layers[index]
        attention = layer.attention.self
        query, key, value = (self._heads(projection, hidden) for projection in (attention.query, attention.key, attention.value))
        if self.significance != SCORER:
            scores = torch.matmul(query, key.transpose(-1, -2)) * attention.scaling
            probs, significance = softmax_with_significance(scores, mask)
            context = torch.matmul(probs.to(value.dtype), value)
        else:
            context = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :],
                                                                 scale=attention.scaling)
            significance = None
        context = context.transpose(1, 2).flatten(2)
        return layer.attention.output(context, hidden), significance

    def _heads(self, projection: nn.Linear, hidden: Tensor) -> Tensor:
        """[B, n, D] -> [B, H, n, d]."""
        head_size = self.layers[0].attention.self.attention_head_size
        return projection(hidden).unflatten(2, (-1, head_size)).transpose(1, 2)

    def _significance(self, index: int, attention_output: Tensor, attention_significance: Tensor | None,
                      mask: Tensor) -> Tensor:
        """The [B, n] float32 selection score of the model's significance source (relevance.py)."""
        scorer_logits = None if self.significance == ATTENTION else self.relevance(index, attention_output)
        return combine_significance(self.significance, attention_significance, scorer_logits, mask)

    def _feed_forward(self, index: int, hidden: Tensor) -> Tensor:
        layer = self.layers[index]
        return layer.output(layer.intermediate(hidden), hidden)


def _kept_slots(significance: Tensor, mask: Tensor, keep: Tensor, keep_first: bool) -> tuple[Tensor, Tensor]:
    """The slots each example keeps, ascending: ([B, K] int64 slots into n, [B, K] bool, True for the first keep[b]).

    Args:
        significance: [B, n] float32 scores; mask: [B, n] bool real tokens; keep: [B] int64 counts, each at most the
            example's real tokens, so padding (ranked last) is never kept.
        keep_first: slot 0 always ranks first (the model's head reads the CLS token).

    The ranking is TopK's (largest first, the lower index first among equal scores, ONNX's rule); slots past keep[b]
    hold the last slot (n - 1), a harmless duplicate that `kept` masks.
    """
    key = significance.masked_fill(~mask, float("-inf"))
    if keep_first:
        key = torch.cat([torch.full_like(key[:, :1], float("inf")), key[:, 1:]], dim=1)
    width = keep.max()
    order = torch.topk(key, width, dim=1).indices
    kept = torch.arange(order.shape[1], device=key.device)[None, :] < keep[:, None]
    last = key.shape[1] - 1
    # Sorting with the slots past keep[b] pushed to the end leaves the kept ones ascending.
    slots = torch.sort(torch.where(kept, order, torch.full_like(order, last + 1)), dim=1).values
    return slots.clamp(max=last), kept


def _take(values: Tensor, rows: Tensor, slots: Tensor) -> Tensor:
    """`values` [B, n, ...] at `slots` [B, K] -> [B, K, ...]; `rows` is [B, 1] arange. One Gather on the flattened
    rows: OpenVINO runs it with its JIT kernel, where per-example indexing becomes a reference GatherND."""
    flat = (slots + rows * values.shape[1]).reshape(-1)
    trailing = values.shape[2:]
    # reshape, not flatten(0, 1): the ONNX exporter writes that as Flatten, which turns [B, n] into [B * n, 1]
    return values.reshape(-1, *trailing).index_select(0, flat).reshape(*slots.shape, *trailing)


def _write_rows(buffer: Tensor, rows: Tensor, positions: Tensor, values: Tensor) -> Tensor:
    """A copy of `buffer` [B, W, D] with `values[b, k]` ([B, K, D]) written at `positions[b, k]` ([B, K], distinct
    within a row); `rows` is [B, 1] arange. An indexed assignment on a copy: it exports as ScatterND to ONNX and
    to OpenVINO, where the functional `index_put` has no OpenVINO conversion."""
    written = buffer.clone()
    written[rows, positions] = values
    return written
